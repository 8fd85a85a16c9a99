"""The served precision: which dtype ``auto`` means on this machine, and weight-only int8/int4 quantization.

``dtype: auto`` is bfloat16 where the hardware computes it natively (x86 CPUs with AVX512-BF16 or AMX, CUDA
GPUs that support it) and float32 elsewhere: on a CPU without those instructions bfloat16 matmuls are emulated
and slower than float32. Decoding one token reads every weight once, so halving the bytes is what speeds up
batch-1 decoding on a CPU (issue 16).

Quantization replaces each ``nn.Linear`` of the decoder (and the output head) with a module that keeps its
weight in int8 (one scale per output channel) or int4 (groups of 32 input values with a scale and a zero
point) and multiplies with torch's own CPU kernels (``aten._weight_int8pack_mm``,
``aten._weight_int4pack_mm_for_cpu``, the kernels torchao's CPU layouts call). Activations stay in the served
dtype; the embedding table stays unquantized (a lookup reads one row per token).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from kubellm.contract import DType, Quantization

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

INT4_GROUP_SIZE = 32  # llama.cpp's Q4 block size; a smaller group keeps more precision, a larger one fewer bytes
# aten's int4 CPU kernel packs the weight in tiles: the output and input sizes must be multiples of these.
_INT4_N_MULTIPLE = 64
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


class QuantizationError(ValueError):
    """The configured quantization cannot be applied here; the message says why and what to change."""


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16)."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    if any(getattr(torch.cpu, probe, lambda: False)() for probe in probes):
        return True
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            flags = {word for line in cpuinfo if line.startswith("flags") for word in line.split()}
    except OSError:
        return False
    return any(flag in flags for flag in _CPU_BF16_FLAGS)


def resolve_dtype(setting: DType, device: torch.device) -> torch.dtype:
    """The dtype to load weights in; ``auto`` as described in the module docstring."""
    import torch

    if setting is DType.auto:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return {DType.float32: torch.float32, DType.float16: torch.float16, DType.bfloat16: torch.bfloat16}[setting]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``bfloat16``: the name the settings and the API use."""
    return str(dtype).removeprefix("torch.")


