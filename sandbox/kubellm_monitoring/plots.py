"""The Serving dashboard's queries drawn as small plots (matplotlib) from a Prometheus that scraped a sandbox run:
the README's pictures of what the dashboard shows. Grafana does not install here; the expressions are the
dashboard's own, read from its JSON file."""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any

from kubellm_monitoring.contract import DASHBOARDS
from kubellm_monitoring.prometheus import LocalPrometheus
from kubellm_monitoring.promql import substitute

SERVING = DASHBOARDS / "kubellm-serving.json"
PERCENT_UNITS = {"percentunit"}


def legend(template: str, labels: dict[str, str]) -> str:
    if not template or template == "__auto":
        return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__") or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)


def series(
    prometheus: LocalPrometheus, panel: dict[str, Any], start: float, end: float, step: float, rate: str
) -> list[tuple[str, list[float], list[float]]]:
    lines = []
    for target in panel["targets"]:
        expr = substitute(target["expr"], rate_interval=rate)
        for result in prometheus.query_range(expr, start, end, step):
            points = [(float(t) - start, float(v)) for t, v in result["values"] if v not in ("NaN", "+Inf", "-Inf")]
            if points:
                xs, ys = zip(*points, strict=True)
                lines.append((legend(target.get("legendFormat", ""), result["metric"]), list(xs), list(ys)))
    return lines


def draw(
    prometheus: LocalPrometheus,
    start: float,
    end: float,
    out: pathlib.Path,
    *,
    step: float = 2.0,
    rate: str = "10s",
    marks: list[tuple[float, str]] | None = None,
) -> pathlib.Path:
    """One PNG with a small plot per graph panel of the Serving dashboard (tables left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    board = json.loads(SERVING.read_text())
    panels = [p for p in board["panels"] if p["type"] in ("timeseries", "state-timeline")]
    columns = 2
    rows = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(11, 2.3 * rows), squeeze=False)
    for axis, panel in zip(axes.flat, panels, strict=False):
        lines = series(prometheus, panel, start, end, step, rate)
        unit = panel["fieldConfig"]["defaults"].get("unit", "")
        if panel["type"] == "state-timeline":
            # One row per series, a bar where it is 1: where each pod's load was, when.
            for row, (_, xs, _) in enumerate(sorted(lines)):
                axis.broken_barh([(x, step) for x in xs], (row - 0.4, 0.8))
            axis.set_yticks(range(len(lines)), [label[-40:] for label, _, _ in sorted(lines)], fontsize=5)
        else:
            scale = 100.0 if unit in PERCENT_UNITS else 1.0
            for label, xs, ys in lines:
                axis.plot(xs, [y * scale for y in ys], label=label[:40], linewidth=1.2)
            if lines:
                axis.legend(fontsize=5, loc="upper left", frameon=False)
        if not lines:
            axis.text(0.5, 0.5, "no data in this run", ha="center", va="center", fontsize=7, transform=axis.transAxes)
        for at, text in marks or []:
            axis.axvline(at - start, color="grey", linestyle=":", linewidth=0.8)
            axis.annotate(
                text, (at - start, 1.0), xycoords=("data", "axes fraction"), fontsize=6, color="grey", va="top"
            )
        shown = "%" if unit in PERCENT_UNITS else unit
        axis.set_title(panel["title"] + (f" ({shown})" if unit not in ("", "short") else ""), fontsize=8)
        axis.tick_params(labelsize=6)
        axis.set_xlim(0, end - start)
    for axis in list(axes.flat)[len(panels) :]:
        axis.axis("off")
    figure.supxlabel("seconds into the run", fontsize=7)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out
