"""Eager decode and prefill with and without oneDNN-packed linear layers (precision.pack_linears), interleaved in one
process, on the embedded SmolLM2 (or ``--model``): medians, ratios and whether the greedy tokens agree.

    python bench/packed_linears.py --pairs 3 --steps 32 --prompt-tokens 128
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from transformers import DynamicCache

from kubellm.contract import DType, Quantization
from kubellm_inference.loading import converted_embedded_folder, load_model
from kubellm_inference.precision import pack_linears
from kubellm_inference.state import ServerSettings
from kubellm_tools.quality import greedy_agreement


@torch.inference_mode()
def run(model: torch.nn.Module, prompt: torch.Tensor, steps: int) -> tuple[float, list[float], list[int]]:
    """(prefill ms, decode ms per step, greedy tokens) for one prompt."""
    cache = DynamicCache()
    began = time.perf_counter()
    out = model(input_ids=prompt, past_key_values=cache, use_cache=True)
    prefill = (time.perf_counter() - began) * 1000
    token = out.logits[:, -1].argmax(-1, keepdim=True)
    tokens, times = [int(token)], []
    for _ in range(steps):
        began = time.perf_counter()
        out = model(input_ids=token, past_key_values=cache, use_cache=True)
        times.append((time.perf_counter() - began) * 1000)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(int(token))
    return prefill, times, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a model folder (default: the embedded SmolLM2)")
    parser.add_argument("--dtype", default="auto", choices=[d.value for d in DType])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    args = parser.parse_args()

    model_dir = args.model or str(converted_embedded_folder(ServerSettings().cache_dir))
    loaded = load_model(ServerSettings(model=model_dir, dtype=DType(args.dtype), quantization=Quantization.none))
    plain = loaded.model
    packed = copy.deepcopy(plain)
    why_not = pack_linears(packed, loaded.device, loaded.dtype or plain.dtype)
    if why_not is not None:
        raise SystemExit(f"not packed: {why_not}")
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(100, plain.config.vocab_size - 100, (1, args.prompt_tokens), generator=generator)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, dtype {plain.dtype}")
    for pair in range(args.pairs):
        figures = {}
        for label, model in (
            (("plain", plain), ("packed", packed)) if pair % 2 == 0 else (("packed", packed), ("plain", plain))
        ):
            figures[label] = run(model, prompt, args.steps)
        (p_pre, p_steps, p_tokens), (k_pre, k_steps, k_tokens) = figures["plain"], figures["packed"]
        p_step, k_step = statistics.median(p_steps), statistics.median(k_steps)
        same = greedy_agreement(p_tokens, k_tokens)
        print(
            f"pair {pair + 1}: prefill {args.prompt_tokens} tokens {p_pre:.0f} vs {k_pre:.0f} ms "
            f"({p_pre / k_pre:.2f}x); decode {p_step:.1f} vs {k_step:.1f} ms/step ({p_step / k_step:.2f}x); "
            f"tokens {same}"
        )


if __name__ == "__main__":
    main()