def _classes() -> tuple[type[nn.Module], type[nn.Module]]:
    """The quantized linear modules, defined on first use so that importing this module never imports torch."""
    global _CLASSES
    if _CLASSES is not None:
        return _CLASSES
    import torch
    from torch import nn

    class Int8WeightLinear(nn.Module):
        """y = x W^T + b with W in int8, one float scale per output channel (symmetric)."""

        weight_int8: torch.Tensor
        scales: torch.Tensor
        bias: torch.Tensor | None

        def __init__(self, linear: nn.Linear) -> None:
            super().__init__()
            weight = linear.weight.detach().float()
            scales = (weight.abs().amax(dim=1) / 127.0).clamp(min=1e-8)
            self.in_features, self.out_features = linear.in_features, linear.out_features
            self.register_buffer("weight_int8", torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8))
            self.register_buffer("scales", scales.to(linear.weight.dtype))
            self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            shape = x.shape
            out = torch._weight_int8pack_mm(x.reshape(-1, shape[-1]).contiguous(), self.weight_int8, self.scales)
            out = out.reshape(*shape[:-1], self.out_features)
            return out if self.bias is None else out + self.bias

    class Int4WeightLinear(nn.Module):
        """y = x W^T + b with W in int4, groups of ``INT4_GROUP_SIZE`` input values sharing a scale and a zero
        point (asymmetric, like llama.cpp's Q4_1); the kernel computes in bfloat16."""

        weight_int4: torch.Tensor
        scales_and_zeros: torch.Tensor
        bias: torch.Tensor | None

        def __init__(self, linear: nn.Linear) -> None:
            super().__init__()
            weight = linear.weight.detach().float()
            n, k = weight.shape
            groups = weight.reshape(n, k // INT4_GROUP_SIZE, INT4_GROUP_SIZE)
            low, high = groups.amin(dim=-1), groups.amax(dim=-1)
            scales = ((high - low) / 15.0).clamp(min=1e-8)
            codes = torch.round((groups - low[..., None]) / scales[..., None]).clamp(0, 15).to(torch.int32)
            self.in_features, self.out_features = k, n
            self.register_buffer("weight_int4", torch._convert_weight_to_int4pack_for_cpu(codes.reshape(n, k), 1))
            # The kernel dequantizes (code - 8) * scale + zero, so zero is the value that code 8 stands for.
            zeros = low + 8 * scales
            packed = torch.stack([scales.t(), zeros.t()], dim=-1).to(torch.bfloat16).contiguous()
            self.register_buffer("scales_and_zeros", packed)
            self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            shape = x.shape
            flat = x.reshape(-1, shape[-1]).to(torch.bfloat16).contiguous()  # the kernel needs a dense A
            out = torch._weight_int4pack_mm_for_cpu(flat, self.weight_int4, INT4_GROUP_SIZE, self.scales_and_zeros)
            out = out.reshape(*shape[:-1], self.out_features).to(x.dtype)
            return out if self.bias is None else out + self.bias

    _CLASSES = (Int8WeightLinear, Int4WeightLinear)
    return _CLASSES


_CLASSES: tuple[type[nn.Module], type[nn.Module]] | None = None


def quantize(model: nn.Module, setting: Quantization, device: torch.device) -> int:
    """Replace the model's linear layers by weight-only quantized ones, in place; returns how many were replaced.
    Raises QuantizationError where the kernels do not exist (only CPU kernels are wired up)."""
    from torch import nn

    if setting is Quantization.none:
        return 0
    if device.type != "cpu":
        raise QuantizationError(
            f"quantization: {setting.value} runs on CPU only (torch's int8/int4 weight-only CPU kernels); "
            f"on {device.type} use quantization: none with dtype float16 or bfloat16"
        )
    int8_cls, int4_cls = _classes()
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear:
                continue
            n, k = child.weight.shape
            if setting is Quantization.int4 and (k % INT4_GROUP_SIZE or n % _INT4_N_MULTIPLE):
                log.info("kept %s (%dx%d) unquantized: int4 needs multiples of %d/%d", name, n, k, 64, 32)
                continue
            setattr(parent, name, int8_cls(child) if setting is Quantization.int8 else int4_cls(child))
            replaced += 1
    if replaced == 0:
        raise QuantizationError(f"quantization: {setting.value} found no linear layer it can quantize")
    return replaced


def pack_linears(model: nn.Module, device: torch.device, dtype: torch.dtype) -> str | None:
    """For the eager step that serves for good (no compiled step): each ``nn.Linear`` replaced, in place, by one
    that calls oneDNN on its weight reordered once for it, what Inductor's freezing does inside a compiled graph,
    without a compiler. Measured on SmolLM2 bf16 (2-core AVX512-BF16 VM): 1.24-1.38x faster decode steps, the same
    greedy tokens. A tied output head gets its own packed copy (the embedding keeps the original). Returns why it
    was not done, or None."""
    import torch
    from torch import nn

    if device.type != "cpu":
        return f"not on {device.type}"
    if dtype not in (torch.bfloat16, torch.float32):
        return f"not for {dtype_name(dtype)}"
    if not torch.backends.mkldnn.is_available():
        return "torch has no oneDNN here"
    if dtype == torch.bfloat16 and not cpu_has_native_bf16():
        return "this CPU has no native bfloat16 (oneDNN would emulate it)"
    packed_cls = _packed_class()
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and child.weight.dtype == dtype:
                setattr(parent, name, packed_cls(child))
                replaced += 1
    return None if replaced else "no linear layer to pack"


def _packed_class() -> type[nn.Module]:
    global _PACKED
    if _PACKED is not None:
        return _PACKED
    import torch
    from torch import nn

    class PackedLinear(nn.Module):
        """y = x W^T + b on a weight reordered once for oneDNN (``mkldnn._reorder_linear_weight``; the batch-size
        hint 1 is the decode step's shape, the one that reads every weight per token)."""

        packed: torch.Tensor
        bias: torch.Tensor | None

        def __init__(self, linear: nn.Linear) -> None:
            super().__init__()
            self.in_features, self.out_features = linear.in_features, linear.out_features
            self.register_buffer("packed", torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1))
            self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            flat = x.reshape(-1, x.shape[-1])
            out = torch.ops.mkldnn._linear_pointwise(flat, self.packed, self.bias, "none", [], "")
            return out.reshape(*x.shape[:-1], self.out_features)

    _PACKED = PackedLinear
    return _PACKED


_PACKED: type[nn.Module] | None = None


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the parameters and buffers one decoding step reads, i.e. the numerator of the memory-bandwidth
    floor: everything except an embedding table (a lookup reads one row), unless the output head shares it."""
    from torch import nn

    read_by_linear = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    skip = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding) and id(m.weight) not in read_by_linear}
    total = 0
    seen: set[int] = set()
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) in seen or id(tensor) in skip:
            continue
        seen.add(id(tensor))
        total += tensor.numel() * tensor.element_size()
    return total
