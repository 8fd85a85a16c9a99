"""Shared inputs for the API tests: the example LLMServices and a minimal valid one to mutate."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from kubellm_operator.api import LLMService

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
IMAGE = "kubellm/inference:dev"

MINIMAL: dict[str, Any] = {
    "apiVersion": "kubellm.dev/v1alpha1",
    "kind": "LLMService",
    "metadata": {"name": "demo", "namespace": "ml"},
    "spec": {"model": {"name": "embedded:smollm2-135m-instruct"}},
}


def minimal(**spec: Any) -> dict[str, Any]:
    """A valid LLMService document with `spec` fields merged over the minimal one."""
    doc = copy.deepcopy(MINIMAL)
    doc["spec"].update(copy.deepcopy(spec))
    return doc


def load_example(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / "examples" / name).read_text())
    return loaded


def llms(doc: dict[str, Any]) -> LLMService:
    return LLMService.from_object(doc)
