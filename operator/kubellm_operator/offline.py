"""`kubellm render` and `kubellm crd`: what the operator would create, computed offline from LLMService files.

Input problems are printed one per line with their field path and exit 2, never as a traceback; `kubellm.cli`
dispatches here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kubellm_operator.api import API_VERSION, KIND, LLMService, validation_messages
from kubellm_operator.crd import api_reference, crd_yaml, dump_yaml
from kubellm_operator.render import DEFAULT_GPU_INFERENCE_IMAGE, DEFAULT_INFERENCE_IMAGE, render

EXIT_USAGE = 2  # bad input, as argparse itself exits


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
    notes: list[str] = []
    for llms in services:
        if args.namespace:
            llms.metadata.namespace = args.namespace
        if args.resolve:
            from kubellm_operator.hubrender import resolve_for_render

            llms, lines, problem = resolve_for_render(llms, args.hub_endpoint, args.download_bandwidth)
            if problem is not None:
                print(f"error: {problem}", file=sys.stderr)
                return EXIT_USAGE
            notes += lines
        manifests += render(llms, image_default=args.image, gpu_image_default=args.gpu_image)
    # YAML comments: `kubectl apply -f -` ignores them; people see where each derived value came from.
    sys.stdout.write("".join(f"# {line}\n" for line in notes) + dump_yaml(manifests))
    return 0


def _render_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubellm render",
        description="Print the manifests the operator would create, as YAML that `kubectl apply -f -` accepts. "
        "The operator adds ownerReferences; applied by hand, delete the children yourself.",
    )
    parser.add_argument(
        "-f", "--file", required=True, help="LLMService YAML (several documents allowed); - reads stdin"
    )
    parser.add_argument("--image", default=DEFAULT_INFERENCE_IMAGE, help="inference image when spec.image is unset")
    parser.add_argument(
        "--gpu-image",
        default=DEFAULT_GPU_INFERENCE_IMAGE,
        help="CUDA inference image when spec.image is unset and a GPU is requested",
    )
    parser.add_argument("-n", "--namespace", help="override metadata.namespace")
    parser.add_argument(
        "--resolve",
        action="store_true",
        help="ask the hub about hub models, as the operator does, and derive what the spec leaves unset "
        "(printed as comments with their source; token from HF_TOKEN)",
    )
    parser.add_argument("--hub-endpoint", help="the operator's hub setting (default: HF_ENDPOINT, else huggingface.co)")
    parser.add_argument("--download-bandwidth", default="50Mi", help="assumed bytes/s (default: %(default)s)")
    return parser


def render_main(argv: list[str]) -> int:
    """`kubellm render`: print the Deployment and Service for LLMService files, offline."""
    return _render(_render_parser().parse_args(argv))


def crd_main(argv: list[str]) -> int:
    """`kubellm crd`: print the LLMService CustomResourceDefinition (or, with --reference, docs/api.md)."""
    parser = argparse.ArgumentParser(prog="kubellm crd", description="Print the LLMService CustomResourceDefinition.")
    parser.add_argument("--reference", action="store_true", help="print the field reference (docs/api.md) instead")
    sys.stdout.write(api_reference() if parser.parse_args(argv).reference else crd_yaml())
    return 0
