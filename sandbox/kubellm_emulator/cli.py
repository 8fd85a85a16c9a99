"""`kubellm emulator`: serve the in-memory Kubernetes API on 127.0.0.1 until SIGINT/SIGTERM and write a kubeconfig."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import pathlib
import signal
import sys

import yaml

from kubellm_emulator import Emulator


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubellm emulator",
        description="Serve an in-memory Kubernetes API (for kubectl, Kopf and the kubernetes client) on 127.0.0.1.",
    )
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (default: a free one)")
    parser.add_argument(
        "--kubeconfig",
        type=pathlib.Path,
        default=pathlib.Path(".kubellm/emulator.kubeconfig"),
        help="where to write a kubeconfig pointing at the emulator (default: %(default)s)",
    )
    parser.add_argument(
        "--crd",
        action="append",
        default=[],
        type=pathlib.Path,
        metavar="FILE",
        help="a YAML file of manifests (CRDs or any served kind) to apply at start; repeatable",
    )
    parser.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="NAME[:EPHEMERAL_STORAGE]",
        help="seed a Ready node, optionally with its allocatable ephemeral storage (e.g. node-1:100Gi); repeatable",
    )
    return parser


def _parse_node(spec: str) -> tuple[str, str]:
    name, _, storage = spec.partition(":")
    return name, storage or "100Gi"


async def serve(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with Emulator(requested_port=args.port or None) as emulator:
        for path in args.crd:
            for obj in emulator.apply_manifests(path):
                print(f"applied {obj['kind']} {obj['metadata']['name']}", file=sys.stderr)
        for spec in args.node:
            name, storage = _parse_node(spec)
            emulator.seed_node(name, ephemeral_storage=storage)
            emulator.seed_node_stats(name, capacity=storage)
        path = emulator.write_kubeconfig(args.kubeconfig)
        print(f"kubellm emulator serving {emulator.api_url}; kubeconfig: {path}", flush=True)
        await stop.wait()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(signum)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for path in args.crd:
        if not path.is_file():
            print(f"kubellm emulator: --crd {path}: no such file", file=sys.stderr)
            return 2
        try:
            list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError as error:
            print(f"kubellm emulator: --crd {path}: not valid YAML: {error}", file=sys.stderr)
            return 2
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
