"""Eager against compiled decode step, interleaved in one process (issue 22).

Loads a model the way the server does (``load_model``), builds ``CompiledDecoder`` for the batch sizes asked,
then for each batch size runs pairs of (eager, compiled) greedy decodes from the same prefilled prompt and
prints each side's median ms/step, their ratio, whether the greedy tokens agree, and the compile time.
``--layers N`` keeps the first N decoder layers only (same shapes per layer, a fraction of the compile time:
for finding out what a change does before paying for the whole model). ``--profile`` prints the ops of a few
compiled steps; ``--packed-eager`` adds a third step, eager on a copy of the model whose linear layers call
oneDNN on weights packed once (what freezing does inside the graph, without a compile); ``--options`` replaces
the Inductor options (e.g. ``'{"freezing": true, "max_autotune": true}'``). ``--quality`` runs the quantized
paths' quality check (kubellm_tools.quality: top-1 agreement with bfloat16 and the NLL increase on its texts)
through the eager and the compiled decode step, token by token on the texts (teacher-forced), against a bfloat16
model's prefill of them.

``--aot DIR`` adds a third step: AOTInductor packages of the same graphs (``compiled.export_package``; built
into DIR once, reused after), loaded with ``torch._inductor.aoti_load_package``, with their build and load
times; ``--no-jit`` leaves out the JIT-compiled graphs (for a process without a compiler, as in the image).

    python bench/compiled_step.py --batches 1 2 --steps 24 --pairs 3
    python bench/compiled_step.py --quantization int8 --batches 1 --pairs 1 --quality
    python bench/compiled_step.py --batches 1 8 --pairs 2 --aot /tmp/aot
    env -i HOME=$HOME PATH=$PWD/.venv/bin CXX=/nonexistent PYTHONPATH=$PWD/bench:$PWD/tools \
        .venv/bin/python bench/compiled_step.py --batches 1 8 --pairs 2 --aot /tmp/aot --no-jit
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from kubellm.contract import DType, Quantization, ServerSettings
from kubellm_inference import compiled
from kubellm_inference.engine import _growing_cache
from kubellm_inference.loading import converted_embedded_folder, load_model
from kubellm_inference.precision import pack_linears
from kubellm_tools.quality import MAX_NLL_INCREASE, MIN_TOP1_AGREEMENT, TEXTS, greedy_agreement

PROMPT = "The history of the city begins with a small settlement on the river, where traders from the north met"

Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any], torch.Tensor]


def decode(model: Any, tokenizer: Any, step: Step, rows: int, steps: int) -> tuple[list[float], list[list[int]]]:
    """Prefill ``rows`` copies of the prompt eagerly, then ``steps`` greedy decode steps through ``step``."""
    ids = tokenizer([PROMPT] * rows, return_tensors="pt").input_ids
    mask = torch.ones_like(ids)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    cache = _growing_cache()
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True).logits
    token = logits[:, -1, :].float().argmax(dim=-1)
    position = positions[:, -1] + 1
    times: list[float] = []
    tokens: list[list[int]] = [token.tolist()]
    for _ in range(steps):
        mask = torch.cat([mask, torch.ones((rows, 1), dtype=mask.dtype)], dim=1)
        started = time.perf_counter()
        logits = step(token[:, None], mask, position[:, None], cache)
        token = logits.float().argmax(dim=-1)
        times.append((time.perf_counter() - started) * 1000)
        tokens.append(token.tolist())
        position = position + 1
    return times, tokens


def _eager(model: Any) -> Step:
    def eager(ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> torch.Tensor:
        out = model(
            input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1
        )
        logits: torch.Tensor = out.logits[:, -1, :]
        return logits

    return eager


def _packed_copy(model: Any, dtype: torch.dtype) -> Any:
    """A copy of the model whose linear layers run on oneDNN-packed weights, as the server's eager step does."""
    import copy

    packed = copy.deepcopy(model)
    why_not = pack_linears(packed, torch.device("cpu"), dtype)
    if why_not is not None:
        raise SystemExit(f"--packed-eager: not packed: {why_not}")
    return packed


