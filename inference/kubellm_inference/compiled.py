"""The compiled decode step (issue 22): one Inductor graph per batch-size bucket, built off the serving path.

A decoding step of a small model on a CPU is dominated by per-op overhead and by matmuls on weights that aten
does not pre-pack (issue 16's profile: 75-78 % in ``aten::mm``, the rest hundreds of small ops). Inductor with
``freezing`` folds the weights into the graph as constants, packs them for oneDNN and fuses the glue
(RMSNorm, RoPE, SiLU, residual adds) into a few C++ kernels.

What is compiled is the whole decoder for one new token per row **except attention over the KV cache**: the
attention function the model calls is, inside the compiled graph, the opaque custom op
``kubellm::decode_attention``, which at run time writes the new keys and values into the engine's own cache
(the growing, in-place cache of ``engine.py``) and runs the same SDPA call with the same mask the eager step
runs. So the graph's shapes depend only on the number of rows, never on the context length. A graph serves
a range of rows: its rows dimension is symbolic (Dynamo's ``mark_dynamic``, traced size-obliviously so that 1
row is not a special case): rows join and leave, caches grow, and nothing recompiles or pads. An unquantized
model gets a graph of its own for a single row, whose linear layers are matrix-vector reductions
(``matvec``), beside the packed graph for more rows. Prefill stays eager.

The graphs ("buckets", each named by the most rows it serves) are built after the server is Ready on the eager
step, by a child process, into ``<cache dir>/compiled/<key>`` (keyed by model, dtype, quantization, torch version
and CPU flags, so a restart on the same volume finds them). For an unquantized model each bucket is an
AOTInductor package (``export_package``: the same step and Inductor options, exported and compiled ahead of
time) that the server loads in about a second and that runs its graph from C++, without Dynamo's guards or the
Python around the kernels; the single-row package holds no weights and runs on the model's own. A quantized
model's buckets are compiled again in the serving process from Inductor's warm cache (``CompiledDecoder.build``;
each bucket's step function has a code object of its own, so a graph in use is never the one being compiled).
Either way a bucket serves its rows from the moment it is loaded.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubellm.contract import CompileMode, Quantization

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import DynamicCache

log = logging.getLogger(__name__)

ATTENTION_NAME = "kubellm"  # the attention implementation the engine sets on the model (eager: plain SDPA)
# Inductor options, also set globally while tracing (see build): freezing is what packs the weights for oneDNN,
# the bulk of the gain. max-autotune's C++ GEMM template (with weight_prepack off, so that the graph can be
# cached) measured slower than the packed oneDNN linears on SmolLM2 bf16 (batch 1: 35-41 against 25-29 ms).
_INDUCTOR_OPTIONS: dict[str, Any] = {"freezing": True}
_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_vnni", "avx_vnni")


class Step(enum.StrEnum):
    """Which decode step serves."""

    eager = "eager"
    compiled = "compiled"


class CompileState(enum.StrEnum):
    off = "off"  # compile: off, or auto decided against it
    pending = "pending"  # wanted, waiting for the server to be Ready
    compiling = "compiling"  # a child process compiles into the cache (skipped when the cache is warm)
    loading = "loading"  # this process loads the graphs from the warm cache
    ready = "ready"  # the compiled step serves
    failed = "failed"  # the eager step keeps serving


def batch_buckets(max_batch_size: int, quantization: Quantization = Quantization.none) -> tuple[int, ...]:
    """The graphs to build, by the most rows each serves. Unquantized: a single-row graph whose linears are
    matrix-vector reductions (``matvec``: 1.4x the packed oneDNN linears' speed at one row, and cacheable, as
    it freezes nothing), and one for 2 to ``max_batch_size`` rows on packed weights. Quantized: one graph for 1
    to ``max_batch_size`` rows (their matmuls are not ``mm``s the pass rewrites). One symbolic graph was measured
    on SmolLM2 bf16 as fast per step as one static graph per power of two (1, 2, 4, 8, ...), at a quarter of
    the compile and load time for a max batch of 8, with no padding rows (issue 22, docs/benchmarks.md)."""
    from kubellm_inference.matvec import MAX_ROWS

    top = max(1, max_batch_size)
    if quantization is Quantization.none and top > MAX_ROWS:
        return (MAX_ROWS, top)
    return (top,)


def inductor_options(size: int, quantization: Quantization = Quantization.none) -> dict[str, Any]:
    """The Inductor options of the graph for at most ``size`` rows."""
    from kubellm_inference.matvec import MAX_ROWS, MatVecPass

    if quantization is Quantization.none and size <= MAX_ROWS:
        # No freezing: the reductions read the weights as they are, and a graph without packed constants is one
        # that Inductor's FX graph cache and AOTAutograd's cache keep (a restart loads it instead of compiling).
        return {"freezing": False, "post_grad_custom_pre_pass": MatVecPass()}
    return dict(_INDUCTOR_OPTIONS)


def bucket_for(rows: int, buckets: Sequence[int]) -> int:
    """The bucket (graph) that serves ``rows`` rows."""
    for size in buckets:
        if size >= rows:
            return size
    raise ValueError(f"{rows} rows exceed the largest bucket {buckets[-1]}")


def missing_toolchain() -> str | None:
    """What Inductor's C++ backend lacks here, if anything. It needs a compiler and torch's headers even to load
    graphs from a warm cache (measured: a warm cache with CXX pointing nowhere fails with InvalidCxxCompiler), and
    the inference image ships neither."""
    import torch

    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler ({compiler})"
    if not (Path(torch.__file__).parent / "include" / "torch").is_dir():
        return "torch's C++ headers are not installed"
    return None


def decide(
    setting: CompileMode,
    device: torch.device,
    dtype: torch.dtype,
    quantization: Quantization,
    missing: str | None = None,
) -> tuple[bool, str]:
    """Whether to build the compiled step, and why (logged and shown in /loadz); ``missing`` is what
    ``missing_toolchain()`` found lacking."""
    import torch

    if setting is CompileMode.off:
        return False, "compile: off"
    if missing is not None:
        return False, f"compile: auto is off here: {missing}, which Inductor needs"
    if device.type != "cpu":
        # On a GPU the eager step is not per-op bound the same way, and CUDA graphs would be the tool; unmeasured.
        return False, f"compile: auto is off on {device.type} (measured on CPU only)"
    if dtype not in (torch.bfloat16, torch.float32):
        return False, f"compile: auto is off for {dtype} on CPU (bfloat16 and float32 only)"
    # int8 and int4 too: their greedy tokens part from the eager quantized step's after 10-15 steps on SmolLM2 (Inductor
    # rounds the quantized matmuls differently), but the quality check run through the compiled step passes with the
    # eager step's margins (`bench/compiled_step.py --quality`: top-1 agreement with bfloat16 0.984 for int8, 0.902
    # for int4, bounds 0.95 and 0.80), and the step is 1.75-1.8x (int8) and 1.2-1.55x (int4) faster than eager.
    return True, f"compile: auto, on for CPU {str(dtype).removeprefix('torch.')} (quantization {quantization.value})"


def cpu_flags() -> tuple[str, ...]:
    """The CPU flags that change the code Inductor generates (part of the cache key)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            flags = {word for line in cpuinfo if line.startswith("flags") for word in line.split()}
    except OSError:
        flags = set()
    return tuple(flag for flag in _CPU_FLAGS if flag in flags)


