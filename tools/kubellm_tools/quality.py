"""The quantized paths' quality check: texts, and the tolerances stated against bfloat16 on them (measured values
in docs/inference.md, "Quantization"). Shared by the precision test and ``bench/compiled_step.py --quality``; and
how two greedy decodes compare, for the bench scripts that run one step against another."""

from __future__ import annotations

from collections.abc import Sequence

from kubellm.contract import Quantization

TEXTS = [
    "The capital of France is Paris, a city on the river Seine known for its museums and cafés.",
    "Water boils at one hundred degrees Celsius at sea level, and it freezes at zero degrees.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "Photosynthesis is the process by which green plants turn light, water and carbon dioxide into sugar.",
    "The largest planet in the solar system is Jupiter, a gas giant with a great red storm.",
    "Kubernetes schedules containers onto nodes and restarts them when they fail.",
]
# The share of positions where the quantized model's most likely next token is bfloat16's, and the increase of the
# mean negative log-likelihood of the texts, in nats per token.
MIN_TOP1_AGREEMENT = {Quantization.int8: 0.95, Quantization.int4: 0.80}
MAX_NLL_INCREASE = {Quantization.int8: 0.03, Quantization.int4: 0.05}


def greedy_agreement(first: Sequence[object], second: Sequence[object]) -> str:
    """'identical', or from which step on two greedy decodes' tokens (one entry per step) part."""
    if list(first) == list(second):
        return "identical"
    step = next(
        (i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b), min(len(first), len(second))
    )
    return f"DIFFER from step {step} of {len(first)}"
