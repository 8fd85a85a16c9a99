"""Fixtures of the emulator's own tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from emulator_http import Api

from kubellm_emulator.auth import ADMIN_TOKEN
from kubellm_emulator.pytest_plugin import emulator, emulator_kubeconfig

__all__ = ["emulator", "emulator_kubeconfig"]


def example_crd(*, group: str = "example.dev", plural: str = "widgets", kind: str = "Widget") -> dict[str, Any]:
    """A small CRD with a status and a scale subresource, a printer column and schema rules."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": kind.lower(), "kind": kind, "shortNames": ["wd"]},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {
                        "status": {},
                        "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"},
                    },
                    "additionalPrinterColumns": [
                        {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
                        {
                            "name": "Ready",
                            "type": "string",
                            "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
                        },
                        {"name": "Size", "type": "string", "jsonPath": ".spec.size", "priority": 1},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["size"],
                                    "properties": {
                                        "replicas": {"type": "integer", "minimum": 0, "default": 1},
                                        "size": {"type": "string", "enum": ["small", "large"]},
                                        "storage": {"type": "string"},
                                        "tags": {"type": "array", "items": {"type": "string"}},
                                    },
                                    "x-kubernetes-validations": [
                                        {
                                            "rule": "!has(self.storage) || quantity(self.storage).compareTo(quantity('1Gi')) >= 0",
                                            "message": "storage must be at least 1Gi",
                                        }
                                    ],
                                },
                                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                            },
                        }
                    },
                }
            ],
        },
    }


@pytest.fixture
def widget_crd() -> dict[str, Any]:
    return example_crd()


@pytest.fixture
async def api(emulator: Any) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as session:
        yield Api(session, emulator.api_url)
