"""Running `kubellm demo` from a test: one LLMService manifest, a temporary sandbox, stopped afterwards."""

from __future__ import annotations

import pathlib
from typing import Any

import yaml

from kubellm_sandbox import demo

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def example(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    return loaded


def run_demo(manifest: dict[str, Any], tmp_path: pathlib.Path, timeout_s: int) -> int:
    """`kubellm demo --down-after` on ``manifest`` in a sandbox under ``tmp_path``; --down-after stops the sandbox
    whatever the outcome, so no process outlives the test."""
    # The compiled step would compile in a child process of the pod: tests/inference/test_compiled.py covers it.
    manifest["spec"]["model"].setdefault("compile", "off")
    path = tmp_path / "llmservice.yaml"
    path.write_text(yaml.safe_dump(manifest))
    data_dir = tmp_path / "sandbox"
    return demo.main(
        [
            "--file",
            str(path),
            "--data-dir",
            str(data_dir),
            "--timeout",
            str(timeout_s),
            "--down-after",
            "--question",
            "Hi",
        ]
    )
