"""The served precision: what `dtype: auto` resolves to, and weight-only int8/int4 quantization.

The quality check runs the real SmolLM2 (the embedded model): greedy continuations of a fixed prompt set under
int8 and int4 weights against the bfloat16 model, and the mean log-likelihood the quantized models give to the
bfloat16 model's own continuations, within stated tolerances.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from inference_support import serve

from kubellm.contract import CompileMode, DType, Quantization, ServerSettings
from kubellm_inference.loading import ModelLoadError, converted_embedded_folder, load_model
from kubellm_inference.precision import cpu_has_native_bf16, pack_linears, resolve_dtype, weight_bytes
from kubellm_tools.quality import MAX_NLL_INCREASE, MIN_TOP1_AGREEMENT, TEXTS


def test_auto_is_bfloat16_exactly_where_the_cpu_computes_it_natively() -> None:
    flags = Path("/proc/cpuinfo").read_text(errors="replace") if Path("/proc/cpuinfo").exists() else ""
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        assert cpu_has_native_bf16()
    expected = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert resolve_dtype(DType.auto, torch.device("cpu")) == expected
    assert resolve_dtype(DType.float32, torch.device("cpu")) == torch.float32
    assert resolve_dtype(DType.bfloat16, torch.device("cpu")) == torch.bfloat16


def test_auto_server_reports_the_dtype_it_resolved_to(tiny_settings: ServerSettings) -> None:
    expected = "bfloat16" if cpu_has_native_bf16() else "float32"
    with serve(tiny_settings.model_copy(update={"dtype": DType.auto})) as server, server.client() as client:
        (card,) = client.get("/v1/models").json()["data"]
        answer = client.post(
            "/v1/completions", json={"model": "tiny", "prompt": "Hello", "max_tokens": 4, "ignore_eos": True}
        )
    assert card["dtype"] == expected
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 4
    info = {"dtype": expected, "quantization": "none", "device": "cpu", "compile": "off"}
    assert server.metric("kubellm_model_info", **info) == 1


def test_int8_server_generates_and_reads_fewer_bytes(tiny_settings: ServerSettings) -> None:
    plain = load_model(tiny_settings)
    settings = tiny_settings.model_copy(update={"quantization": Quantization.int8})
    with serve(settings) as server, server.client() as client:
        (card,) = client.get("/v1/models").json()["data"]
        answer = client.post(
            "/v1/completions", json={"model": "tiny", "prompt": "Hello", "max_tokens": 4, "ignore_eos": True}
        )
    assert card["quantization"] == "int8"
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 4
    quantized = server.metric("kubellm_model_weight_bytes")
    # float32 -> int8 is 4x fewer bytes for the linear layers; norms and scales stay wider.
    assert 0 < quantized < plain.weight_bytes / 2.5


def test_int4_refuses_a_model_whose_layers_do_not_fit_its_kernel(tiny_settings: ServerSettings) -> None:
    # The tiny model's hidden size (48) is not a multiple of the int4 group (32): nothing can be quantized.
    with pytest.raises(ModelLoadError, match="quantization: int4 found no linear layer"):
        load_model(tiny_settings.model_copy(update={"quantization": Quantization.int4}))


# ---- quality on the real model ----------------------------------------------------------------------------------


def _score(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(the most likely next token at every real position, the mean NLL of the texts' tokens)."""
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    targets, real = ids[:, 1:], mask[:, 1:].bool()
    nll = torch.nn.functional.cross_entropy(logits[real], targets[real]).item()
    return logits.argmax(dim=-1)[real], nll


@pytest.mark.slow
def test_int8_and_int4_stay_close_to_bfloat16_on_smollm2(tmp_path: Path) -> None:
    folder = str(converted_embedded_folder(ServerSettings().cache_dir))
    base = ServerSettings(model=folder, dtype=DType.bfloat16, cache_dir=tmp_path)
    reference = load_model(base)
    batch = reference.tokenizer(TEXTS, return_tensors="pt", padding=True)
    ref_top1, ref_nll = _score(reference.model, batch.input_ids, batch.attention_mask)
    for setting, max_bytes_share in ((Quantization.int8, 0.6), (Quantization.int4, 0.4)):
        loaded = load_model(base.model_copy(update={"quantization": setting}))
        assert weight_bytes(loaded.model) < reference.weight_bytes * max_bytes_share
        top1, nll = _score(loaded.model, batch.input_ids, batch.attention_mask)
        agreement = (top1 == ref_top1).float().mean().item()
        print(f"{setting.value}: top-1 agreement {agreement:.4f}, NLL {nll:.4f} vs bfloat16 {ref_nll:.4f}")
        assert agreement >= MIN_TOP1_AGREEMENT[setting], (setting, agreement)
        assert nll - ref_nll <= MAX_NLL_INCREASE[setting], (setting, nll, ref_nll)


@pytest.mark.slow
def test_int4_server_generates_through_the_batching_engine(tmp_path: Path) -> None:
    # int4 through the real server and its batching engine: two requests released together, of different
    # lengths (left padding). `kubellm bench` once hit "_weight_int4pack_mm_cpu: expect A to be contiguous"
    # through this path; this test did not reproduce that failure, so it guards the path, not that bug.
    folder = str(converted_embedded_folder(ServerSettings().cache_dir))
    settings = ServerSettings(
        model=folder,
        served_model_name="smol",
        quantization=Quantization.int4,
        cache_dir=tmp_path,
        max_new_tokens=8,
        compile=CompileMode.off,
    )
    prompts = ["The capital of France is", "Rome, a city of many churches and fountains, is the capital of"]
    gate = threading.Barrier(len(prompts), timeout=60)
    with serve(settings) as server, server.client(timeout=120) as client:

        def ask(prompt: str) -> httpx.Response:
            gate.wait()
            body = {"model": "smol", "prompt": prompt, "max_tokens": 6, "temperature": 0}
            return client.post("/v1/completions", json=body)

        with ThreadPoolExecutor(len(prompts)) as pool:
            answers = list(pool.map(ask, prompts))
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    assert "Paris" in answers[0].json()["choices"][0]["text"]


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")
def test_packed_linears_decode_the_same_tokens_and_the_server_says_so(tiny_settings: ServerSettings) -> None:
    """The eager step that serves for good runs its linears on oneDNN-packed weights (precision.pack_linears)."""
    import copy

    plain = load_model(tiny_settings).model
    packed = copy.deepcopy(plain)
    assert pack_linears(packed, torch.device("cpu"), torch.float32) is None
    assert not any(type(m) is torch.nn.Linear for m in packed.modules())
    prompt = torch.tensor([[5, 17, 42, 7, 99, 3]])
    with torch.inference_mode():
        expected = plain.generate(prompt, max_new_tokens=12, do_sample=False)
        got = packed.generate(prompt, max_new_tokens=12, do_sample=False)
    assert got.tolist() == expected.tolist()
    # Not where it would not help or not run: another device, float16, quantized layers (no nn.Linear left).
    assert pack_linears(copy.deepcopy(plain), torch.device("meta"), torch.float32) == "not on meta"
    assert pack_linears(plain, torch.device("cpu"), torch.float16) == "not for float16"

    with serve(tiny_settings) as server, server.client() as client:
        status = client.get("/loadz").json()["compile"]
        answer = client.post("/v1/completions", json={"model": "tiny", "prompt": "Hello", "max_tokens": 4})
    assert "linears packed for oneDNN" in status["reason"], status
    assert answer.status_code == 200
