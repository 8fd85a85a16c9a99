"""What the user did not set, derived from the resolved model: a pure function from (LLMService, resolution) to
the LLMService the renderer and the storage pre-flight see, plus the list of derived values and their sources
(``kubellm render`` prints it).

The user's values always win; ``model.sizeHint`` stays the offline override. Margins, documented in docs/hub.md:

- cache (emptyDir sizeLimit): 1.2 x the resolved bytes, rounded up to a GiB (the sizeHint rule); the pod's
  ephemeral-storage request and limit: the cache + 1Gi; the pre-flight need: the request (+ the operator's
  headroom), all through ``LLMServiceSpec.storage_plan`` with the resolved bytes as the size hint;
- memory request: the weights in the served dtype (float32 on CPU, bfloat16 on GPU for ``auto``: the operator cannot
  see whether a node's CPU has native bf16, so CPU counts the larger width), or at ``model.quantization``'s width
  for the linear layers (embedding kept in the served dtype), + the KV cache
  for the server's batch (8 rows) of max input (2048) + max new tokens, + 1Gi for the runtime, rounded up to GiB;
- startup budget: twice the download time at the assumed bandwidth (an operator setting) + the load at
  200 MiB/s + 300 s for the process and the warm-up, rounded up to a minute, between 600 s and 86400 s;
- revision: pinned to the resolved commit, so every replica loads the same files;
- hub endpoint: the operator's default when the LLMService names none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from kubellm.contract import ServerSettings
from kubellm.quantity import format_bytes
from kubellm_operator.api import GIB, LLMService
from kubellm_operator.resolve import ResolvedModel

KV_BATCH_ROWS = int(ServerSettings.model_fields["max_batch_size"].default)
KV_INPUT_TOKENS = int(ServerSettings.model_fields["max_input_tokens"].default)
RUNTIME_MEMORY = 1 * GIB
LOAD_BYTES_PER_SECOND = 200 * 2**20
STARTUP_FIXED_SECONDS = 300
BUDGET_MIN_SECONDS, BUDGET_MAX_SECONDS = 600, 86400
# Weight-only quantization (kubellm_inference.precision): int8 per output channel; int4 in groups of 32 with a
# 16-bit scale and zero point per group (4 bits + 32 bits / 32).
QUANTIZED_BYTES_PER_PARAMETER = {"int8": 1.0, "int4": 0.625}
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I8": 1, "U8": 1}


@dataclass(frozen=True)
class Derived:
    field: str  # the spec path it fills, as written in YAML
    value: str
    source: str  # where it came from, for people


def served_dtype_bytes(llms: LLMService) -> int:
    dtype = llms.spec.model.dtype.value
    if dtype == "auto":
        return 2 if llms.spec.gpu_count() else 4
    return _DTYPE_BYTES[dtype]


def memory_estimate(llms: LLMService, model: ResolvedModel) -> int | None:
    """Weights in the served dtype + the KV cache of a full batch + runtime; None without a parameter count."""
    width = served_dtype_bytes(llms)
    if model.parameters is not None:
        weights = model.parameters * width
    elif model.dtype in _DTYPE_BYTES:
        weights = model.bytes * width // _DTYPE_BYTES[model.dtype]
    else:
        return None
    config = model.config
    weights = _quantized_weights(llms, weights, width, config)
    layers = config.get("num_hidden_layers")
    heads = config.get("num_attention_heads")
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or (
        config["hidden_size"] // heads if config.get("hidden_size") and heads else None
    )
    kv = 0
    if isinstance(layers, int) and isinstance(kv_heads, int) and isinstance(head_dim, int):
        tokens = KV_INPUT_TOKENS + llms.spec.model.max_new_tokens
        kv = 2 * layers * kv_heads * head_dim * width * KV_BATCH_ROWS * tokens
    return math.ceil((weights + kv + RUNTIME_MEMORY) / GIB) * GIB


def _quantized_weights(llms: LLMService, weights: int, width: int, config: dict[str, Any]) -> int:
    """The weights' bytes in memory under ``model.quantization``: the server quantizes every linear layer (the
    output head included, as a copy when it shares the embedding's weights) and keeps the embedding table in the
    served dtype. Without vocabulary and hidden sizes in the config, the embedding counts as a linear layer."""
    quantized = QUANTIZED_BYTES_PER_PARAMETER.get(llms.spec.model.quantization.value)
    if quantized is None:
        return weights
    parameters = weights // width
    vocab, hidden = config.get("vocab_size"), config.get("hidden_size")
    embedding = vocab * hidden if isinstance(vocab, int) and isinstance(hidden, int) else 0
    head_copy = embedding if config.get("tie_word_embeddings") else 0
    return math.ceil(embedding * width + (parameters - embedding + head_copy) * quantized)


def startup_budget(model: ResolvedModel, bandwidth: int) -> int:
    seconds = 2 * model.bytes / bandwidth + model.bytes / LOAD_BYTES_PER_SECOND + STARTUP_FIXED_SECONDS
    return min(max(math.ceil(seconds / 60) * 60, BUDGET_MIN_SECONDS), BUDGET_MAX_SECONDS)


def effective_llmservice(
    llms: LLMService, model: ResolvedModel | None, *, default_endpoint: str | None, bandwidth: int
) -> tuple[LLMService, list[Derived]]:
    """The LLMService with the derived values filled in where the user left them unset, and what was derived."""
    obj: dict[str, Any] = llms.model_dump(by_alias=True, exclude_none=True, exclude={"status"})
    spec = obj["spec"]
    model_spec = spec["model"]
    derived: list[Derived] = []
    if default_endpoint and not (llms.spec.model.hub and llms.spec.model.hub.endpoint):
        model_spec.setdefault("hub", {})["endpoint"] = default_endpoint
        derived.append(Derived("spec.model.hub.endpoint", default_endpoint, "the operator's hubEndpoint setting"))
    if model is not None:
        if llms.spec.model.revision != model.commit:
            model_spec["revision"] = model.commit
            derived.append(
                Derived("spec.model.revision", model.commit, f"{llms.spec.model.revision or 'main'} on the hub")
            )
        if llms.spec.model.size_hint is None:
            model_spec["sizeHint"] = str(model.bytes)
            derived.append(
                Derived(
                    "spec.model.sizeHint",
                    str(model.bytes),
                    f"{len(model.files)} files on the hub, {format_bytes(model.bytes)}",
                )
            )
        if "budget_seconds" not in llms.spec.probes.startup.model_fields_set:
            budget = startup_budget(model, bandwidth)
            spec.setdefault("probes", {}).setdefault("startup", {})["budgetSeconds"] = budget
            derived.append(
                Derived(
                    "spec.probes.startup.budgetSeconds",
                    str(budget),
                    f"{format_bytes(model.bytes)} at {format_bytes(bandwidth)}/s (x2) + load + 300s",
                )
            )
        if llms.spec.resources.requests.memory is None:
            memory = memory_estimate(llms, model)
            if memory is not None:
                spec.setdefault("resources", {}).setdefault("requests", {})["memory"] = format_bytes(memory)
                derived.append(
                    Derived(
                        "spec.resources.requests.memory",
                        format_bytes(memory),
                        f"{model.parameters or '?'} parameters x {served_dtype_bytes(llms)} bytes + KV cache "
                        f"({KV_BATCH_ROWS} x {KV_INPUT_TOKENS + llms.spec.model.max_new_tokens} tokens) + 1Gi",
                    )
                )
    effective = LLMService.from_object(obj)
    if model is not None and llms.spec.model.size_hint is None:
        plan = effective.spec.storage_plan()
        if plan.cache_size is not None and llms.spec.storage.cache_size is None:
            derived.append(Derived("spec.storage.cacheSize", format_bytes(plan.cache_size), "1.2 x sizeHint"))
        if llms.spec.storage.request is None and llms.spec.resources.requests.ephemeral_storage is None:
            derived.append(Derived("spec.storage.request", format_bytes(plan.request), "cache + 1Gi"))
    return effective, derived
