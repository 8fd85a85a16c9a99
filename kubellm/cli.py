"""The `kubellm` command: one entry point that hands each subcommand to the component that owns it.

Every component has its own dependencies (torch for `serve`, Kopf for `operator`, kmock for `emulator`), so its
module is imported only when its subcommand runs, and gets the rest of the command line as ``main(argv) -> int``.
An installation without a component's extra says which ``pip install`` brings it, instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

EXIT_UNAVAILABLE = 1


@dataclass(frozen=True)
class Delegate:
    module: str
    extra: str | None  # the pip extra that installs the module's dependencies; None: the base install has them
    help: str
    entry: str = "main"


DELEGATES: dict[str, Delegate] = {
    "render": Delegate(
        "kubellm_operator.offline",
        None,
        "print the Deployment and Service for LLMService files (offline, like helm template)",
        "render_main",
    ),
    "crd": Delegate("kubellm_operator.offline", None, "print the LLMService CustomResourceDefinition", "crd_main"),
    "serve": Delegate("kubellm_inference.server", "inference", "run the inference server (FastAPI, port 5000)"),
    "probe": Delegate("kubellm_inference.probe", "inference", "run a probe against the local server (probe live)"),
    "tiny-model": Delegate("kubellm_tools.tinymodel", "inference", "build a tiny random model folder"),
    "bench": Delegate(
        "kubellm_tools.bench", "inference", "benchmark an inference server; `bench operator`: the operator"
    ),
    "operator": Delegate("kubellm_operator.main", "operator", "run the Kopf operator"),
    "gateway": Delegate(
        "kubellm_gateway.main", "gateway", "run the gateway: one OpenAI endpoint for every served LLMService"
    ),
    "emulator": Delegate("kubellm_emulator.cli", "sandbox", "run the Kubernetes API emulator"),
    "sandbox": Delegate("kubellm_sandbox.cli", "sandbox", "sandbox up|down|status: a local cluster stand-in"),
    "demo": Delegate("kubellm_sandbox.demo", "sandbox", "run kubellm's main job end to end on this machine"),
    "hub": Delegate("kubellm_hub.server", None, "serve model folders over the Hugging Face Hub API (tests, sandbox)"),
    "monitoring": Delegate(
        "kubellm_monitoring.cli", "sandbox", "monitoring dashboards|plots: Grafana dashboards, the README's pictures"
    ),
}

# `kubellm COMMAND SUBCOMMAND ...` owned by another component than COMMAND itself: the operator's benchmark needs the
# API emulator (the sandbox extra), not the inference server's dependencies that `kubellm bench` needs.
NESTED: dict[tuple[str, str], Delegate] = {
    ("bench", "operator"): Delegate(
        "kubellm_sandbox.bench_operator", "sandbox", "benchmark the operator against the API emulator"
    ),
    ("bench", "elastic"): Delegate(
        "kubellm_sandbox.bench_elastic", "sandbox", "benchmark the gateway and the autoscaler on the sandbox"
    ),
}


def _delegate(command: str, argv: list[str], target: Delegate | None = None) -> int:
    target = target or DELEGATES[command]
    install = "pip install 'kubellm" + (f"[{target.extra}]'" if target.extra else "'")
    try:
        module = importlib.import_module(target.module)
    except ModuleNotFoundError as exc:
        missing = exc.name or "?"
        what = "is not part of this installation" if target.module.startswith(missing) else f"needs {missing}"
        print(f"kubellm {command}: {target.module} {what}; install it with: {install}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    entry = getattr(module, target.entry, None)
    if entry is None:
        print(f"kubellm {command}: {target.module} has no {target.entry}(argv) entry point", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return int(entry(argv) or 0)


def _version() -> str:
    try:
        return version("kubellm")
    except PackageNotFoundError:  # pragma: no cover - running from a tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubellm", description="Serve LLMs on Kubernetes from one LLMService resource."
    )
    parser.add_argument("--version", action="version", version=f"kubellm {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Listed for --help only: main() hands each subcommand to its module before argparse sees its options.
    for name, target in DELEGATES.items():
        commands.add_parser(name, help=target.help, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) >= 2 and (args[0], args[1]) in NESTED:
        return _delegate(f"{args[0]} {args[1]}", args[2:], NESTED[args[0], args[1]])
    if args and args[0] in DELEGATES:
        return _delegate(args[0], args[1:])
    build_parser().parse_args(args)  # --help, --version, or a usage error: argparse exits
    return 2  # pragma: no cover - argparse exits above: a subcommand is required


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
