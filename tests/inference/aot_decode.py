"""Greedy decoding of the tiny model through its eager step or through the AOTInductor packages of its compiled step
(``compiled.build_into``'s folder, loaded as the server does), printed as JSON: run as a process by
test_compiled.py, the packages in one that finds no C++ compiler.

    python aot_decode.py MODEL_FOLDER eager
    python aot_decode.py MODEL_FOLDER PACKAGE_FOLDER
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kubellm.contract import Quantization
from kubellm_inference import compiled
from kubellm_inference.engine import _growing_cache

BUCKETS = (1, 3)
PROMPTS = (["The quick brown fox"], ["Hello", "A longer prompt, left-padded beside the others", "The quick brown fox"])
STEPS = 12


def greedy(model: torch.nn.Module, tokenizer: object, prompts: list[str], step: object) -> list[list[int]]:
    """Prefill the (left-padded) prompts eagerly, then ``STEPS`` greedy steps through ``step``."""
    batch = tokenizer(prompts, return_tensors="pt", padding=True)  # type: ignore[operator]
    mask = batch.attention_mask
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    cache = _growing_cache()
    out = model(input_ids=batch.input_ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
    token = out.logits[:, -1, :].argmax(dim=-1)
    position = positions[:, -1] + 1
    tokens = [token.tolist()]
    for _ in range(STEPS):
        mask = torch.cat([mask, torch.ones((len(prompts), 1), dtype=mask.dtype)], dim=1)
        logits = step(token[:, None], mask, position[:, None], cache)  # type: ignore[operator]
        token = logits.argmax(dim=-1)
        tokens.append(token.tolist())
        position = position + 1
    return tokens


def main(model_folder: str, packages: str) -> None:
    model = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_folder, padding_side="left")
    decoder = compiled.CompiledDecoder(model, BUCKETS, int(tokenizer.pad_token_id), Quantization.none)
    if packages == "eager":

        def step(ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: object) -> torch.Tensor:
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
            logits: torch.Tensor = out.logits[:, -1, :]
            return logits

    else:
        decoder.load(Path(packages))
        step = decoder.forward  # type: ignore[assignment]
    with torch.inference_mode():
        print(json.dumps([greedy(model, tokenizer, prompts, step) for prompts in PROMPTS]))


if __name__ == "__main__":
    main(*sys.argv[1:])
