"""The generation engine: one worker thread that owns the model and runs continuous batching.

Requests wait in a bounded queue. Between decoding steps the worker admits whatever is waiting (up to
``max_batch_size`` rows), prefills the newcomers as one left-padded batch and merges their KV cache into the
running batch, so a new request never waits for the others to finish. Every row keeps its own sampling
parameters (temperature, top_p, seed, max_new_tokens, stop strings), is dropped from the batch as soon as it
finishes, its client disconnects or its deadline passes, and streams its text through an event sink.

The event loop never runs the model: it only submits requests and reads their events (see ``RequestHandle``).
The same thread loads the model and runs a warm-up generation, so readiness means "this very loop generated".
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kubellm.contract import CompileMode
from kubellm_inference.compiled import CompileState, Step
from kubellm_inference.loading import LoadedModel
from kubellm_inference.progress import LoadProgress, Phase

if TYPE_CHECKING:
    from pathlib import Path

    import torch
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    from kubellm_inference.compiled import CompiledDecoder
    from kubellm_inference.metrics import ServerMetrics

log = logging.getLogger(__name__)

WARMUP_PROMPT = "Hello"


class FinishReason(enum.StrEnum):
    stop = "stop"  # end-of-sequence token or a stop string
    length = "length"  # max_new_tokens reached
    cancelled = "cancelled"  # the client went away
    timeout = "timeout"  # the request's deadline passed
    shutdown = "shutdown"  # the server stopped before the request finished
    error = "error"  # the model raised


class EngineState(enum.StrEnum):
    starting = "starting"
    loading = "loading"
    ready = "ready"
    failed = "failed"
    stopped = "stopped"


class QueueFullError(Exception):
    """The bounded queue is full; the client should retry later."""


class NotAcceptingError(Exception):
    """The engine does not take requests now (loading, draining or stopped); the message says which."""


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False


@dataclass(frozen=True)
class GenerationEvent:
    """A piece of a request's output: new text, and on the last event the finish reason and counts."""

    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


EventSink = Callable[[GenerationEvent], None]


@dataclass(eq=False)
class GenerationRequest:
    """One request inside the engine. Only the worker thread mutates it, except ``cancel()``."""

    prompt_ids: list[int]
    params: SamplingParams
    deadline: float  # time.monotonic()
    sink: EventSink
    submitted_at: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    generated: list[int] = field(default_factory=list)
    emitted_chars: int = 0
    generator: torch.Generator | None = None
    _cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Ask the worker to drop this request at its next step (thread-safe)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


class RequestHandle:
    """The event loop's side of a request: an asyncio queue that the worker fills thread-safely."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.events: asyncio.Queue[GenerationEvent] = asyncio.Queue()
        self.request: GenerationRequest | None = None

    def sink(self, event: GenerationEvent) -> None:
        try:
            self._loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:
            # The loop is closed: the server is gone and nobody is listening any more.
            if self.request is not None:
                self.request.cancel()

    def cancel(self) -> None:
        if self.request is not None:
            self.request.cancel()


@dataclass
class CompileStatus:
    """The compiled decode step's progress, written by the compile thread, read by /loadz and /v1/models."""

    setting: CompileMode
    state: CompileState = CompileState.off
    reason: str = ""
    buckets: tuple[int, ...] = ()
    buckets_done: int = 0
    seconds: float = 0.0  # the whole build, once ready or failed; so far while compiling
    compile_seconds: float | None = None  # the child's cold compile; None when the cache was warm
    load_seconds: float | None = None  # loading the graphs into this process from the warm cache
    started_at: float | None = None
    cache_dir: str | None = None
    detail: str | None = None

    def snapshot(self, step: Step) -> dict[str, object]:
        seconds = self.seconds
        if self.state in (CompileState.compiling, CompileState.loading) and self.started_at is not None:
            seconds = time.monotonic() - self.started_at
        return {
            "setting": self.setting.value,
            "state": self.state.value,
            "step": step.value,
            "reason": self.reason,
            "buckets": list(self.buckets),
            "buckets_done": self.buckets_done,
            "seconds": round(seconds, 1),
            "compile_seconds": None if self.compile_seconds is None else round(self.compile_seconds, 1),
            "load_seconds": None if self.load_seconds is None else round(self.load_seconds, 1),
            "cache_dir": self.cache_dir,
            "detail": self.detail,
        }


