"""`kubellm monitoring`: write the Grafana dashboards (generated from kubellm_monitoring.dashboards), and draw the
README's pictures of the Serving dashboard from a sandbox run."""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

from kubellm_monitoring import dashboards
from kubellm_monitoring.contract import DASHBOARDS


def write_dashboards(directory: pathlib.Path, check: bool) -> int:
    if check:
        stale = [
            name
            for name, board in dashboards.dashboards().items()
            if not (directory / name).is_file() or (directory / name).read_text() != dashboards.render(board)
        ]
        for name in stale:
            print(
                f"kubellm monitoring: {directory / name} differs from the generator; run `kubellm monitoring dashboards`",
                file=sys.stderr,
            )
        return 1 if stale else 0
    for path in dashboards.write(directory):
        print(path)
    return 0


def plots(out: pathlib.Path, model: str | None, phase_s: float) -> int:
    """A sandbox with a tiny random model (or ``model``), a Prometheus scraping it, traffic at rising concurrency,
    a scale from 1 to 2 replicas, then the Serving panels over the run."""
    from kubellm_monitoring.plots import draw
    from kubellm_monitoring.workload import SERVING, sandbox

    with tempfile.TemporaryDirectory(prefix="kubellm-plots-") as scratch:
        root = pathlib.Path(scratch)
        if model is None:
            from kubellm_tools.tinymodel import build_tiny_model

            model = str(build_tiny_model(root / "tiny"))
        with sandbox(root / "sandbox") as run:
            run.apply(model, queue_size=6, step_delay_s=0.05)
            print("kubellm monitoring: sandbox up, tiny Ready; scraping and sending traffic", file=sys.stderr)
            with run.prometheus() as prometheus, run.following_pods():
                start = time.time()
                marks = []
                for concurrency in (1, 3, 10):
                    marks.append((time.time(), f"{concurrency} at a time"))
                    run.traffic(10**6, concurrency=concurrency, seconds=phase_s)
                marks.append((time.time(), "scale to 2"))
                run.scale(SERVING, 2)
                run.traffic(10**6, concurrency=10, seconds=phase_s / 2)
                run.wait_ready(SERVING, 2)
                run.traffic(10**6, concurrency=10, seconds=phase_s)
                time.sleep(5)
                path = draw(prometheus, start, time.time(), out / "serving-dashboard.png", marks=marks)
    print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubellm monitoring", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    boards = sub.add_parser("dashboards", help="write the Grafana dashboards' JSON files")
    boards.add_argument("--out", type=pathlib.Path, default=DASHBOARDS, help="folder (default: %(default)s)")
    boards.add_argument("--check", action="store_true", help="exit 1 when the files differ from the generator")
    drawing = sub.add_parser("plots", help="draw the Serving dashboard from a sandbox run (needs prometheus)")
    drawing.add_argument(
        "--out", type=pathlib.Path, default=pathlib.Path("docs/img"), help="folder (default: %(default)s)"
    )
    drawing.add_argument("--model", help="model folder or name to serve (default: a tiny random model)")
    drawing.add_argument("--phase-seconds", type=float, default=40.0, help="length of each traffic phase")
    args = parser.parse_args(argv)
    if args.command == "dashboards":
        return write_dashboards(args.out, args.check)
    return plots(args.out, args.model, args.phase_seconds)
