"""The contract between the dashboards and alert rules and the code: every expression reads only metrics and labels
that the operator, the inference server and the gateway emit.

:func:`expressions` lists every expression with where it comes from (a dashboard panel's query, an alert rule);
:func:`check` finds, for each, the selectors and grouping labels that no emitted series has, given a lookup of the
series of a metric (from a Prometheus that scraped the real components, or from a registry's declared labels).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import yaml

from kubellm_monitoring.promql import Reads, reads, substitute

ROOT = pathlib.Path(__file__).resolve().parents[2]
COMPONENT = ROOT / "deploy" / "components" / "monitoring"
DASHBOARDS = COMPONENT / "dashboards"
RULES = COMPONENT / "prometheusrule.yaml"
PODMONITORS = COMPONENT / "podmonitors.yaml"

# Labels every scraped series has, whatever the code emits (Prometheus adds them).
SCRAPE_LABELS = frozenset({"__name__", "job", "instance"})
# A label value the lookup does not know (a declared label of a metric with no sample yet): any value matches.
ANY_VALUE = "\x00any"
# Metrics Prometheus itself writes for each target.
SYNTHETIC = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_series_added"})


@dataclasses.dataclass(frozen=True)
class Expression:
    where: str  # "dashboard kubellm-serving.json, panel 'Time to first token' (A)", "alert KubellmOperatorDown"
    expr: str  # as Prometheus gets it (dashboard variables substituted)


def dashboard_expressions(directory: pathlib.Path = DASHBOARDS) -> Iterator[Expression]:
    for path in sorted(directory.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board.get("panels") or []:
            for target in panel.get("targets") or []:
                where = f"dashboard {path.name}, panel {panel.get('title')!r} ({target.get('refId')})"
                yield Expression(where, substitute(str(target.get("expr", ""))))
        for variable in (board.get("templating") or {}).get("list") or []:
            if variable.get("type") == "query":
                query = str(variable.get("definition", ""))
                inner = query.removeprefix("label_values(").removesuffix(")")
                selector = inner.rsplit(",", 1)[0] if "," in inner else inner
                yield Expression(f"dashboard {path.name}, variable {variable.get('name')!r}", substitute(selector))


def rule_groups(path: pathlib.Path = RULES) -> dict[str, Any]:
    """The PrometheusRule's groups, as a Prometheus rule file (what promtool and a plain Prometheus read)."""
    spec: dict[str, Any] = yaml.safe_load(path.read_text())["spec"]
    return spec


def rule_expressions(path: pathlib.Path = RULES) -> Iterator[Expression]:
    for group in rule_groups(path)["groups"]:
        for rule in group["rules"]:
            kind, name = ("alert", rule["alert"]) if "alert" in rule else ("record", rule["record"])
            yield Expression(f"{kind} {name}", str(rule["expr"]))


def expressions(dashboards: pathlib.Path = DASHBOARDS, rules: pathlib.Path = RULES) -> list[Expression]:
    return [*dashboard_expressions(dashboards), *rule_expressions(rules)]


Lookup = Callable[[str], Sequence[Mapping[str, str]]]


def check_one(expression: Expression, series_of: Lookup) -> list[str]:
    """What ``expression`` reads that no series has, one sentence each naming where the expression is."""
    problems: list[str] = []
    try:
        read: Reads = reads(expression.expr)
    except ValueError as error:
        return [f"{expression.where}: {error}"]
    available: set[str] = set(read.written)
    for selector in read.selectors:
        if not selector.metric:
            problems.append(f"{expression.where}: a selector without a metric name ({selector})")
            continue
        found = series_of(selector.metric)
        if not found:
            problems.append(f"{expression.where}: {selector.metric} is not emitted (no series)")
            continue
        labels = set().union(*(s.keys() for s in found))
        available |= labels
        for matcher in selector.matchers:
            if matcher.label not in labels:
                problems.append(
                    f"{expression.where}: {selector.metric} has no label {matcher.label!r} "
                    f"(its labels: {', '.join(sorted(labels - SCRAPE_LABELS))})"
                )
            elif (
                matcher.op == "="
                and matcher.value
                and not any(s.get(matcher.label) in (matcher.value, ANY_VALUE) for s in found)
            ):
                seen = sorted({s.get(matcher.label, "") for s in found} - {ANY_VALUE})
                problems.append(
                    f'{expression.where}: no {selector.metric} series has {matcher.label}="{matcher.value}" '
                    f"(seen: {', '.join(seen)})"
                )
    # With a metric missing, its labels are unknown: the missing metric is the problem to report, not its labels.
    unknown = any("is not emitted" in problem for problem in problems)
    for label in sorted(read.grouping - available) if not unknown else ():
        problems.append(f"{expression.where}: groups or matches on {label!r}, which none of its metrics has")
    return problems


def check(exprs: Sequence[Expression], series_of: Lookup) -> list[str]:
    return [problem for expression in exprs for problem in check_one(expression, series_of)]


def metrics_read(exprs: Sequence[Expression]) -> set[str]:
    return {s.metric for e in exprs for s in reads(e.expr).selectors}


def registry_lookup(registry: Any, target_labels: frozenset[str]) -> Lookup:
    """A lookup from a prometheus_client registry, for a component that cannot be scraped here: the samples it
    exposes now (with their label values), the target labels a scrape adds, and for metrics without a sample yet,
    every sample name they can expose with their declared label names (values unknown)."""
    known: dict[str, list[dict[str, str]]] = {}
    for family in registry.collect():
        for sample in family.samples:
            known.setdefault(sample.name, []).append(dict(sample.labels))
    # prometheus_client keeps, per collector, the sample names it exposes (x_total, x_bucket, ...) and, on its
    # metric objects, their label names: no public API lists the labels of a metric that has no sample yet.
    names_of: Mapping[Any, set[str]] = getattr(registry, "_collector_to_names", {})
    for collector, names in list(names_of.items()):
        labels = set(getattr(collector, "_labelnames", ()))
        for name in names:
            if name not in known:
                declared = labels | ({"le"} if name.endswith("_bucket") else set())
                known[name] = [dict.fromkeys(declared, ANY_VALUE)]

    def lookup(metric: str) -> list[dict[str, str]]:
        extra = {**dict.fromkeys(target_labels, ANY_VALUE), "__name__": metric}
        return [{**extra, **labels} for labels in known.get(metric, [])]

    return lookup