def cache_key(model: str, dtype: torch.dtype, quantization: Quantization) -> str:
    """A folder name for this model, dtype, quantization, torch version and CPU: compiled code from another of
    them is never looked at (Inductor keys its entries by graph too; this keeps unrelated entries apart and lets
    an operator delete one model's)."""
    import torch

    parts = [model, str(dtype), quantization.value, torch.__version__, ",".join(cpu_flags())]
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    readable = "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(model.rstrip("/")).name)[:40]
    return f"{readable}-{digest}"


def use_cache_dir(root: Path, key: str, prebuilt: Path | None = None) -> Path:
    """Point Inductor's on-disk caches at ``root/key`` before anything compiles, seeded from ``prebuilt/key``
    (the image's, compiled at build time) when the volume has none yet: Inductor writes into its cache (locks,
    new entries), so a read-only copy cannot serve as one. Returns the folder."""
    folder = root / key
    seed = prebuilt / key if prebuilt is not None else None
    if not folder.is_dir() and seed is not None and seed.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root, prefix=".seed-") as scratch:
            staging = Path(scratch) / key
            shutil.copytree(seed, staging, symlinks=True)
            # Another replica on the same volume may have won the race; its copy is as good.
            with contextlib.suppress(OSError):
                os.rename(staging, folder)
        log.info("seeded the compile cache %s from %s", folder, seed)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    return folder


