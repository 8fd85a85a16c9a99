"""Admission of LLMServices against the real CRD (crds/kubellm.dev_llmservices.yaml): schema, defaults, CEL."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from kubellm_emulator import Emulator

CRD = pathlib.Path(__file__).resolve().parents[2] / "crds" / "kubellm.dev_llmservices.yaml"
LLMS = "/apis/kubellm.dev/v1alpha1/namespaces/default/llmservices"


def llmservice(name: str = "tiny", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubellm.dev/v1alpha1",
        "kind": "LLMService",
        "metadata": {"name": name},
        "spec": {"model": {"name": "embedded:smollm2-135m-instruct"}, **spec},
    }


@pytest.fixture
def with_crd(emulator: Emulator) -> Emulator:
    emulator.apply_manifests(CRD)
    return emulator


async def test_defaults_are_applied_and_unknown_fields_pruned(with_crd: Emulator, api: Any) -> None:
    status, created = await api.post(LLMS, {**llmservice(), "extra": 1, "spec": {**llmservice()["spec"], "bogus": 2}})
    assert status == 201, created
    # spec.replicas has no schema default (absent means 1): a default would collide with spec.autoscaling's rule.
    assert "replicas" not in created["spec"]
    assert created["spec"]["model"]["dtype"] == "auto"
    assert "bogus" not in created["spec"] and "extra" not in created


async def test_strict_field_validation_rejects_unknown_fields(with_crd: Emulator, api: Any) -> None:
    body = llmservice()
    body["spec"]["bogus"] = 2
    status, error = await api.post(LLMS, body, params={"fieldValidation": "Strict"})
    assert status == 400
    assert 'unknown field "spec.bogus"' in error["message"]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            {"replicas": -1},
            'LLMService.kubellm.dev "bad" is invalid: spec.replicas: Invalid value: -1: '
            "spec.replicas in body should be greater than or equal to 0",
        ),
        ({"replicas": "two"}, 'spec.replicas: Invalid value: "string": spec.replicas in body must be of type integer'),
        ({"model": {"name": "x", "dtype": "int4"}}, 'spec.model.dtype: Unsupported value: "int4": supported values:'),
        ({"model": {"name": ""}}, "spec.model.name in body should be at least 1 chars long"),
        ({"model": {"name": "x", "sizeHint": "lots"}}, "spec.model.sizeHint in body should match"),
        ({"model": {"name": "x", "sizeHint": 1.5}}, "spec.model.sizeHint in body must be of type integer,string"),
        ({"model": None}, "spec.model: Required value"),
        (
            {"storage": {"request": "10Gi", "limit": "1Gi"}},
            'spec.storage.limit: Invalid value: "object": ',
        ),
        ({"env": [{"name": "HOME", "value": "/x"}]}, 'spec.env: Invalid value: "array": env names'),
    ],
)
async def test_invalid_specs_are_422_naming_the_field(
    with_crd: Emulator, api: Any, spec: dict[str, Any], expected: str
) -> None:
    body = llmservice("bad")
    body["spec"].update(spec)
    if body["spec"]["model"] is None:
        del body["spec"]["model"]
    status, error = await api.post(LLMS, body)
    assert status == 422, error
    assert error["reason"] == "Invalid" and error["details"]["kind"] == "LLMService"
    assert expected in error["message"]
    assert (await api.get(f"{LLMS}/bad"))[0] == 404


async def test_metadata_name_rules_of_the_crd_apply(with_crd: Emulator, api: Any) -> None:
    status, error = await api.post(LLMS, llmservice("9starts-with-digit"))
    assert status == 422 and "metadata.name" in error["message"]


async def test_updates_and_status_writes_are_admitted_too(with_crd: Emulator, api: Any) -> None:
    await api.post(LLMS, llmservice())
    status, error = await api.patch(f"{LLMS}/tiny", {"spec": {"replicas": 5000}})
    assert status == 422 and "spec.replicas" in error["message"]
    status, error = await api.patch(f"{LLMS}/tiny/status", {"status": {"phase": "Dancing"}})
    assert status == 422 and "status.phase" in error["message"]
    status, written = await api.patch(
        f"{LLMS}/tiny/status",
        {
            "status": {
                "phase": "Ready",
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "Serving",
                        "lastTransitionTime": "2026-01-01T00:00:00Z",
                    }
                ],
            }
        },
    )
    assert status == 200, written
    assert written["status"]["conditions"][0]["message"] == ""  # defaulted inside list items


async def test_cel_quantity_comparison_accepts_valid_storage(with_crd: Emulator, api: Any) -> None:
    status, created = await api.post(LLMS, llmservice(storage={"request": "10Gi", "limit": "12Gi"}))
    assert status == 201, created