def teacher_forced(model: Any, step: Step, ids: torch.Tensor) -> torch.Tensor:
    """The next-token logits at every position of ``ids`` (one row) but the last: its first token prefilled
    eagerly, then one decode step through ``step`` per token of the text."""
    cache = _growing_cache()
    mask = torch.ones((1, 1), dtype=torch.long)
    first = model(
        input_ids=ids[:, :1], attention_mask=mask, position_ids=torch.zeros_like(mask), cache=cache, use_cache=True
    )
    logits = [first.logits[:, -1, :].float()]
    for index in range(1, ids.shape[1] - 1):
        mask = torch.cat([mask, torch.ones((1, 1), dtype=mask.dtype)], dim=1)
        logits.append(step(ids[:, index : index + 1], mask, torch.tensor([[index]]), cache).float())
    return torch.cat(logits)


def quality(settings: ServerSettings, model: Any, tokenizer: Any, steps: dict[str, Step]) -> None:
    """Each step's top-1 agreement with bfloat16 and NLL increase over the quality texts, and the stated bounds."""
    reference = load_model(settings.model_copy(update={"quantization": Quantization.none, "dtype": DType.bfloat16}))
    texts = [tokenizer(text, return_tensors="pt").input_ids for text in TEXTS]
    truth = [reference.model(input_ids=ids).logits[0, :-1].float() for ids in texts]
    positions = sum(ids.shape[1] - 1 for ids in texts)
    reference_nll = sum(
        torch.nn.functional.cross_entropy(r, ids[0, 1:], reduction="sum") for r, ids in zip(truth, texts, strict=True)
    )
    bound = Quantization(settings.quantization)
    for name, step in steps.items():
        agree, nll = 0, 0.0
        for ids, expected in zip(texts, truth, strict=True):
            got = teacher_forced(model, step, ids)
            agree += int((got.argmax(dim=-1) == expected.argmax(dim=-1)).sum())
            nll += float(torch.nn.functional.cross_entropy(got, ids[0, 1:], reduction="sum"))
        increase = (nll - float(reference_nll)) / positions
        limits = (
            f" (bounds: >= {MIN_TOP1_AGREEMENT[bound]}, <= {MAX_NLL_INCREASE[bound]})"
            if bound in MIN_TOP1_AGREEMENT
            else ""
        )
        print(
            f"quality, {name} step: top-1 agreement with bfloat16 {agree / positions:.4f} over {positions} positions, "
            f"NLL increase {increase:+.4f} nats/token{limits}",
            flush=True,
        )


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _aot_decoder(
    model: Any, buckets: Sequence[int], pad_token_id: int, quantization: Quantization, folder: Path
) -> compiled.CompiledDecoder:
    """A decoder serving the AOTInductor packages of ``buckets``, as the server loads them; built into ``folder``
    unless already there."""
    folder.mkdir(parents=True, exist_ok=True)
    for size in buckets:
        path = compiled.package_path(folder, size)
        if not path.exists():
            started = time.monotonic()
            compiled.export_package(model, size, buckets, pad_token_id, quantization, path)
            print(f"aot bucket {size}: built in {time.monotonic() - started:.1f} s, {path.stat().st_size / 1e6:.0f} MB")
    decoder = compiled.CompiledDecoder(model, buckets, pad_token_id, quantization)
    decoder.load(
        folder,
        lambda size, seconds: print(
            f"aot bucket {size}: loaded in {seconds:.2f} s; resident memory {_rss_mb():.0f} MB"
        ),
    )
    return decoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a model folder (default: the embedded SmolLM2)")
    parser.add_argument("--dtype", default="bfloat16", choices=[d.value for d in DType])
    parser.add_argument("--quantization", default="none", choices=[q.value for q in Quantization])
    parser.add_argument("--layers", type=int, default=0, help="keep the first N decoder layers (0: all)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--options", default=None, help="JSON: Inductor options replacing compiled.py's")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--packed-eager", action="store_true", help="also an eager step on oneDNN-packed linears")
    parser.add_argument("--skip-guards", action="store_true", help="measure with Dynamo's guard check skipped")
    parser.add_argument("--buckets", type=int, nargs="*", help="the graphs to build (default: the server's)")
    parser.add_argument("--quality", action="store_true", help="the quality check through both steps (above)")
    parser.add_argument("--aot", type=Path, default=None, help="also AOTInductor packages, kept in this folder")
    parser.add_argument("--no-jit", action="store_true", help="without the JIT-compiled graphs (needs --aot)")
    args = parser.parse_args()
    if args.no_jit and args.aot is None:
        parser.error("--no-jit needs --aot")

    model_dir = args.model or str(converted_embedded_folder(ServerSettings().cache_dir))
    settings = ServerSettings(model=model_dir, dtype=DType(args.dtype), quantization=Quantization(args.quantization))
    loaded = load_model(settings)
    model, tokenizer = loaded.model, loaded.tokenizer
    if args.layers:
        model.model.layers = model.model.layers[: args.layers]
        model.config.num_hidden_layers = args.layers
    if args.options is not None:
        compiled._INDUCTOR_OPTIONS.clear()
        compiled._INDUCTOR_OPTIONS.update(json.loads(args.options))
    packed = _packed_copy(model, loaded.dtype or model.dtype) if args.packed_eager else None
    compiled.register_attention()
    model.set_attn_implementation(compiled.ATTENTION_NAME)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, options {compiled._INDUCTOR_OPTIONS}")

    buckets = args.buckets or compiled.batch_buckets(max(args.batches), loaded.quantization)
    decoder = compiled.CompiledDecoder(model, buckets, loaded.pad_token_id, loaded.quantization)
    print(f"resident memory before the compile: {_rss_mb():.0f} MB")
    from torch._dynamo.utils import counters

    if not args.no_jit:
        started = time.monotonic()
        decoder.build(lambda size, seconds: print(f"bucket {size}: built in {seconds:.1f} s", flush=True))
        print(f"compile: {time.monotonic() - started:.1f} s; resident memory after it: {_rss_mb():.0f} MB")
        print("aot_autograd counters:", dict(counters["aot_autograd"]))
        print("inductor counters:", {k: v for k, v in counters["inductor"].items() if "mkldnn" not in k})
    aot = _aot_decoder(model, buckets, loaded.pad_token_id, loaded.quantization, args.aot) if args.aot else None

    eager = _eager(model)
    if args.skip_guards:
        # Unsafe in general (a changed input would run the wrong graph); here to size what the check costs.
        torch.compiler.set_stance("default", skip_guard_eval_unsafe=True)

    with torch.inference_mode():
        if args.quality:
            quality(settings, model, tokenizer, {"eager": eager, "compiled": decoder.forward})
        for rows in args.batches:
            for pair in range(args.pairs):
                eager_times, eager_tokens = decode(model, tokenizer, eager, rows, args.steps)
                e = statistics.median(eager_times)
                line = f"batch {rows} pair {pair}: eager {e:.1f} ms/step"
                if not args.no_jit:
                    compiled_times, compiled_tokens = decode(model, tokenizer, decoder.forward, rows, args.steps)
                    c = statistics.median(compiled_times)
                    line += (
                        f", compiled {c:.1f} ms/step, {e / c:.2f}x, {greedy_agreement(eager_tokens, compiled_tokens)}"
                    )
                if aot is not None:
                    aot_times, aot_tokens = decode(model, tokenizer, aot.forward, rows, args.steps)
                    a = statistics.median(aot_times)
                    line += f"; aot {a:.1f} ms/step, {e / a:.2f}x, {greedy_agreement(eager_tokens, aot_tokens)}"
                if packed is not None:
                    packed_times, packed_tokens = decode(packed, tokenizer, _eager(packed), rows, args.steps)
                    p = statistics.median(packed_times)
                    same = greedy_agreement(eager_tokens, packed_tokens)
                    line += f"; packed eager {p:.1f} ms/step, {e / p:.2f}x, {same}"
                print(line, flush=True)
        print("graphs compiled in all:", dict(counters["stats"]))
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                decode(
                    model, tokenizer, (aot if aot is not None and args.no_jit else decoder).forward, args.batches[0], 10
                )
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))


if __name__ == "__main__":
    main()
