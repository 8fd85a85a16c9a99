"""The engine's sampler against the one it replaced, per token, interleaved in one process.

``sample_token`` (inverse CDF over one uniform draw; top-p among the 256 most likely tokens first) against the
previous code (``torch.multinomial``; a full sort for top-p), on the embedded SmolLM2's next-token logits at every
position of the quality texts (one prefill each), at temperature 0.7 with and without top_p 0.9. Prints the median
microseconds per token of each, and how often the nucleus was wider than the candidates looked at first.

    PYTHONPATH=$PWD:$PWD/inference:$PWD/tools python bench/sampling.py --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from kubellm.contract import ServerSettings
from kubellm_inference.engine import NUCLEUS_CANDIDATES, sample_token
from kubellm_inference.loading import converted_embedded_folder, load_model
from kubellm_tools.quality import TEXTS


def previous(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """The sampler before this change (engine.py at 12c3919), kept here as the baseline."""
    row = logits.float() / temperature
    if top_p < 1.0:
        ordered, order = torch.sort(row, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        outside = probs.cumsum(dim=-1) - probs > top_p
        ordered = ordered.masked_fill(outside, float("-inf"))
        row = torch.full_like(row, float("-inf")).scatter(0, order, ordered)
    probs = torch.softmax(row, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())


def per_token_us(sampler: object, positions: list[torch.Tensor], top_p: float) -> float:
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    for logits in positions:
        sampler(logits, 0.7, top_p, generator)  # type: ignore[operator]
    return (time.perf_counter() - started) / len(positions) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    settings = ServerSettings()
    loaded = load_model(settings.model_copy(update={"model": str(converted_embedded_folder(settings.cache_dir))}))
    positions: list[torch.Tensor] = []
    with torch.inference_mode():
        for text in TEXTS:
            ids = loaded.tokenizer(text, return_tensors="pt").input_ids
            positions.extend(loaded.model(input_ids=ids).logits[0])
        tempered = [torch.softmax(row.float() / 0.7, dim=0).sort(descending=True).values for row in positions]
        wide = sum(float(probs[:NUCLEUS_CANDIDATES].sum()) <= 0.9 for probs in tempered)
        print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {len(positions)} positions,")
        print(f"vocabulary {positions[0].numel()}; nucleus (top_p 0.9) wider than {NUCLEUS_CANDIDATES}: {wide}")
        for top_p in (1.0, 0.9):
            times: dict[str, list[float]] = {"previous": [], "sample_token": []}
            for _ in range(args.rounds):
                times["previous"].append(per_token_us(previous, positions, top_p))
                times["sample_token"].append(per_token_us(sample_token, positions, top_p))
            old, new = statistics.median(times["previous"]), statistics.median(times["sample_token"])
            print(f"temperature 0.7, top_p {top_p}: previous {old:.0f} us, sample_token {new:.0f} us, {old / new:.1f}x")


if __name__ == "__main__":
    main()
