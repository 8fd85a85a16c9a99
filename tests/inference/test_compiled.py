"""The compiled decode step (issue 22): buckets, the auto decision, and on the tiny model a server that is Ready
on the eager step, switches to the compiled one when it is built, and answers greedy requests exactly as the
eager step did (float32: the same tokens, not a tolerance)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aot_decode
import httpx
import pytest
import torch
from inference_support import RunningServer, serve, wait_until
from torch._dynamo.utils import counters
from torch._inductor.utils import run_and_get_code
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from kubellm.contract import CompileMode, DType, Quantization, ServerSettings
from kubellm_inference import compiled
from kubellm_inference.compiled import (
    ATTENTION_NAME,
    batch_buckets,
    bucket_for,
    build_into,
    cache_key,
    decide,
    inductor_options,
    one_token_attention,
    register_attention,
    warm_marker,
)
from kubellm_inference.matvec import MatVecPass

# Compiling the tiny model's graph (a child process, then the load from its cache): 4-10 min on the
# loaded 2-core dev VM.
COMPILE_TIMEOUT_S = 900.0
PROMPTS = ["The quick brown fox", "Hello", "A much longer prompt that pads the others on the left, twice over"]


@pytest.mark.parametrize(
    ("max_batch_size", "quantization", "buckets"),
    [
        (1, Quantization.none, (1,)),
        (2, Quantization.none, (1, 2)),
        (8, Quantization.none, (1, 8)),
        (1, Quantization.int8, (1,)),
        (6, Quantization.int4, (6,)),
        (8, Quantization.int8, (8,)),
    ],
)
def test_batch_buckets(max_batch_size: int, quantization: Quantization, buckets: tuple[int, ...]) -> None:
    # Unquantized: a single-row graph (matrix-vector reductions) and one symbolic graph for the rest; quantized:
    # one symbolic graph for every batch size.
    assert batch_buckets(max_batch_size, quantization) == buckets
    assert {bucket_for(n, buckets) for n in range(1, max_batch_size + 1)} == set(buckets)
    assert bucket_for(1, buckets) == buckets[0]
    with pytest.raises(ValueError, match="exceed the largest bucket"):
        bucket_for(max_batch_size + 1, buckets)


def test_only_the_unquantized_single_row_graph_goes_through_the_matvec_pass() -> None:
    single = inductor_options(1)
    assert single["freezing"] is False and isinstance(single["post_grad_custom_pre_pass"], MatVecPass)
    assert inductor_options(8) == {"freezing": True}
    assert inductor_options(1, Quantization.int8) == {"freezing": True}


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_matvec_pass_turns_single_row_linears_into_reductions(dtype: torch.dtype, bias: bool) -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 96, bias=bias, dtype=dtype)

    def run(rows: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        x = torch.randn(rows, 64, dtype=dtype)
        torch._dynamo.reset()
        compiled = torch.compile(layer, dynamic=False, options=inductor_options(1))
        with torch.inference_mode():
            out, code = run_and_get_code(compiled, x)
            return out, layer(x), "\n".join(code)

    out, eager, code = run(1)
    # The product is a generated reduction, not a call to a matmul kernel; float32 sums in another order.
    assert "extern_kernels.mm" not in code and "extern_kernels.addmm" not in code, code
    tolerance = 1e-5 if dtype is torch.float32 else 1e-2
    torch.testing.assert_close(out, eager, rtol=tolerance, atol=tolerance)
    # Two rows: left to the matmul (the pass applies to one row only).
    out, eager, code = run(2)
    assert "extern_kernels.mm" in code or "extern_kernels.addmm" in code, code
    torch.testing.assert_close(out, eager, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize(
    ("setting", "device", "dtype", "wanted", "reason"),
    [
        (CompileMode.off, "cpu", torch.bfloat16, False, "compile: off"),
        (CompileMode.auto, "cpu", torch.bfloat16, True, "on for CPU bfloat16"),
        (CompileMode.auto, "cpu", torch.float32, True, "on for CPU float32"),
        (CompileMode.auto, "cpu", torch.float16, False, "bfloat16 and float32 only"),
        (CompileMode.auto, "cuda", torch.bfloat16, False, "off on cuda"),
    ],
)
def test_auto_compiles_cpu_bfloat16_and_float32_only(
    setting: CompileMode, device: str, dtype: torch.dtype, wanted: bool, reason: str
) -> None:
    decided, why = decide(setting, torch.device(device), dtype, Quantization.none)
    assert decided is wanted and reason in why


@pytest.mark.parametrize("quantization", [Quantization.int8, Quantization.int4])
def test_auto_compiles_the_quantized_paths_too(quantization: Quantization) -> None:
    # Validated through the compiled step by the quality check (bench/compiled_step.py --quality, docs/inference.md).
    decided, why = decide(CompileMode.auto, torch.device("cpu"), torch.bfloat16, quantization)
    assert decided and f"(quantization {quantization.value})" in why


def test_auto_is_off_without_the_cpp_toolchain_inductor_needs() -> None:
    # The inference image has no C++ compiler: even a warm Inductor cache needs one, so auto serves eager there.
    decided, why = decide(CompileMode.auto, torch.device("cpu"), torch.bfloat16, Quantization.none, "no C++ compiler")
    assert not decided and "no C++ compiler" in why


def test_cache_key_separates_models_dtypes_and_quantizations() -> None:
    keys = {
        cache_key("/models/a", torch.bfloat16, Quantization.none),
        cache_key("/models/b", torch.bfloat16, Quantization.none),
        cache_key("/models/a", torch.float32, Quantization.none),
        cache_key("/models/a", torch.bfloat16, Quantization.int8),
    }
    assert len(keys) == 4
    assert cache_key("/models/a", torch.bfloat16, Quantization.none).startswith("a-")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("rows", "masked"), [(1, False), (3, False), (3, True)])
def test_one_token_attention_computes_what_transformers_sdpa_does(dtype: torch.dtype, rows: int, masked: bool) -> None:
    # SmolLM2's layout: 9 query heads over 3 key/value heads. Without a mask transformers takes enable_gqa (the slow
    # CPU path), with one it packs the heads itself; either way the numbers must be the same.
    generator = torch.Generator().manual_seed(0)
    module: Any = SimpleNamespace(num_key_value_groups=3, is_causal=True)
    # [rows, heads, 1, dim] as the model makes it: its projection's [rows, 1, heads, dim], transposed.
    query = torch.randn((rows, 1, 9, 64), generator=generator, dtype=dtype).transpose(1, 2)
    cache = torch.randn((2, rows, 3, 40, 64), generator=generator, dtype=dtype)
    keys, values = cache[0, :, :, :33], cache[1, :, :, :33]  # views of a cache with room, as the engine's
    mask = None
    if masked:
        mask = torch.ones((rows, 1, 1, 33), dtype=torch.bool)
        mask[0, ..., :20] = False  # the first row is left-padded
    expected, _ = sdpa_attention_forward(module, query, keys, values, mask, scaling=0.125)
    got = one_token_attention(module, query, keys, values, mask, 0.125)
    assert got.shape == expected.shape == (rows, 1, 9, 64) and got.is_contiguous()
    torch.testing.assert_close(got, expected)


def test_the_models_decode_steps_take_one_token_attention(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What the model passes to its attention (position_ids, use_cache, ...) must not send a decode step back to
    # transformers' path: that would cost nothing in correctness and 3-5x in attention time.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    register_attention()
    model.set_attn_implementation(ATTENTION_NAME)
    calls: list[int] = []

    def counted(*args: Any) -> torch.Tensor:
        calls.append(args[1].shape[0])
        return one_token_attention(*args)

    monkeypatch.setattr(compiled, "one_token_attention", counted)
    with torch.inference_mode():
        model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3, min_new_tokens=3, do_sample=False)
    layers = model.config.num_hidden_layers
    assert len(calls) == 2 * layers, "the prompt's step is transformers'; each of the two decode steps is ours"


@pytest.mark.slow
@pytest.mark.timeout(COMPILE_TIMEOUT_S)
def test_aot_packages_serve_the_compiled_step_without_a_compiler(tiny_model: Path, tmp_path: Path) -> None:
    # A single-row graph (the matvec pass) and a frozen one whose rows (2..3) are symbolic, exported and compiled
    # ahead of time, then loaded and decoded with in a process that finds no C++ compiler (as in the image).
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    pad = int(AutoTokenizer.from_pretrained(tiny_model).pad_token_id)
    build_into(tmp_path, model, aot_decode.BUCKETS, pad, Quantization.none)
    assert warm_marker(tmp_path, aot_decode.BUCKETS, Quantization.none).exists()
    script = Path(aot_decode.__file__)
    eager = subprocess.run(
        [sys.executable, str(script), str(tiny_model), "eager"], capture_output=True, text=True, timeout=300
    )
    assert eager.returncode == 0, eager.stderr
    bare = {name: os.environ[name] for name in ("HOME", "PYTHONPATH") if name in os.environ}
    bare |= {"PATH": str(Path(sys.executable).parent), "CXX": str(tmp_path / "no-compiler")}
    assert shutil.which("g++", path=bare["PATH"]) is None and shutil.which("c++", path=bare["PATH"]) is None
    packaged = subprocess.run(
        [sys.executable, str(script), str(tiny_model), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=bare,
    )
    assert packaged.returncode == 0, packaged.stderr
    assert json.loads(packaged.stdout) == json.loads(eager.stdout)


def test_compile_off_serves_eager_and_says_so(server: RunningServer) -> None:
    # The eager step decodes with the engine's attention as well (one_token_attention), compiled or not.
    assert server.state.engine.loaded.model.config._attn_implementation == ATTENTION_NAME
    with server.client() as client:
        compile_info = client.get("/loadz").json()["compile"]
        card = client.get("/v1/models").json()["data"][0]
    assert compile_info["setting"] == "off" and compile_info["state"] == "off" and compile_info["step"] == "eager"
    assert card["compile"] == "off" and card["step"] == "eager"
    assert server.metric("kubellm_decode_step", step="eager") == 1


def _greedy(client: httpx.Client, prompts: list[str]) -> list[str]:
    """Each prompt's greedy completion, all sent at once so that they share batches of changing size."""

    def one(prompt: str) -> str:
        body = {"model": "tiny", "prompt": prompt, "max_tokens": 24, "temperature": 0, "ignore_eos": True}
        response = client.post("/v1/completions", json=body)
        assert response.status_code == 200, response.text
        text: str = response.json()["choices"][0]["text"]
        return text

    with ThreadPoolExecutor(len(prompts)) as pool:
        return list(pool.map(one, prompts))


