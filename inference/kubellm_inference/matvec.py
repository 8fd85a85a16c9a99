"""Matrix-vector products for the compiled single-row decode step: an Inductor graph pass (issue 22).

At one row a linear layer reads every weight once and does two flops per weight read: it is bound by memory
bandwidth, not by arithmetic. On the 2-core dev VM (SmolLM2's 211 linear layers, 269 MB of bf16 weights, each
layer's weights distinct so that none is read from cache), oneDNN's packed bf16 linear (what ``freezing`` gives)
read them in 15.2 ms at one row (17.7 GB/s), aten's unpacked ``mm`` in 20.9 ms; the same products written as a
multiply and a sum over the input dimension, which Inductor turns into one vectorized C++ reduction a layer
(each weight row read once, in order, converted to float32 in registers), in 10.9 ms (24.7 GB/s), against 8.5 ms
for a plain sum over as many bytes. At more rows the reduction does that much more arithmetic per byte: 12.5 ms
at two rows in the same test, 22.5 at four (packed: 17.7, 14.0), and a whole-model graph of two rows through the
pass took 420 ms a step against 17 at one (Inductor's code for it not examined). So the pass applies only to a
graph of one row.

The pass replaces ``mm(x, w.t())`` (and ``addmm`` with a bias) by ``sum(w[:, None, :] * x[None, :, :], -1).t()``
in float32, rounded to the layer's dtype at the end as the matmul's output is. Its ``uuid`` is this file's hash,
so Inductor's FX graph cache keys its entries by this code and keeps them across restarts.
"""

from __future__ import annotations

from typing import Any

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files
from torch._inductor.pattern_matcher import Arg, CallFunction, Match, PatternMatcherPass, register_graph_pattern

MAX_ROWS = 1  # the rows a graph may have for the pass to apply (above)
_DTYPES = (torch.bfloat16, torch.float32)

aten = torch.ops.aten
_patterns = PatternMatcherPass(pass_name="kubellm_matvec")


def _fits(x: torch.fx.Node, w_t: torch.fx.Node) -> bool:
    """A CPU product of at most ``MAX_ROWS`` rows (a static count) in bfloat16 or float32."""
    rows, weight = x.meta.get("val"), w_t.meta.get("val")
    if not isinstance(rows, torch.Tensor) or not isinstance(weight, torch.Tensor):
        return False
    return (
        rows.dim() == 2
        and weight.dim() == 2
        and rows.device.type == "cpu"
        and rows.dtype in _DTYPES
        and weight.dtype == rows.dtype
        and isinstance(rows.shape[0], int)
        and rows.shape[0] <= MAX_ROWS
    )


def _matvec(x: torch.Tensor, w_t: torch.Tensor) -> torch.Tensor:
    """``x @ w_t`` in float32 ([rows, out]); w_t is the weight transposed, so ``w_t.t()`` is the weight as stored."""
    products = w_t.t()[:, None, :].float() * x[None, :, :].float()
    return products.sum(dim=-1).t()


@register_graph_pattern(CallFunction(aten.mm.default, Arg(), Arg()), pass_dict=_patterns)
def _mm(match: Match, x: torch.fx.Node, w_t: torch.fx.Node) -> None:
    if _fits(x, w_t):
        match.replace_by_example(lambda x, w_t: _matvec(x, w_t).to(x.dtype), [x, w_t])


@register_graph_pattern(CallFunction(aten.addmm.default, Arg(), Arg(), Arg()), pass_dict=_patterns)
def _addmm(match: Match, bias: torch.fx.Node, x: torch.fx.Node, w_t: torch.fx.Node) -> None:
    if _fits(x, w_t):
        match.replace_by_example(lambda b, x, w_t: (_matvec(x, w_t) + b.float()).to(x.dtype), [bias, x, w_t])


class MatVecPass(CustomGraphPass):
    """The post-grad pass (``torch._inductor.config.post_grad_custom_pre_pass``)."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        _patterns.apply(graph)

    def uuid(self) -> Any:
        return get_hash_for_files((__file__,))