@dataclass
class _Context:
    """What the attention op needs at run time; set by the thread that runs a step."""

    cache: DynamicCache
    mask: torch.Tensor | None  # the 4-D mask the eager step would use (None: attend to everything)
    modules: Sequence[nn.Module]  # the attention modules, by layer index


_local = threading.local()


def _current() -> _Context:
    context: _Context | None = getattr(_local, "context", None)
    if context is None:
        raise RuntimeError("kubellm::decode_attention ran outside a compiled decode step")
    return context


def one_token_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float | None,
) -> torch.Tensor:
    """Attention of one new token per row (``query`` [rows, heads, 1, dim]) over the cache, as
    ``[rows, 1, heads, dim]``: the query heads that share a key/value head become that head's query rows, so SDPA
    runs on the cache's own heads with neither ``repeat_kv`` copies nor ``enable_gqa``.

    transformers packs the heads this way only when a mask is given; with none (one row, or rows of one length) it
    passes ``enable_gqa=True``, which CPU SDPA runs 3-5x slower on SmolLM2's shapes (one row, 100 cached tokens:
    69 against 22 us a layer; 8 rows: 452 against 105; ``bench/attention.py``, quiet dev VM)."""
    import torch

    rows, heads, _, dim = query.shape
    groups = int(getattr(module, "num_key_value_groups", 1))
    packed = query.reshape(rows, heads // groups, groups, dim)
    # A mask for one query position is [rows, 1, 1, keys]: the same for every head, so it broadcasts as it is.
    out = torch.nn.functional.scaled_dot_product_attention(packed, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(rows, heads, 1, dim).transpose(1, 2).contiguous()


def _decode_attention_impl(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> torch.Tensor:
    context = _current()
    keys, values = context.cache.update(key, value, layer_idx)
    module = context.modules[layer_idx]
    return one_token_attention(module, query, keys, values, context.mask, getattr(module, "scaling", None))


def _decode_attention_fake(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> torch.Tensor:
    return query.new_empty((query.shape[0], query.shape[2], query.shape[1], query.shape[3]))


def _one_token(query: torch.Tensor, mask: torch.Tensor | None, dropout: float, options: dict[str, Any]) -> bool:
    """Whether ``one_token_attention`` computes what transformers' SDPA attention would for these arguments: one
    query position, a mask shared by the heads, and none of the options it alone handles."""
    shared_mask = mask is None or mask.shape[1] == 1
    plain = not dropout and all(options.get(name) is None for name in ("softcap", "position_bias", "is_causal"))
    return query.shape[2] == 1 and shared_mask and plain


_registered = False
_register_lock = threading.Lock()


def register_attention() -> None:
    """Register the op and the ``kubellm`` attention implementation (eager: transformers' SDPA, unchanged;
    while Dynamo traces: the op). Idempotent."""
    global _registered
    with _register_lock:
        if _registered:
            return
        import torch
        from transformers import AttentionInterface
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        # The schema is spelled out: this module's annotations are strings (postponed), which infer_schema refuses.
        op = torch.library.custom_op(
            "kubellm::decode_attention",
            mutates_args=(),
            schema="(Tensor query, Tensor key, Tensor value, int layer_idx) -> Tensor",
        )(_decode_attention_impl)
        op.register_fake(_decode_attention_fake)

        def attention(
            module: nn.Module,
            query: torch.Tensor,
            key: torch.Tensor,
            value: torch.Tensor,
            attention_mask: torch.Tensor | None,
            dropout: float = 0.0,
            scaling: float | None = None,
            **kwargs: Any,
        ) -> tuple[torch.Tensor, None]:
            # Not is_compiling(): that is a process-wide flag, true for the worker's eager steps as well while
            # the compile thread traces; Dynamo answers is_dynamo_compiling() itself, per trace. torch.export
            # traces in Python (non-strict) and says so with is_exporting(): an AOTInductor package of the step
            # calls the op as the compiled graph does (bench/compiled_step.py --aot).
            if torch.compiler.is_dynamo_compiling() or torch.compiler.is_exporting():
                layer: Any = module.layer_idx
                return torch.ops.kubellm.decode_attention(query, key, value, int(layer)), None
            if _one_token(query, attention_mask, dropout, kwargs):
                return one_token_attention(module, query, key, value, attention_mask, scaling), None
            return sdpa_attention_forward(
                module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
            )

        AttentionInterface.register(ATTENTION_NAME, attention)
        AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
        _registered = True


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The attention modules by layer index (every module with a ``layer_idx`` and a ``q_proj``)."""
    found: dict[int, nn.Module] = {}
    for module in model.modules():
        if hasattr(module, "layer_idx") and hasattr(module, "q_proj"):
            index: Any = module.layer_idx
            found[int(index)] = module
    return [found[i] for i in sorted(found)]


def _step_function(model: nn.Module, size: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The function compiled for the bucket of ``size`` rows: the model's forward for one token per row."""

    def step(input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        output = model(input_ids=input_ids, position_ids=position_ids, use_cache=False, logits_to_keep=1)
        logits: torch.Tensor = output.logits[:, -1, :]
        return logits

    # Dynamo keeps the graphs it compiles on the function's code object, shared by every closure of one def: a
    # code object of each bucket's own keeps a bucket's graph (and its Inductor options) apart from another's, so
    # a built bucket serves while the next one is traced and compiled.
    step.__code__ = step.__code__.replace(co_name=f"decode_step_{size}")
    return step


def lowest_rows(size: int, buckets: Sequence[int]) -> int:
    """The fewest rows the bucket of ``size`` serves: one more than the next smaller bucket's most."""
    smaller = [b for b in buckets if b < size]
    return smaller[-1] + 1 if smaller else 1


def _example_inputs(size: int, pad_token_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """What a bucket's step is traced with: ``size`` rows of the padding token, at position 0."""
    import torch

    ids = torch.full((size, 1), pad_token_id, dtype=torch.long, device=device)
    return ids, torch.zeros_like(ids)


@contextlib.contextmanager
def _throwaway_context(modules: Sequence[nn.Module]) -> Iterator[None]:
    """The attention op's context while a step is traced: a cache of its own, dropped afterwards."""
    from kubellm_inference.engine import _growing_cache

    _local.context = _Context(_growing_cache(), None, modules)
    try:
        yield
    finally:
        _local.context = None


def _weights_inside(options: dict[str, Any]) -> bool:
    """Whether a bucket's package holds its weights: a frozen graph's constants are its packed copies; a graph
    that freezes nothing reads the model's own, left out of the package and handed to it at load."""
    return bool(options["freezing"])


def export_package(
    model: nn.Module, size: int, buckets: Sequence[int], pad_token_id: int, quantization: Quantization, path: Path
) -> Path:
    """An AOTInductor package of the bucket of ``size`` rows at ``path``: the same one-token step and Inductor
    options as ``CompiledDecoder.build``'s graph, exported (``torch.export``, rows symbolic across the bucket) and
    compiled ahead of time. Loading it (``load_package``) needs no compiler and traces nothing, and it calls
    ``kubellm::decode_attention`` like the graph."""
    import torch
    from torch import nn

    step = _step_function(model, size)

    class Step(nn.Module):
        """The step as a module that owns the model: torch.export makes its parameters the program's."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
            return step(input_ids, position_ids)

    register_attention()
    model.set_attn_implementation(ATTENTION_NAME)  # type: ignore[operator]
    ids, positions = _example_inputs(size, pad_token_id, next(model.parameters()).device)
    low = lowest_rows(size, buckets)
    shapes = None
    if size > low:
        rows = torch.export.Dim(f"rows_{low}_{size}", min=low, max=size)
        shapes = ({0: rows}, {0: rows})
    options = inductor_options(size, quantization)
    package_options = {**options, "aot_inductor.package_constants_in_so": _weights_inside(options)}
    # Written under a name of this process's, then renamed: a replica sharing the cache volume that builds the same
    # package meanwhile never has its half-written file loaded by another.
    partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.pt2")
    try:
        with _throwaway_context(attention_modules(model)), torch.no_grad(), torch._inductor.config.patch(options):
            program = torch.export.export(Step(), (ids, positions), dynamic_shapes=shapes)
            torch._inductor.aoti_compile_and_package(
                program, package_path=str(partial), inductor_configs=package_options
            )
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def load_package(
    path: Path, model: nn.Module, options: dict[str, Any]
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The package at ``path`` (built with Inductor ``options``), ready to run; one built without its weights
    gets the model's own tensors, shared rather than copied (``user_managed``)."""
    import torch

    runner = torch._inductor.aoti_load_package(str(path))
    if _weights_inside(options):
        return runner
    # The program's names are the step module's, whose attribute ``model`` is the model; the state dict has the
    # tied output weight under its own name, the buffers the rotary frequencies it leaves out.
    tensors = {**dict(model.named_buffers()), **model.state_dict(keep_vars=True)}
    names = runner.get_constant_fqns()
    missing = sorted(name for name in names if name.removeprefix("model.") not in tensors)
    if missing:
        raise RuntimeError(f"{path} wants tensors the model does not have: {', '.join(missing[:5])}")
    wanted = {name: tensors[name.removeprefix("model.")] for name in names}
    runner.load_constants(wanted, check_full_update=True, user_managed=True)
    return runner


class CompiledDecoder:
    """The compiled decode step of one model: ``build`` compiles every bucket (slow, any thread), ``forward``
    runs one step (the engine's worker thread)."""

    def __init__(
        self,
        model: nn.Module,
        buckets: Sequence[int],
        pad_token_id: int,
        quantization: Quantization = Quantization.none,
    ) -> None:
        import torch

        register_attention()
        self._model = model
        self.buckets = tuple(buckets)
        self._pad = pad_token_id
        self._modules = attention_modules(model)
        if not self._modules:
            raise RuntimeError("the model has no attention modules the compiled step knows (layer_idx, q_proj)")
        config: Any = model.config
        if config._attn_implementation != ATTENTION_NAME:
            model.set_attn_implementation(ATTENTION_NAME)  # type: ignore[operator]
        self._options = {size: inductor_options(size, quantization) for size in self.buckets}
        # dynamic=False: no automatic dynamic shapes; the rows dimension build() marks dynamic stays so.
        self._compiled: dict[int, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
            size: torch.compile(_step_function(model, size), dynamic=False, options=self._options[size])
            for size in self.buckets
        }
        self._built: set[int] = set()
        self._hidden = int(config.hidden_size)
        self._config = config
        self._dtype: torch.dtype = next(model.parameters()).dtype

    def build(self, on_bucket: Callable[[int, float], None] | None = None) -> None:
        """Compile (or load from Inductor's cache) the graph of every bucket, by running it once on a throwaway
        cache; a bucket serves (``serves``) from the moment its graph is built."""
        import torch
        import torch.fx.experimental._config

        device = next(self._model.parameters()).device
        for size in self.buckets:
            started = time.monotonic()
            # Dynamo decides whether parameters become graph constants (what freezing folds and packs) or graph
            # inputs while it traces, from the global Inductor config: torch.compile's options reach Inductor only
            # after the trace, so with them alone the weights stayed inputs, nothing was frozen and every linear
            # layer ran as a plain aten::mm (measured: 211 calls a step, 67 % of it).
            # Size-oblivious: a symbolic size that may be 1 is traced as a general size (no broadcasting assumed),
            # so 1 row runs in the same graph instead of Dynamo specializing (and recompiling) for it.
            # The inputs are made in inference mode, as the engine's are: Dynamo guards on their dispatch keys.
            with (
                torch.inference_mode(),
                torch._inductor.config.patch(self._options[size]),
                torch.fx.experimental._config.patch(backed_size_oblivious=True),  # type: ignore[attr-defined]
            ):
                ids, positions = _example_inputs(size, self._pad, device)
                low = lowest_rows(size, self.buckets)
                if size > low:
                    # Every number of rows above the next smaller bucket, up to this one, in one graph.
                    for tensor in (ids, positions):
                        torch._dynamo.mark_dynamic(tensor, 0, min=low, max=size)
                with _throwaway_context(self._modules):
                    self._compiled[size](ids, positions)
            self._built.add(size)
            if on_bucket is not None:
                on_bucket(size, time.monotonic() - started)

    def load(self, folder: Path, on_bucket: Callable[[int, float], None] | None = None) -> None:
        """Load every bucket's package from ``folder`` (``build_into``'s); a bucket serves from the moment it is
        loaded."""
        for size in self.buckets:
            started = time.monotonic()
            self._compiled[size] = load_package(package_path(folder, size), self._model, self._options[size])
            self._built.add(size)
            if on_bucket is not None:
                on_bucket(size, time.monotonic() - started)

    def serves(self, rows: int) -> bool:
        """Whether the graph for ``rows`` rows is built."""
        return rows <= self.buckets[-1] and bucket_for(rows, self.buckets) in self._built

    def forward(
        self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: DynamicCache
    ) -> torch.Tensor:
        """One decode step of ``input_ids`` [rows, 1]; the same arguments as the eager step, logits [rows, vocab]."""
        import torch
        from transformers.masking_utils import create_causal_mask

        rows = input_ids.shape[0]
        bucket = bucket_for(rows, self.buckets)  # raises past the largest bucket (the engine never batches more)
        # The eager model builds this mask from the same inputs before its layers run; so does this step.
        shape_only = torch.empty((rows, 1, self._hidden), dtype=self._dtype, device=input_ids.device)
        causal = create_causal_mask(
            config=self._config,
            inputs_embeds=shape_only,
            attention_mask=mask,
            cache=cache,
            position_ids=positions,
        )
        _local.context = _Context(cache, causal if isinstance(causal, torch.Tensor) else None, self._modules)
        try:
            logits = self._compiled[bucket](input_ids, positions)
        finally:
            _local.context = None
        return logits[:rows]


# ---- compiling in a child process ------------------------------------------------------------------------------
#
# Dynamo traces in Python, holding the GIL for most of a compile: in the serving process every small op of the
# eager step then waits for the GIL (measured: an eager decode on SmolLM2 made no visible progress for 14 minutes
# while bucket 1 compiled in a thread beside it). So the cold compile runs in a child process, which fills the
# cache folder; the server then loads the graphs from that warm cache (Dynamo's trace again, Inductor's work from
# the cache), a much shorter window; for an unquantized model the child exports AOTInductor packages instead, and
# loading them takes about a second and traces nothing.

WARM_MARKER_PREFIX = "warm-"
# The longest a cold compile may take before it is abandoned (and the eager step keeps serving).
CHILD_TIMEOUT_S = 3600.0
# The child's scheduling niceness: it shares the pod's CPUs with the server it compiles for, whose eager step
# serves meanwhile and comes first (building SmolLM2's packages keeps two cores busy for about 100 s).
CHILD_NICENESS = 10


def warm_marker(folder: Path, buckets: Sequence[int], quantization: Quantization) -> Path:
    """Written by a child that compiled every one of ``buckets`` into ``folder`` (named apart for packages, so
    that a folder an earlier version warmed with Inductor's cache alone is built again)."""
    kind = "packages-" if packaged(quantization) else ""
    return folder / (WARM_MARKER_PREFIX + kind + "-".join(map(str, buckets)))


def packaged(quantization: Quantization) -> bool:
    """Whether the buckets are AOTInductor packages (unquantized models) rather than graphs compiled in the
    serving process from Inductor's cache (quantized ones: their export is not tried yet). A package loads in
    about a second and runs its graph from C++, without Dynamo's guards and the Python wrapper around the
    kernels: on SmolLM2 bf16 11.0-11.4 against 16.0-16.7 ms a step at one row, 20.7-22.6 against 26.6-27.5 at
    eight (docs/benchmarks.md)."""
    return quantization is Quantization.none


def package_path(folder: Path, size: int) -> Path:
    return folder / f"decode-{size}.pt2"


def compile_in_child(
    folder: Path,
    source: str,
    dtype: torch.dtype,
    quantization: Quantization,
    buckets: Sequence[int],
    on_bucket: Callable[[int, float], None],
    should_stop: Callable[[], bool],
    timeout_s: float = CHILD_TIMEOUT_S,
) -> None:
    """Run ``python -m kubellm_inference.compiled`` to compile every bucket into ``folder``; raises RuntimeError
    with the child's last lines when it fails, runs out of time or the server stops."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "kubellm_inference.compiled", "--model", source]
    command += ["--dtype", str(dtype).removeprefix("torch."), "--quantization", quantization.value]
    command += ["--buckets", ",".join(map(str, buckets)), "--cache-folder", str(folder)]
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(folder)}
    deadline = time.monotonic() + timeout_s
    lines: list[str] = []
    with subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as child:
        assert child.stdout is not None

        def watchdog() -> None:
            while child.poll() is None:
                if should_stop() or time.monotonic() > deadline:
                    child.kill()
                    return
                time.sleep(0.5)

        threading.Thread(target=watchdog, name="kubellm-compile-watchdog", daemon=True).start()
        for line in child.stdout:
            lines = [*lines[-19:], line.rstrip()]
            if line.startswith("bucket "):
                _, size, seconds = line.split()
                on_bucket(int(size), float(seconds))
        code = child.wait()
    if code != 0:
        why = "it ran out of time" if time.monotonic() > deadline else f"exit code {code}"
        raise RuntimeError(f"the compile process failed ({why}): " + " | ".join(lines[-5:]))


def child_main(argv: Sequence[str]) -> int:
    """The child process: load the model as the server did, compile every bucket into the cache folder."""
    import argparse

    from kubellm.contract import Device, DType, ServerSettings
    from kubellm_inference.loading import load_model

    parser = argparse.ArgumentParser(prog="python -m kubellm_inference.compiled")
    parser.add_argument("--model", required=True)
    parser.add_argument("--dtype", required=True, choices=[d.value for d in DType])
    parser.add_argument("--quantization", required=True, choices=[q.value for q in Quantization])
    parser.add_argument("--buckets", required=True)
    parser.add_argument("--cache-folder", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.nice(CHILD_NICENESS)  # inherited by the C++ compiler processes Inductor starts
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(args.cache_folder)
    settings = ServerSettings(
        model=args.model, dtype=DType(args.dtype), quantization=Quantization(args.quantization), device=Device.cpu
    )
    buckets = tuple(int(b) for b in args.buckets.split(","))
    loaded = load_model(settings)
    build_into(args.cache_folder, loaded.model, buckets, loaded.pad_token_id, loaded.quantization)
    return 0


def build_into(
    folder: Path, model: nn.Module, buckets: Sequence[int], pad_token_id: int, quantization: Quantization
) -> None:
    """Compile every bucket into ``folder`` (a package each, or Inductor's cache) and mark it warm (prints one
    line per bucket)."""

    def built(size: int, seconds: float) -> None:
        print(f"bucket {size} {seconds:.1f}", flush=True)

    if packaged(quantization):
        for size in buckets:
            started = time.monotonic()
            export_package(model, size, buckets, pad_token_id, quantization, package_path(folder, size))
            built(size, time.monotonic() - started)
    else:
        CompiledDecoder(model, buckets, pad_token_id, quantization).build(built)
    warm_marker(folder, buckets, quantization).write_text(f"compiled by torch {_torch_version()}\n")


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


if __name__ == "__main__":
    import sys

    # Through the package's module, not this __main__ copy: the op, its context and the engine share one module.
    from kubellm_inference.compiled import child_main as main

    sys.exit(main(sys.argv[1:]))