@pytest.mark.slow
@pytest.mark.timeout(COMPILE_TIMEOUT_S + 120)
def test_ready_on_eager_then_compiled_with_the_same_greedy_output(tiny_settings: ServerSettings) -> None:
    settings = tiny_settings.model_copy(
        # The eager step shares the CPUs with the compile: on a busy machine a request takes minutes meanwhile.
        update={"compile": CompileMode.auto, "max_batch_size": 4, "dtype": DType.float32, "request_timeout_s": 600}
    )
    with serve(settings) as server, server.client(timeout=120) as client:
        # Ready before anything is compiled: the eager step serves while the compile runs in the background.
        loadz = client.get("/loadz").json()
        assert loadz["phase"] == "ready" and loadz["compile"]["step"] == "eager", loadz
        assert loadz["compile"]["state"] in ("pending", "compiling"), loadz
        assert loadz["compile"]["buckets"] == [1, 4]
        alone = [_greedy(client, [prompt])[0] for prompt in PROMPTS]
        together = _greedy(client, PROMPTS)
        assert together == alone

        def compiled() -> bool:
            state = client.get("/loadz").json()["compile"]
            assert state["state"] != "failed", state
            return state["step"] == "compiled"

        wait_until(compiled, COMPILE_TIMEOUT_S, "the compiled decode step to be built")
        wait_until(lambda: client.get("/loadz").json()["compile"]["state"] == "ready", 120, "every bucket to be built")
        loadz = client.get("/loadz").json()["compile"]
        assert loadz["buckets_done"] == 2 and loadz["seconds"] > 0, loadz
        assert client.get("/v1/models").json()["data"][0]["step"] == "compiled"
        assert server.metric("kubellm_decode_step", step="compiled") == 1
        assert server.metric("kubellm_decode_step", step="eager") == 0
        assert server.metric("kubellm_compile_buckets_done") == 2

        graphs = dict(counters["stats"])
        # 1 row through the single-row graph (matrix-vector reductions), then 3 rows through the one graph for 2-4
        # rows (its rows dimension symbolic, no padding), the cache growing and shrinking.
        assert [_greedy(client, [prompt])[0] for prompt in PROMPTS] == alone
        assert _greedy(client, PROMPTS) == alone
        # Served by the graphs built in the background: nothing was traced or compiled on the serving path.
        assert dict(counters["stats"]) == graphs
