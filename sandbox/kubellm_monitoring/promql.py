"""What a PromQL expression reads: its vector selectors (metric and label matchers) and the labels it groups or
matches on. A tokenizer and a walk over the tokens, not a full parser: Prometheus itself checks the syntax (the
contract test evaluates every expression), this only has to find the names an expression depends on.

Prometheus 2.42 (Debian bookworm's) has no /api/v1/parse_query, so the names cannot come from Prometheus.
"""

from __future__ import annotations

import dataclasses
import re

AGGREGATIONS = frozenset(
    [
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ]
)
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "start", "end", "inf", "nan"})
# Functions that add a label: the name of the label they write is their first string argument.
LABEL_WRITERS = frozenset({"label_replace", "label_join"})

_TOKEN = re.compile(
    r"""
    (?P<space>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<duration>\d+(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*)
  | (?P<number>0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=,(){}\[\]@:])
    """,
    re.VERBOSE,
)


class PromQLSyntaxError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Matcher:
    label: str
    op: str  # =, !=, =~, !~
    value: str


@dataclasses.dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[Matcher, ...]

    def __str__(self) -> str:
        inner = ", ".join(f'{m.label}{m.op}"{m.value}"' for m in self.matchers)
        return f"{self.metric}{{{inner}}}" if inner else self.metric


@dataclasses.dataclass(frozen=True)
class Reads:
    """What one expression depends on."""

    selectors: tuple[Selector, ...]
    grouping: frozenset[str]  # labels named in by/without/on/ignoring/group_left/group_right
    written: frozenset[str]  # labels the expression itself adds (label_replace/label_join)


def tokens(expr: str) -> list[tuple[str, str]]:
    out = []
    position = 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            raise PromQLSyntaxError(f"unexpected {expr[position : position + 10]!r} at {position} in {expr!r}")
        kind = match.lastgroup or ""
        if kind != "space":
            out.append((kind, match.group()))
        position = match.end()
    return out


def _unquote(text: str) -> str:
    body = text[1:-1]
    return body if text[0] == "`" else re.sub(r"\\(.)", r"\1", body)


def reads(expr: str) -> Reads:
    toks = tokens(expr)
    selectors: list[Selector] = []
    grouping: set[str] = set()
    written: set[str] = set()
    i = 0

    def matchers(start: int) -> tuple[list[Matcher], int]:
        """Parse ``{a="x", b=~"y"}`` starting at the ``{``; returns the matchers and the index after ``}``."""
        found: list[Matcher] = []
        j = start + 1
        while j < len(toks) and toks[j][1] != "}":
            if toks[j][1] == ",":
                j += 1
                continue
            if j + 2 >= len(toks) or toks[j + 1][1] not in ("=", "!=", "=~", "!~") or toks[j + 2][0] != "string":
                raise PromQLSyntaxError(f"bad label matcher near {toks[j][1]!r} in {expr!r}")
            found.append(Matcher(toks[j][1], toks[j + 1][1], _unquote(toks[j + 2][1])))
            j += 3
        if j >= len(toks):
            raise PromQLSyntaxError(f"unclosed {{ in {expr!r}")
        return found, j + 1

    while i < len(toks):
        kind, text = toks[i]
        following = toks[i + 1][1] if i + 1 < len(toks) else ""
        if text == "[":  # a range or subquery: durations only
            while i < len(toks) and toks[i][1] != "]":
                i += 1
            i += 1
            continue
        if kind == "ident" and text in GROUPING:
            i += 1
            if i < len(toks) and toks[i][1] == "(":
                i += 1
                while i < len(toks) and toks[i][1] != ")":
                    if toks[i][0] == "ident":
                        grouping.add(toks[i][1])
                    i += 1
                i += 1
            continue
        if kind == "ident" and text in LABEL_WRITERS and following == "(":
            for later_kind, later_text in toks[i + 2 :]:
                if later_kind == "string":
                    written.add(_unquote(later_text))
                    break
            i += 1
            continue
        if kind == "ident" and (following == "(" or text in AGGREGATIONS or text in KEYWORDS):
            i += 1  # a function, an aggregation (its by/without follows), a keyword
            continue
        if kind == "ident":
            found: list[Matcher] = []
            i += 1
            if i < len(toks) and toks[i][1] == "{":
                found, i = matchers(i)
            selectors.append(Selector(text, tuple(found)))
            continue
        if text == "{":  # a selector without a metric name: {__name__="x", ...}
            found, i = matchers(i)
            names = [m.value for m in found if m.label == "__name__" and m.op == "="]
            rest = tuple(m for m in found if m.label != "__name__")
            selectors.append(Selector(names[0] if names else "", rest))
            continue
        i += 1
    return Reads(tuple(selectors), frozenset(grouping), frozenset(written))


# What Grafana puts in place of its variables when the contract test evaluates a panel: every value matches.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "30s", "$__range": "5m"}


def substitute(expr: str, *, rate_interval: str | None = None) -> str:
    """A dashboard expression as Prometheus gets it from Grafana, with every template variable meaning "all"."""
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, rate_interval if rate_interval and name == "$__rate_interval" else value)
    return re.sub(r"\$\{?[a-zA-Z_]\w*\}?", ".*", expr)
