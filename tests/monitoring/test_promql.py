"""Reading PromQL for the names it depends on (table-style)."""

from __future__ import annotations

import pytest

from kubellm_monitoring.promql import Matcher, PromQLSyntaxError, Selector, reads, substitute


@pytest.mark.parametrize(
    ("expr", "selectors", "grouping"),
    [
        ("up", [Selector("up", ())], set()),
        (
            'sum by (status) (rate(kubellm_requests_total{route!~"/x|/y", status=~"5.."}[5m]))',
            [Selector("kubellm_requests_total", (Matcher("route", "!~", "/x|/y"), Matcher("status", "=~", "5..")))],
            {"status"},
        ),
        (
            "histogram_quantile(0.95, sum by (le, route) (rate(kubellm_request_duration_seconds_bucket[1m])))",
            [Selector("kubellm_request_duration_seconds_bucket", ())],
            {"le", "route"},
        ),
        (
            'a{x="1"} / on (pod) group_left (phase) b offset 5m and ignoring (le) c @ 100',
            [Selector("a", (Matcher("x", "=", "1"),)), Selector("b", ()), Selector("c", ())],
            {"pod", "phase", "le"},
        ),
        ('{__name__="m", k="v"}', [Selector("m", (Matcher("k", "=", "v"),))], set()),
        ("count(x) or vector(0)", [Selector("x", ())], set()),
        ("max(rate(x[5m:30s])) > bool 3", [Selector("x", ())], set()),
        ('sum without (instance) (x{a="q\\"uote"})', [Selector("x", (Matcher("a", "=", 'q"uote'),))], {"instance"}),
    ],
)
def test_reads(expr: str, selectors: list[Selector], grouping: set[str]) -> None:
    read = reads(expr)
    assert list(read.selectors) == selectors
    assert set(read.grouping) == grouping


def test_label_replace_writes_a_label() -> None:
    assert reads('sum by (svc) (label_replace(x, "svc", "$1", "pod", "(.*)-.*"))').written == {"svc"}


def test_grafana_variables_become_match_all() -> None:
    assert substitute('rate(x{ns=~"$namespace", n=~"${llms}"}[$__rate_interval])') == 'rate(x{ns=~".*", n=~".*"}[1m])'


@pytest.mark.parametrize("bad", ["x{a=1}", 'x{a="1"', "x ~ y"])
def test_malformed_selectors_are_refused(bad: str) -> None:
    with pytest.raises(PromQLSyntaxError):
        reads(bad)
