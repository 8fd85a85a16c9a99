"""The engine's KV cache layer, which writes each step in place into buffers with room to grow: it must hold
exactly what transformers' concatenating DynamicLayer holds, across reallocations and row changes."""

from __future__ import annotations

import torch

from kubellm_inference.engine import _GROWTH, _growing_cache, _layers


def test_growing_cache_holds_what_concatenation_holds() -> None:
    generator = torch.Generator().manual_seed(0)

    def states(rows: int, length: int) -> torch.Tensor:
        return torch.randn(rows, 3, length, 8, generator=generator)

    cache = _growing_cache()
    prompt_keys, prompt_values = states(2, 5), states(2, 5)
    cache.update(prompt_keys, prompt_values, 0)
    (layer,) = _layers(cache)
    expected_keys, expected_values = prompt_keys, prompt_values
    buffers = set()
    # Enough single-token steps to outgrow the first buffer at least twice.
    for _ in range(3 * _GROWTH):
        step_keys, step_values = states(2, 1), states(2, 1)
        keys, values = cache.update(step_keys, step_values, 0)
        expected_keys = torch.cat([expected_keys, step_keys], dim=-2)
        expected_values = torch.cat([expected_values, step_values], dim=-2)
        assert torch.equal(keys, expected_keys) and torch.equal(values, expected_values)
        buffers.add(keys.untyped_storage().data_ptr())
    assert 3 <= len(buffers) <= 6, f"the buffer was reallocated {len(buffers) - 1} times"
    assert cache.get_seq_length(0) == 5 + 3 * _GROWTH

    # Rows dropped (as the engine's _select does): the next step lands after the kept rows' states.
    layer.assign(expected_keys[1:], expected_values[1:])
    step_keys, step_values = states(1, 1), states(1, 1)
    keys, values = cache.update(step_keys, step_values, 0)
    assert torch.equal(keys, torch.cat([expected_keys[1:], step_keys], dim=-2))
    assert torch.equal(values, torch.cat([expected_values[1:], step_values], dim=-2))
