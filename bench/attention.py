"""Attention of one decode step per layer: transformers' SDPA attention against the engine's
``one_token_attention``, interleaved in one process, on the embedded SmolLM2's head layout (bf16).

Rows 1 and 8, 100 and 400 cached tokens (views of a cache with room to grow, as the engine's), with no mask (what a
single row or rows of one length get) and with a padding mask (rows of different lengths). Prints the median
microseconds per layer call of each, their ratio, and the largest difference between their outputs.

    PYTHONPATH=$PWD:$PWD/inference:$PWD/tools python bench/attention.py --rounds 7
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial
from types import SimpleNamespace
from typing import Any

import torch
from transformers import AutoConfig
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from kubellm.contract import ServerSettings
from kubellm_inference.compiled import one_token_attention
from kubellm_inference.loading import converted_embedded_folder

CALLS = 300


def first(attend: Callable[..., tuple[torch.Tensor, Any]], *args: Any, **kwargs: Any) -> torch.Tensor:
    return attend(*args, **kwargs)[0]


def per_call_us(attend: Callable[[], torch.Tensor]) -> float:
    started = time.perf_counter()
    for _ in range(CALLS):
        attend()
    return (time.perf_counter() - started) / CALLS * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    config: Any = AutoConfig.from_pretrained(converted_embedded_folder(ServerSettings().cache_dir))
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    dim = config.hidden_size // heads
    module = SimpleNamespace(num_key_value_groups=heads // kv_heads, is_causal=True)
    scaling = dim**-0.5
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; {heads} query heads, {kv_heads} key/value")
    print(f"heads, head dim {dim}; bf16; {CALLS} calls a round, median of {args.rounds} rounds")
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for rows, cached, masked in ((1, 100, False), (1, 400, False), (8, 100, False), (8, 100, True), (8, 400, True)):
            buffers = torch.randn((2, rows, kv_heads, cached + 64, dim), generator=generator, dtype=torch.bfloat16)
            keys, values = buffers[0, :, :, :cached], buffers[1, :, :, :cached]
            query = torch.randn((rows, heads, 1, dim), generator=generator, dtype=torch.bfloat16)
            mask = None
            if masked:  # the first row is the shortest: half its columns are padding
                mask = torch.ones((rows, 1, 1, cached), dtype=torch.bool)
                mask[0, ..., : cached // 2] = False
            layer: Any = module
            candidates: dict[str, Callable[[], torch.Tensor]] = {
                "transformers": partial(
                    first, sdpa_attention_forward, layer, query, keys, values, mask, scaling=scaling
                ),
                "one_token": partial(one_token_attention, layer, query, keys, values, mask, scaling),
            }
            times: dict[str, list[float]] = {name: [] for name in candidates}
            for _ in range(args.rounds):
                for name, attend in candidates.items():
                    times[name].append(per_call_us(attend))
            old, new = statistics.median(times["transformers"]), statistics.median(times["one_token"])
            difference = float((candidates["transformers"]().float() - candidates["one_token"]().float()).abs().max())
            print(
                f"rows {rows}, {cached} cached, {'padding mask' if masked else 'no mask'}: transformers {old:.0f} us,"
                f" one_token_attention {new:.0f} us, {old / new:.1f}x; largest difference {difference:.2g}"
            )


if __name__ == "__main__":
    main()
