"""The `kubellm` command: offline `render` and `crd`, and the entry points of every other kubellm component.

`render` and `crd` live here. Every other subcommand belongs to a component with its own dependencies
(torch for `serve`, Kopf for `operator`, ...), so its module is imported only when that subcommand runs and
gets the rest of the command line as its own `main(argv) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kubellm_operator.api import API_VERSION, KIND, LLMService, validation_messages
from kubellm_operator.crd import api_reference, crd_yaml, dump_yaml
from kubellm_operator.render import DEFAULT_INFERENCE_IMAGE, render

EXIT_USAGE = 2  # bad input, as argparse itself exits
EXIT_UNAVAILABLE = 1


@dataclass(frozen=True)
class Delegate:
    module: str
    extra: str  # the pip extra that installs the module's dependencies
    help: str


DELEGATES: dict[str, Delegate] = {
    "serve": Delegate("kubellm_inference.server", "inference", "run the inference server (FastAPI, port 5000)"),
    "probe": Delegate("kubellm_inference.probe", "inference", "run a probe against the local server (probe live)"),
    "tiny-model": Delegate("kubellm_inference.tinymodel", "inference", "build a tiny random model folder"),
    "bench": Delegate("kubellm_inference.bench", "inference", "benchmark an inference server"),
    "operator": Delegate("kubellm_operator.main", "operator", "run the Kopf operator"),
    "emulator": Delegate("kubellm_sandbox.emulator_cli", "sandbox", "run the Kubernetes API emulator"),
    "sandbox": Delegate("kubellm_sandbox.cli", "sandbox", "sandbox up|down|status: a local cluster stand-in"),
    "demo": Delegate("kubellm_sandbox.demo", "sandbox", "run kubellm's main job end to end on this machine"),
}


def _delegate(command: str, argv: list[str]) -> int:
    target = DELEGATES[command]
    try:
        module = importlib.import_module(target.module)
    except ModuleNotFoundError as exc:
        missing = exc.name or "?"
        what = "is not part of this installation" if target.module.startswith(missing) else f"needs {missing}"
        print(
            f"kubellm {command}: {target.module} {what}; install it with: pip install 'kubellm[{target.extra}]'",
            file=sys.stderr,
        )
        return EXIT_UNAVAILABLE
    entry = getattr(module, "main", None)
    if entry is None:
        print(f"kubellm {command}: {target.module} has no main(argv) entry point", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return int(entry(argv) or 0)


class InputError(Exception):
    """The input file cannot become manifests; each line is one problem, already phrased for the user."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def _read(source: str) -> str:
    if source == "-":
        return sys.stdin.read()
    try:
        return Path(source).read_text()
    except OSError as exc:
        raise InputError([f"cannot read {source}: {exc.strerror}"]) from exc


def load_llmservices(text: str, source: str) -> list[LLMService]:
    """Every LLMService in a multi-document YAML text; InputError lists every problem with its field path."""
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InputError([f"{source}: not valid YAML{where}: {problem}"]) from exc
    if not documents:
        raise InputError([f"{source}: no LLMService found (the file is empty)"])
    services: list[LLMService] = []
    errors: list[str] = []
    for number, doc in enumerate(documents, start=1):
        where = source if len(documents) == 1 else f"{source} (document {number})"
        problems = _kind_problems(doc)
        if problems:
            errors += [f"{where}: {line}" for line in problems]
            continue
        try:
            llms = LLMService.from_object(doc)
        except ValidationError as exc:
            errors += [f"{where}: {line}" for line in validation_messages(exc)]
            continue
        # Accepted by the schema but unworkable (a cache smaller than the model): the operator refuses these too.
        errors += [f"{where}: spec: {problem}" for problem in llms.spec.problems()]
        services.append(llms)
    if errors:
        raise InputError(errors)
    return services


def _kind_problems(doc: Any) -> list[str]:
    if not isinstance(doc, dict):
        return [f"(document): must be a mapping (an LLMService object), not {type(doc).__name__}"]
    found = []
    if doc.get("apiVersion") != API_VERSION:
        found.append(f"apiVersion: must be {API_VERSION}, not {doc.get('apiVersion')!r}")
    if doc.get("kind") != KIND:
        found.append(f"kind: must be {KIND}, not {doc.get('kind')!r}")
    return found


def _render(args: argparse.Namespace) -> int:
    try:
        services = load_llmservices(_read(args.file), "<stdin>" if args.file == "-" else args.file)
    except InputError as exc:
        for line in exc.lines:
            print(f"error: {line}", file=sys.stderr)
        return EXIT_USAGE
    manifests: list[dict[str, Any]] = []
    for llms in services:
        if args.namespace:
            llms.metadata.namespace = args.namespace
        manifests += render(llms, image_default=args.image)
    sys.stdout.write(dump_yaml(manifests))
    return 0


def _crd(args: argparse.Namespace) -> int:
    sys.stdout.write(api_reference() if args.reference else crd_yaml())
    return 0


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

    render_parser = commands.add_parser(
        "render",
        help="print the Deployment and Service for LLMService files (offline, like helm template)",
        description="Print the manifests the operator would create, as YAML that `kubectl apply -f -` accepts. "
        "The operator adds ownerReferences; applied by hand, delete the children yourself.",
    )
    render_parser.add_argument(
        "-f", "--file", required=True, help="LLMService YAML (several documents allowed); - reads stdin"
    )
    render_parser.add_argument(
        "--image", default=DEFAULT_INFERENCE_IMAGE, help="inference image when spec.image is unset"
    )
    render_parser.add_argument("-n", "--namespace", help="override metadata.namespace")
    render_parser.set_defaults(handler=_render)

    crd_parser = commands.add_parser("crd", help="print the LLMService CustomResourceDefinition")
    crd_parser.add_argument("--reference", action="store_true", help="print the field reference (docs/api.md) instead")
    crd_parser.set_defaults(handler=_crd)

    # Listed for --help only: main() hands these to their module before argparse sees their options.
    for name, target in DELEGATES.items():
        commands.add_parser(name, help=target.help, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in DELEGATES:
        return _delegate(args[0], args[1:])
    parsed = build_parser().parse_args(args)
    return int(parsed.handler(parsed))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