class _Batch:
    """The running rows: a shared left-padded KV cache with one attention-mask row per request."""

    def __init__(
        self,
        rows: list[GenerationRequest],
        cache: DynamicCache,
        mask: torch.Tensor,
        positions: torch.Tensor,
        next_tokens: torch.Tensor,
    ) -> None:
        self.rows = rows
        self.cache = cache
        self.mask = mask  # [rows, cached length], 0 where a row is padded on the left
        self.positions = positions  # [rows], the position id of each row's next input token
        self.next_tokens = next_tokens  # [rows], each row's last sampled token, the next step's input

    def __len__(self) -> int:
        return len(self.rows)


class GenerationEngine:
    """Owns the model on one worker thread; see the module docstring."""

    def __init__(
        self,
        loader: Callable[[], LoadedModel],
        *,
        queue_size: int,
        max_batch_size: int,
        stuck_step_timeout_s: float,
        metrics: ServerMetrics,
        debug_step_delay_s: float = 0.0,
        compile_mode: CompileMode = CompileMode.off,
        compile_cache_dir: Path | None = None,
        compile_prebuilt_dir: Path | None = None,
        progress: LoadProgress | None = None,
    ) -> None:
        self._loader = loader
        self._progress = progress
        self._queue_size = queue_size
        self._max_batch_size = max_batch_size
        self._stuck_step_timeout_s = stuck_step_timeout_s
        self._debug_step_delay_s = debug_step_delay_s
        self._metrics = metrics
        self._pending: collections.deque[GenerationRequest] = collections.deque()
        self._wakeup = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._draining = False
        self._active_count = 0
        self._step_started_at: float | None = None
        self._state = EngineState.starting
        self._failure: str | None = None
        self._loaded: LoadedModel | None = None
        self._encode_lock = threading.Lock()
        self._compile_cache_dir = compile_cache_dir
        self._compile_prebuilt_dir = compile_prebuilt_dir
        self.compile_status = CompileStatus(setting=compile_mode)
        # Set by the compile thread once the first bucket is built (a bucket serves from then on, the others stay
        # eager until theirs is); the worker reads it before each decode.
        self._compiled: CompiledDecoder | None = None
        self._compile_thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kubellm-generation", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the worker to stop after its current step (non-blocking); see ``stop``."""
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify_all()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker; requests still queued or running finish with ``shutdown``."""
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout)

    def begin_drain(self) -> None:
        """Stop admitting new requests; the ones already admitted keep running."""
        self._draining = True
        self._metrics.ready.set(0)

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def failure(self) -> str | None:
        return self._failure

    @property
    def ready(self) -> bool:
        return self._state is EngineState.ready and not self._draining

    @property
    def loaded(self) -> LoadedModel:
        if self._loaded is None:
            raise NotAcceptingError("the model is still loading")
        return self._loaded

    @property
    def step(self) -> Step:
        """The decode step serving now (compiled: for the buckets built, ``compile_status.buckets_done`` of them)."""
        return Step.compiled if self._compiled is not None else Step.eager

    def in_flight(self) -> int:
        """Requests queued or running."""
        with self._wakeup:
            return len(self._pending) + self._active_count

    def liveness(self) -> tuple[bool, str]:
        """(alive, why): the worker thread runs and no step has been stuck beyond the deadline."""
        if self._state is EngineState.failed:
            return False, f"model load failed: {self._failure}"
        if self._thread is None or not self._thread.is_alive():
            if self._state is EngineState.stopped:
                return True, "stopped"
            return False, "the generation worker is not running"
        started = self._step_started_at
        if started is not None:
            running = time.monotonic() - started
            if running > self._stuck_step_timeout_s:
                return False, f"one generation step has run {running:.1f}s (limit {self._stuck_step_timeout_s}s)"
        return True, self._state.value

    # ---- the event loop's side -------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens (thread-safe; call from a worker thread)."""
        with self._encode_lock:
            ids: list[int] = self.loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
            return ids

    def submit(
        self, prompt_ids: list[int], params: SamplingParams, deadline: float, sink: EventSink
    ) -> GenerationRequest:
        """Queue a request; raises NotAcceptingError or QueueFullError. Events arrive through ``sink``."""
        request = GenerationRequest(prompt_ids=prompt_ids, params=params, deadline=deadline, sink=sink)
        with self._wakeup:
            if self._state is not EngineState.ready:
                raise NotAcceptingError(f"the model is not ready ({self._state.value})")
            if self._draining or self._stopping:
                raise NotAcceptingError("the server is shutting down")
            if len(self._pending) >= self._queue_size:
                raise QueueFullError(f"the request queue is full ({self._queue_size} waiting)")
            self._pending.append(request)
            self._metrics.queue_depth.set(len(self._pending))
            self._wakeup.notify()
        return request

    # ---- the worker thread -----------------------------------------------------------------------------------

    def _run(self) -> None:
        self._state = EngineState.loading
        try:
            self._loaded = self._loader()
            self._metrics.model_load_seconds.set(self._loaded.load_seconds)
            wanted = self._decide_compile(self._loaded)
            self._metrics.model_info.labels(
                dtype=self._loaded.dtype_name,
                quantization=self._loaded.quantization.value,
                device=str(self._loaded.device),
                compile=self.compile_status.setting.value,
            ).set(1)
            self._metrics.model_weight_bytes.set(self._loaded.weight_bytes)
            self._warm_up()
        except Exception as error:
            log.exception("loading the model failed")
            self._failure = f"{type(error).__name__}: {error}"
            self._state = EngineState.failed
            if self._progress is not None:
                self._progress.set_phase(Phase.failed, self._failure)
            return
        self._state = EngineState.ready
        # The load's last phase: warm-up done, so /loadz and kubellm_load_phase say ready (issue 23 found them
        # reporting "warming up" for as long as a pod served).
        if self._progress is not None:
            self._progress.set_phase(Phase.ready)
        if not self._draining:
            self._metrics.ready.set(1)
        self._metrics.decode_step.labels(step=Step.eager.value).set(1)
        log.info("generation worker ready (max batch %d, queue %d)", self._max_batch_size, self._queue_size)
        if wanted:
            self._compile_thread = threading.Thread(target=self._build_compiled, name="kubellm-compile", daemon=True)
            self._compile_thread.start()
        try:
            self._loop()
        finally:
            self._state = EngineState.stopped
            self._metrics.ready.set(0)

    def _decide_compile(self, loaded: LoadedModel) -> bool:
        """Whether to build the compiled step (logged); prepares the model for it on this thread, before the
        warm-up, so that readiness proves the eager step with the attention the compiled one shares. Every
        model gets that attention (``compiled.one_token_attention`` for a decode step), compiled or not."""
        from kubellm_inference import compiled

        compiled.register_attention()
        loaded.model.set_attn_implementation(compiled.ATTENTION_NAME)
        status = self.compile_status
        wanted, status.reason = compiled.decide(
            status.setting,
            loaded.device,
            loaded.dtype or loaded.model.dtype,
            loaded.quantization,
            compiled.missing_toolchain() if status.setting is CompileMode.auto else None,
        )
        log.info("%s: the decode step %s", status.reason, "is compiled after Ready" if wanted else "stays eager")
        if not wanted:
            # The eager step serves for good: its linears on weights packed once for oneDNN (most of what the
            # compiled step gains, without a compiler; the compiled step packs its own, and cannot take these).
            from kubellm_inference.precision import pack_linears

            not_packed = pack_linears(loaded.model, loaded.device, loaded.dtype or loaded.model.dtype)
            packed = "linears packed for oneDNN" if not_packed is None else f"linears not packed: {not_packed}"
            status.reason = f"{status.reason}; {packed}"
            log.info("the eager step's %s", packed)
        if wanted:
            status.state = CompileState.pending
            status.buckets = compiled.batch_buckets(self._max_batch_size, loaded.quantization)
        return wanted

    def _build_compiled(self) -> None:
        """The compile thread: compile every bucket in a child process unless the cache is warm, load the graphs
        here, then hand the step to the worker. A failure leaves the eager step serving."""
        import sys

        from kubellm_inference import compiled

        loaded = self.loaded
        dtype = loaded.dtype or loaded.model.dtype
        status = self.compile_status
        status.started_at = time.monotonic()

        decoder: CompiledDecoder | None = None

        def compiled_one(size: int, seconds: float) -> None:
            status.buckets_done += 1
            self._metrics.compile_buckets_done.set(status.buckets_done)
            log.info("%s the decode step for batch bucket %d in %.1fs", status.state.value, size, seconds)
            if decoder is not None and self._compiled is None and not self._stopping:
                # A loaded bucket serves at once: a package loads in about a second; a quantized model's graph
                # re-traced from Inductor's cache takes seconds to tens of seconds.
                self._serve_compiled(decoder)

        switch_interval = sys.getswitchinterval()
        folder: Path | None = None
        try:
            if self._compile_cache_dir is not None:
                key = compiled.cache_key(loaded.source, dtype, loaded.quantization)
                folder = compiled.use_cache_dir(self._compile_cache_dir, key, self._compile_prebuilt_dir)
                status.cache_dir = str(folder)
                if not compiled.warm_marker(folder, status.buckets, loaded.quantization).exists():
                    status.state = CompileState.compiling
                    compiled.compile_in_child(
                        folder,
                        loaded.source,
                        dtype,
                        loaded.quantization,
                        status.buckets,
                        compiled_one,
                        should_stop=lambda: self._stopping,
                    )
                    status.compile_seconds = time.monotonic() - status.started_at
            status.state = CompileState.loading
            status.buckets_done = 0
            loading_from = time.monotonic()
            decoder = compiled.CompiledDecoder(loaded.model, status.buckets, loaded.pad_token_id, loaded.quantization)
            if folder is not None and compiled.packaged(loaded.quantization):
                decoder.load(folder, compiled_one)
            else:
                # While Dynamo traces here it holds the GIL for long stretches; a shorter switch interval lets the
                # worker's eager steps (hundreds of small ops, each needing the GIL) through more often meanwhile.
                sys.setswitchinterval(min(switch_interval, 0.0005))
                decoder.build(compiled_one)
            status.load_seconds = time.monotonic() - loading_from
        except Exception as error:
            if self._compiled is not None:
                self._serve_compiled(None)
            status.seconds = time.monotonic() - status.started_at
            status.state = CompileState.failed
            status.detail = f"{type(error).__name__}: {error}"
            if self._stopping:
                log.info("compiling the decode step stopped with the server after %.1fs", status.seconds)
            else:
                log.exception("compiling the decode step failed after %.1fs; the eager step serves", status.seconds)
            return
        finally:
            sys.setswitchinterval(switch_interval)
        status.seconds = time.monotonic() - status.started_at
        self._metrics.compile_seconds.set(status.seconds)
        if self._stopping:
            return
        status.state = CompileState.ready
        log.info(
            "the compiled decode step serves every bucket now (buckets %s; %.1fs: compile %s, load %.1fs)",
            ",".join(map(str, status.buckets)),
            status.seconds,
            "from cache" if status.compile_seconds is None else f"{status.compile_seconds:.1f}s",
            status.load_seconds or 0.0,
        )

    def _serve_compiled(self, decoder: CompiledDecoder | None) -> None:
        """Hand the worker the compiled step (None: the eager step again), and say which in kubellm_decode_step."""
        self._compiled = decoder
        self._metrics.decode_step.labels(step=Step.compiled.value).set(int(decoder is not None))
        self._metrics.decode_step.labels(step=Step.eager.value).set(int(decoder is None))

    def _warm_up(self) -> None:
        """One short greedy generation through the batching path: readiness proves the model generates."""
        import torch

        events: list[GenerationEvent] = []
        prompt = self.loaded.tokenizer(WARMUP_PROMPT, add_special_tokens=False)["input_ids"]
        request = GenerationRequest(
            prompt_ids=list(prompt),
            params=SamplingParams(max_new_tokens=2, ignore_eos=True),
            deadline=time.monotonic() + 600,
            sink=events.append,
        )
        # In inference mode, as the serving loop: no autograd graph is recorded.
        with torch.inference_mode():
            batch = self._prefill([request])
            while batch is not None and len(batch):
                batch = self._decode(batch)
        if not events or events[-1].finish_reason is not FinishReason.length:
            raise RuntimeError(f"warm-up generation did not complete: {events!r}")

    def _loop(self) -> None:
        import torch

        batch: _Batch | None = None
        with torch.inference_mode():
            while True:
                with self._wakeup:
                    while not self._stopping and not self._pending and batch is None:
                        self._wakeup.wait()
                    if self._stopping:
                        break
                    # Requests whose client left or whose deadline passed while queued free their place now.
                    given_up = [r for r in self._pending if r.cancelled or time.monotonic() > r.deadline]
                    for request in given_up:
                        self._pending.remove(request)
                    free = self._max_batch_size - (len(batch) if batch is not None else 0)
                    newcomers = [self._pending.popleft() for _ in range(min(free, len(self._pending)))]
                    self._metrics.queue_depth.set(len(self._pending))
                    self._active_count = (len(batch) if batch is not None else 0) + len(newcomers)
                for request in given_up:
                    self._finish_if_done_waiting(request)
                newcomers = [r for r in newcomers if not self._finish_if_done_waiting(r)]
                if newcomers:
                    try:
                        joined = self._prefill(newcomers)
                    except Exception as error:
                        # Only the newcomers fail: the running batch's cache is untouched by their prefill.
                        self._fail(newcomers, error)
                    else:
                        batch = joined if batch is None else self._merge(batch, joined)
                elif batch is not None:
                    try:
                        batch = self._decode(batch)
                    except Exception as error:
                        self._fail(batch.rows, error)
                        batch = None
                if batch is not None and not len(batch):
                    batch = None
                self._metrics.batch_size.set(len(batch) if batch is not None else 0)
                with self._wakeup:
                    self._active_count = len(batch) if batch is not None else 0
        self._shutdown(batch)

    def _fail(self, requests: list[GenerationRequest], error: Exception) -> None:
        log.exception("generation step failed for %d request(s)", len(requests), exc_info=error)
        for request in requests:
            self._finish(request, FinishReason.error, error=f"{type(error).__name__}: {error}")

    def _shutdown(self, batch: _Batch | None) -> None:
        with self._wakeup:
            leftovers = list(self._pending) + (batch.rows if batch is not None else [])
            self._pending.clear()
            self._active_count = 0
        for request in leftovers:
            self._finish(request, FinishReason.shutdown, error="the server stopped before the request finished")
        self._metrics.queue_depth.set(0)
        self._metrics.batch_size.set(0)

    def _finish_if_done_waiting(self, request: GenerationRequest) -> bool:
        if request.cancelled:
            self._finish(request, FinishReason.cancelled)
            return True
        if time.monotonic() > request.deadline:
            self._finish(request, FinishReason.timeout, error="the request's deadline passed while it was queued")
            return True
        return False

    # ---- model steps -----------------------------------------------------------------------------------------

    def _forward(
        self,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache,
        *,
        decode: bool = False,
    ) -> torch.Tensor:
        """One model call; returns the last position's logits [rows, vocab]. Watched by the liveness check.
        A decode step (one new token per row) runs compiled once the compiled step is built."""
        self._step_started_at = time.monotonic()
        try:
            if self._debug_step_delay_s and self._state is EngineState.ready:
                time.sleep(self._debug_step_delay_s)  # test hook: a stalled step (settings.debug_step_delay_s)
            compiled = self._compiled
            if decode and compiled is not None and compiled.serves(input_ids.shape[0]):
                return compiled.forward(input_ids, mask, positions, cache)
            output = self.loaded.model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            logits: torch.Tensor = output.logits[:, -1, :]
            return logits
        finally:
            self._step_started_at = None

    def _prefill(self, rows: list[GenerationRequest]) -> _Batch:
        import torch

        loaded = self.loaded
        longest = max(len(r.prompt_ids) for r in rows)
        ids = torch.full((len(rows), longest), loaded.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, request in enumerate(rows):
            n = len(request.prompt_ids)
            ids[i, longest - n :] = torch.tensor(request.prompt_ids, dtype=torch.long)
            mask[i, longest - n :] = 1
            if request.params.seed is not None:
                request.generator = torch.Generator().manual_seed(request.params.seed)
            self._metrics.prompt_tokens.inc(n)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        # Plain full-length layers (no sliding window), which the padding and merging below rely on.
        cache = _growing_cache()
        device = loaded.device
        logits = self._forward(ids.to(device), mask.to(device), positions.to(device), cache)
        batch = _Batch(
            rows=list(rows),
            cache=cache,
            mask=mask.to(device),
            positions=positions[:, -1].to(device) + 1,
            next_tokens=torch.zeros(len(rows), dtype=torch.long, device=device),
        )
        return self._accept(batch, logits)

    def _decode(self, batch: _Batch) -> _Batch:
        import torch

        ones = torch.ones((len(batch), 1), dtype=batch.mask.dtype, device=batch.mask.device)
        batch.mask = torch.cat([batch.mask, ones], dim=1)
        logits = self._forward(
            batch.next_tokens[:, None], batch.mask, batch.positions[:, None], batch.cache, decode=True
        )
        batch.positions = batch.positions + 1
        return self._accept(batch, logits)

    def _accept(self, batch: _Batch, logits: torch.Tensor) -> _Batch:
        """Sample each row's next token, emit text, and drop the rows that finished."""
        tokens = self._sample(batch.rows, logits)
        batch.next_tokens = tokens.to(batch.next_tokens.device)
        keep: list[int] = []
        for i, (request, token) in enumerate(zip(batch.rows, tokens.tolist(), strict=True)):
            if not self._advance(request, int(token)):
                keep.append(i)
        if len(keep) < len(batch):
            batch = self._select(batch, keep)
        return batch

    def _sample(self, rows: list[GenerationRequest], logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        tokens = logits.argmax(dim=-1).cpu()
        for i, request in enumerate(rows):
            params = request.params
            if params.temperature > 0:
                tokens[i] = sample_token(logits[i].cpu(), params.temperature, params.top_p, request.generator)
        return tokens

    def _advance(self, request: GenerationRequest, token: int) -> bool:
        """Append one sampled token to a request and stream its new text; True when the request is done."""
        loaded = self.loaded
        now = time.monotonic()
        if request.cancelled:
            self._finish(request, FinishReason.cancelled)
            return True
        if now > request.deadline:
            self._finish(request, FinishReason.timeout, error="the request's deadline passed during generation")
            return True
        if request.first_token_at is None:
            request.first_token_at = now
            self._metrics.time_to_first_token.observe(now - request.submitted_at)
        if token in loaded.eos_token_ids and not request.params.ignore_eos:
            self._finish(request, FinishReason.stop)
            return True
        request.generated.append(token)
        self._metrics.generated_tokens.inc()
        text = str(loaded.tokenizer.decode(request.generated, skip_special_tokens=True))
        # A trailing U+FFFD is an incomplete character that the next token may complete: never match on it.
        stop_at = _find_stop(text.rstrip("\ufffd"), request.params.stop, request.emitted_chars)
        if stop_at is not None:
            self._emit_text(request, text[:stop_at])
            self._finish(request, FinishReason.stop)
            return True
        if len(request.generated) >= request.params.max_new_tokens:
            self._emit_text(request, text)
            self._finish(request, FinishReason.length)
            return True
        self._emit_text(request, text[: _safe_end(text, request.params.stop)])
        return False

    def _emit_text(self, request: GenerationRequest, text: str) -> None:
        if len(text) > request.emitted_chars:
            request.sink(GenerationEvent(text=text[request.emitted_chars :]))
            request.emitted_chars = len(text)

    def _finish(self, request: GenerationRequest, reason: FinishReason, error: str | None = None) -> None:
        request.sink(
            GenerationEvent(
                text="",
                finish_reason=reason,
                prompt_tokens=len(request.prompt_ids),
                completion_tokens=len(request.generated),
                error=error,
            )
        )

    @staticmethod
    def _select(batch: _Batch, keep: list[int]) -> _Batch:
        """Keep only the rows ``keep``, and cut the left columns that every remaining row has as padding."""
        import torch

        if not keep:
            return _Batch([], batch.cache, batch.mask[:0], batch.positions[:0], batch.next_tokens[:0])
        index = torch.tensor(keep, dtype=torch.long, device=batch.mask.device)
        mask = batch.mask.index_select(0, index)
        first_used = int(mask.any(dim=0).int().argmax().item())
        mask = mask[:, first_used:]
        for layer in _layers(batch.cache):
            layer.assign(
                _tensor(layer.keys).index_select(0, index)[:, :, first_used:, :],
                _tensor(layer.values).index_select(0, index)[:, :, first_used:, :],
            )
        return _Batch(
            rows=[batch.rows[i] for i in keep],
            cache=batch.cache,
            mask=mask,
            positions=batch.positions.index_select(0, index),
            next_tokens=batch.next_tokens.index_select(0, index),
        )

    @staticmethod
    def _merge(running: _Batch, joined: _Batch) -> _Batch:
        """One batch from two: the shorter cache is padded on the left (masked out) to the longer one's length."""
        import torch
        import torch.nn.functional as F

        if not len(joined):
            return running
        if not len(running):
            return joined
        length = max(running.mask.shape[1], joined.mask.shape[1])

        def left_pad(tensor: torch.Tensor, dim_from_end: int) -> torch.Tensor:
            missing = length - tensor.shape[-dim_from_end]
            if missing == 0:
                return tensor
            padding = [0, 0] * (dim_from_end - 1) + [missing, 0]
            return F.pad(tensor, padding)

        for mine, theirs in zip(_layers(running.cache), _layers(joined.cache), strict=True):
            mine.assign(
                torch.cat([left_pad(_tensor(mine.keys), 2), left_pad(_tensor(theirs.keys), 2)], dim=0),
                torch.cat([left_pad(_tensor(mine.values), 2), left_pad(_tensor(theirs.values), 2)], dim=0),
            )
        return _Batch(
            rows=running.rows + joined.rows,
            cache=running.cache,
            mask=torch.cat([left_pad(running.mask, 1), left_pad(joined.mask, 1)], dim=0),
            positions=torch.cat([running.positions, joined.positions]),
            next_tokens=torch.cat([running.next_tokens, joined.next_tokens]),
        )


NUCLEUS_CANDIDATES = 256  # top-p looks among this many most likely tokens first, and sorts them all only if needed


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    """One token drawn from ``softmax(logits / temperature)``, restricted to the nucleus when ``top_p`` < 1: the
    smallest set of most likely tokens whose mass reaches ``top_p`` (always at least the most likely one).

    Drawn by inverting the cumulative distribution with one uniform number: ``torch.multinomial`` draws a random
    number per vocabulary entry, and top-p sorted the whole vocabulary; on SmolLM2's logits (49152) this takes
    0.11 ms a token against their 1.07, and 0.28 ms with top_p 0.9 against 3.8 (``bench/sampling.py``, dev VM).
    The full sort stays for the rare distribution whose nucleus is wider than the candidates looked at first."""
    import torch

    scaled = logits.float() / temperature
    if top_p < 1.0:
        count = min(NUCLEUS_CANDIDATES, scaled.numel())
        ordered, order = torch.topk(scaled, count)
        probs = torch.exp(ordered - torch.logsumexp(scaled, dim=0))
        if count < scaled.numel() and float(probs.sum()) <= top_p:
            ordered, order = torch.sort(scaled, descending=True)
            probs = torch.softmax(ordered, dim=0)
        # A token is outside once the tokens before it already reach top_p.
        probs = probs.masked_fill(probs.cumsum(dim=0) - probs > top_p, 0.0)
        return int(order[_inverse_cdf(probs, generator)])
    return _inverse_cdf(torch.softmax(scaled, dim=0), generator)


def _inverse_cdf(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """The index where a uniform draw over ``probs``' total mass falls (float64 sums: no mass lost to rounding)."""
    import torch

    cumulative = probs.double().cumsum(dim=0)
    draw = torch.rand(1, generator=generator, dtype=torch.float64) * cumulative[-1]
    return min(int(torch.searchsorted(cumulative, draw, right=True)), probs.numel() - 1)


def _growing_layer_class() -> type[DynamicLayer]:
    """``_GrowingLayer``, defined on first use so that importing the engine does not import transformers."""
    global _GrowingLayer
    if _GrowingLayer is not None:
        return _GrowingLayer
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A full-attention layer whose keys and values are views of the first columns of buffers with room to
        grow: a decode step writes its one new column in place. transformers' DynamicLayer concatenates instead,
        copying the whole cache every step (issue 16: 13 % of a batch-8 decode step of SmolLM2 went to it)."""

        _key_buffer: torch.Tensor | None = None
        _value_buffer: torch.Tensor | None = None

        def update(
            self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
        ) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            length = self.get_seq_length()
            end = length + key_states.shape[-2]
            keys, values = self._key_buffer, self._value_buffer
            if keys is None or values is None or keys.shape[-2] < end:
                # Room for a quarter more (at least _GROWTH columns): copies stay amortized O(1) per token.
                capacity = end + max(_GROWTH, end // 4)
                keys = key_states.new_empty((*key_states.shape[:2], capacity, key_states.shape[-1]))
                values = value_states.new_empty((*value_states.shape[:2], capacity, value_states.shape[-1]))
                if length:
                    keys[:, :, :length].copy_(_tensor(self.keys))
                    values[:, :, :length].copy_(_tensor(self.values))
                self._key_buffer, self._value_buffer = keys, values
            keys[:, :, length:end].copy_(key_states)
            values[:, :, length:end].copy_(value_states)
            self.keys, self.values = keys[:, :, :end], values[:, :, :end]
            return self.keys, self.values

        def assign(self, keys: torch.Tensor, values: torch.Tensor) -> None:
            """Replace the cached states (rows dropped or merged); the next ``update`` makes new room."""
            self.keys, self.values = keys, values
            self._key_buffer = self._value_buffer = None

    _GrowingLayer = GrowingLayer
    return GrowingLayer


_GrowingLayer: type[DynamicLayer] | None = None
# The least number of columns a growing cache layer makes room for at once.
_GROWTH = 64


def _growing_cache() -> DynamicCache:
    """An empty cache whose layers are ``_GrowingLayer``s (created per layer on first use, as in DynamicCache)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    cache.layer_class_to_replicate = _growing_layer_class()
    return cache


def _layers(cache: DynamicCache) -> list[Any]:
    """The cache's layers; the padding and merging above only know the plain full-attention ``_GrowingLayer``."""
    layers = list(cache.layers)
    for layer in layers:
        if type(layer) is not _growing_layer_class():
            raise TypeError(f"unsupported KV cache layer {type(layer).__name__}")
    return layers


def _tensor(value: torch.Tensor | None) -> torch.Tensor:
    assert value is not None, "a cache layer without keys/values"
    return value


def _find_stop(text: str, stops: tuple[str, ...], emitted: int) -> int | None:
    """Where the first stop string starts in ``text``, looking only where a new match can be."""
    found: int | None = None
    for stop in stops:
        at = text.find(stop, max(0, emitted - len(stop) + 1))
        if at != -1 and (found is None or at < found):
            found = at
    return found


def _safe_end(text: str, stops: tuple[str, ...]) -> int:
    """How much of ``text`` can be streamed now: not a trailing partial character (the tokenizer shows an
    incomplete UTF-8 sequence as U+FFFD) and not a tail that may grow into a stop string."""
    end = len(text.rstrip("\ufffd"))
    held = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, end), held, -1):
            if text.endswith(stop[:size], 0, end):
                held = size
                break
    return end - held
