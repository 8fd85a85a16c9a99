"""The engine's sampler (``sample_token``): draws follow softmax(logits / temperature), top-p keeps to the nucleus,
including a nucleus wider than the candidates it looks at first. Seeded generators: the counts are fixed."""

from __future__ import annotations

import torch

from kubellm_inference.engine import NUCLEUS_CANDIDATES, sample_token

DRAWS = 4000


def _counts(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1234)
    counts = torch.zeros(logits.numel())
    for _ in range(DRAWS):
        counts[sample_token(logits, temperature, top_p, generator)] += 1
    return counts


def test_draws_follow_the_tempered_softmax() -> None:
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0]).to(torch.bfloat16)
    for temperature in (0.7, 1.0, 1.5):
        expected = torch.softmax(logits.float() / temperature, dim=0)
        observed = _counts(logits, temperature, 1.0) / DRAWS
        # Binomial standard deviation at 4000 draws is at most 0.008: 0.03 is beyond 3.5 of them.
        assert torch.allclose(observed, expected, atol=0.03), (temperature, observed, expected)


def test_top_p_keeps_to_the_nucleus_renormalized() -> None:
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    # Mass before each token: 0, 0.5, 0.8, 0.95: with top_p 0.7 the nucleus is the first two.
    observed = _counts(logits, 1.0, 0.7) / DRAWS
    assert observed[2:].sum() == 0
    assert abs(float(observed[0]) - 0.5 / 0.8) < 0.03
    # Always at least the most likely token.
    assert _counts(logits, 1.0, 0.01)[0] == DRAWS


def test_a_nucleus_wider_than_the_first_candidates_is_sorted_whole() -> None:
    vocabulary = 4 * NUCLEUS_CANDIDATES
    logits = -torch.arange(vocabulary, dtype=torch.float32) * 1e-3  # nearly flat, strictly decreasing
    probs = torch.softmax(logits, dim=0)
    last_inside = int(((probs.cumsum(dim=0) - probs) <= 0.9).nonzero().max())
    counts = _counts(logits, 1.0, 0.9)
    drawn = counts.nonzero().flatten()
    assert int(drawn.max()) <= last_inside
    assert drawn.numel() > NUCLEUS_CANDIDATES
