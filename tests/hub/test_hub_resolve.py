"""The operator's model resolution (kubellm_operator.resolve) against `kubellm hub`, and the sizes derived from
it (kubellm_operator.sizing): the user's values win, the rest comes from the hub."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from kubellm.modelfiles import HubFailure, select_files
from kubellm_hub.server import HubServer
from kubellm_operator.api import LLMService
from kubellm_operator.egress import EgressPolicy
from kubellm_operator.render import render
from kubellm_operator.resolve import ModelResolver, ResolvedModel, is_hub_id, resolve_model
from kubellm_operator.sizing import effective_llmservice, memory_estimate, startup_budget
from kubellm_sandbox.processes import free_port

# The stand-in hub and its CDN listen on loopback: allowed here, as an operator setting allows it.
HUB_POLICY = EgressPolicy(allow_loopback=True, redirect_hosts=frozenset({"127.0.0.1"}))
MIB = 2**20
GIB = 2**30


def test_resolves_commit_files_bytes_parameters_dtype_and_config(hub: HubServer, tiny_repo_source: Path) -> None:
    resolution = resolve_model("acme/tiny", None, endpoint=hub.endpoint, token=None, policy=HUB_POLICY)
    model = resolution.model
    assert model is not None, resolution.message
    assert len(model.commit) == 40 and model.files == tuple(sorted(p.name for p in tiny_repo_source.iterdir()))
    assert model.bytes == sum(p.stat().st_size for p in tiny_repo_source.iterdir())
    assert model.dtype == "F32" and model.parameters is not None and model.parameters > 0
    assert model.config["num_hidden_layers"] == 2
    assert resolution.requests == 2  # model info with file metadata, then config.json at the commit
    assert hub.stats() == {"model_info": 1, "resolve_get": 1, "file_body": 1}


@pytest.mark.parametrize(
    ("knobs", "name", "revision", "token", "reason"),
    [
        ({}, "acme/typo", None, None, HubFailure.ModelNotFound),
        ({}, "acme/tiny", "nope", None, HubFailure.RevisionNotFound),
        ({"token": "t", "gated": ["acme/locked"]}, "acme/locked", None, None, HubFailure.GatedModel),
        ({"token": "t"}, "acme/tiny", None, "wrong", HubFailure.HubUnauthorized),
    ],
)
def test_hub_refusals_are_classified_not_raised(
    hub: HubServer, knobs: dict[str, object], name: str, revision: str | None, token: str | None, reason: HubFailure
) -> None:
    hub.set_knobs(**knobs)
    resolution = resolve_model(name, revision, endpoint=hub.endpoint, token=token, policy=HUB_POLICY)
    assert resolution.model is None and resolution.failure is reason
    assert resolution.message is not None and resolution.message.startswith(reason.prefix + ": ")
    assert name in resolution.message


def test_gated_model_resolves_with_the_token(hub: HubServer) -> None:
    hub.set_knobs(token="t", gated=["acme/locked"])
    assert resolve_model("acme/locked", None, endpoint=hub.endpoint, token="t", policy=HUB_POLICY).model is not None


def test_unreachable_hub_is_classified() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    resolution = resolve_model("acme/tiny", None, endpoint=endpoint, token=None, timeout_s=5, policy=HUB_POLICY)
    assert resolution.failure is HubFailure.HubUnreachable and endpoint in (resolution.message or "")


def test_resolver_caches_until_the_key_changes(hub: HubServer) -> None:
    resolver = ModelResolver(policy=HUB_POLICY)
    first = resolver.resolve("acme/tiny", None, endpoint=hub.endpoint, token=None)
    assert resolver.resolve("acme/tiny", None, endpoint=hub.endpoint, token=None) is first
    assert resolver.resolutions == 1
    resolver.resolve("acme/tiny", None, endpoint=hub.endpoint, token="other")
    assert resolver.resolutions == 2


def test_file_selection_prefers_safetensors_and_skips_subfolders() -> None:
    files = [
        "README.md",
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "original/consolidated.00.pth",
        "onnx/model.onnx",
        "tokenizer.json",
        "tokenizer.model",
        ".gitattributes",
    ]
    assert select_files(files) == [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer.model",
    ]
    assert select_files(["config.json", "pytorch_model.bin", "pytorch_model.bin.index.json"]) == [
        "config.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
    ]


@pytest.mark.parametrize(
    ("name", "hub"),
    [
        ("mistralai/Mistral-7B-Instruct-v0.2", True),
        ("gpt2", True),
        ("embedded:smollm2-135m-instruct", False),
        ("/models/x", False),
        ("./x", False),
    ],
)
def test_is_hub_id(name: str, hub: bool) -> None:
    assert is_hub_id(name) is hub


def _mistral_like() -> ResolvedModel:
    return ResolvedModel(
        name="acme/big",
        endpoint="http://hub",
        revision=None,
        commit="c" * 40,
        files=("config.json", "model.safetensors"),
        bytes=int(14.5 * GIB),
        parameters=7_241_732_096,
        dtype="BF16",
        config={"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096},
    )


def _llms(**spec: object) -> LLMService:
    return LLMService.from_object(
        {
            "apiVersion": "kubellm.dev/v1alpha1",
            "kind": "LLMService",
            "metadata": {"name": "m"},
            "spec": {"model": {"name": "acme/big"}, **spec},
        }
    )


def test_derived_sizes_from_the_resolved_bytes() -> None:
    effective, derived = effective_llmservice(
        _llms(), _mistral_like(), default_endpoint="http://hub", bandwidth=50 * MIB
    )
    fields = {d.field: d for d in derived}
    plan = effective.spec.storage_plan()
    assert plan.cache_size == 18 * GIB  # 14.5Gi x 1.2 = 17.4Gi, rounded up
    assert plan.request == 19 * GIB and plan.min_node_free == 19 * GIB
    assert effective.spec.model.revision == "c" * 40
    assert effective.spec.model.hub is not None and effective.spec.model.hub.endpoint == "http://hub"
    # 7.24e9 x 4 bytes (float32 on CPU) = 26.98Gi, + KV 2 x 32 x 8 x 128 x 4 x 8 x 2304 = 4.5Gi, + 1Gi -> 33Gi
    assert effective.spec.resources.requests.memory == "33Gi"
    # 2 x 14848Mi / 50Mi/s = 594s, + 14848Mi / 200Mi/s = 74s, + 300s = 968s -> 1020s
    assert effective.spec.probes.startup.budget_seconds == startup_budget(_mistral_like(), 50 * MIB) == 1020
    assert set(fields) >= {
        "spec.model.sizeHint",
        "spec.storage.cacheSize",
        "spec.storage.request",
        "spec.resources.requests.memory",
        "spec.probes.startup.budgetSeconds",
        "spec.model.revision",
    }
    deployment = render(effective, image_default="kubellm/inference:dev")[0]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KUBELLM_REVISION"] == "c" * 40 and env["KUBELLM_HUB_ENDPOINT"] == "http://hub"


def test_the_users_values_win() -> None:
    llms = _llms(
        model={"name": "acme/big", "sizeHint": "20Gi", "hub": {"endpoint": "http://mirror"}},
        resources={"requests": {"memory": "40Gi"}},
        probes={"startup": {"budgetSeconds": 7200}},
    )
    effective, derived = effective_llmservice(llms, _mistral_like(), default_endpoint="http://hub", bandwidth=50 * MIB)
    assert effective.spec.model.size_hint == "20Gi" and effective.spec.storage_plan().cache_size == 24 * GIB
    assert effective.spec.resources.requests.memory == "40Gi"
    assert effective.spec.probes.startup.budget_seconds == 7200
    assert effective.spec.model.hub is not None and effective.spec.model.hub.endpoint == "http://mirror"
    assert [d.field for d in derived] == ["spec.model.revision"]


def test_without_a_resolution_nothing_but_the_endpoint_is_derived() -> None:
    effective, derived = effective_llmservice(_llms(), None, default_endpoint=None, bandwidth=50 * MIB)
    assert derived == [] and effective == _llms()


def test_memory_on_gpu_uses_bfloat16() -> None:
    gpu = _llms(resources={"limits": {"nvidia.com/gpu": "1"}})
    cpu_bytes, gpu_bytes = memory_estimate(_llms(), _mistral_like()), memory_estimate(gpu, _mistral_like())
    assert cpu_bytes is not None and gpu_bytes is not None and gpu_bytes < cpu_bytes


@pytest.mark.parametrize(
    ("quantization", "expected_gib"),
    [
        # 7.24e9 parameters: float32 28.97e9 B; int8 (32000 x 4096 embedding in float32, the rest 1 B) 7.63e9 B;
        # int4 (the rest 0.625 B) 4.97e9 B; each + the same KV cache (2 x 32 x 8 x 128 x 4 B x 8 x 2304 = 4.83e9 B)
        # + 1Gi, rounded up to a GiB.
        ("none", 33),
        ("int8", 13),
        ("int4", 11),
    ],
)
def test_memory_follows_the_quantized_weights(quantization: str, expected_gib: int) -> None:
    llms = _llms(model={"name": "acme/big", "quantization": quantization})
    model = _mistral_like()
    model = dataclasses.replace(model, config={**model.config, "vocab_size": 32000})
    assert memory_estimate(llms, model) == expected_gib * GIB


def test_render_resolve_shows_derived_values_and_their_sources(
    hub: HubServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kubellm_operator.offline import render_main

    manifest = tmp_path / "hub.yaml"
    manifest.write_text(
        "apiVersion: kubellm.dev/v1alpha1\nkind: LLMService\nmetadata: {name: hubby}\n"
        "spec:\n  model: {name: acme/tiny}\n  resources: {requests: {memory: 3Gi}}\n"
    )
    assert render_main(["-f", str(manifest), "--resolve", "--hub-endpoint", hub.endpoint]) == 0
    out = capsys.readouterr().out
    comments = [line for line in out.splitlines() if line.startswith("#")]
    assert comments[0].startswith(f"# LLMService hubby: acme/tiny on {hub.endpoint} is commit ")
    assert any("spec.storage.cacheSize: 1Gi  <- 1.2 x sizeHint" in line for line in comments)
    assert not any("resources.requests.memory" in line for line in comments), "the user's memory wins"
    assert "KUBELLM_REVISION" in out and "memory: 3Gi" in out
    manifest.write_text(manifest.read_text().replace("acme/tiny", "acme/typo"))
    assert render_main(["-f", str(manifest), "--resolve", "--hub-endpoint", hub.endpoint]) == 2
    assert "model not found: acme/typo" in capsys.readouterr().err
