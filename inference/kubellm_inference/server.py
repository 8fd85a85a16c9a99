"""``kubellm serve``: run the inference server with uvicorn, draining gracefully on SIGTERM.

On SIGTERM the server stops admitting requests (new ones get 503, /readyz says 503 so the Service stops
routing here), keeps the port open while the requests already admitted finish, for at most ``drain_grace_s``,
then shuts down and exits 0. A second SIGTERM or a SIGINT during the drain exits at once.

When the model cannot load, the server logs why, writes the reason to the termination-message file
(``KUBELLM_TERMINATION_MESSAGE_PATH``, the kubelet's ``/dev/termination-log``) and exits 1: the kubelet restarts
it at once (CrashLoopBackOff) and ``lastState.terminated.message`` says why, instead of a pod that answers 503
until its startup probe gives up. Invalid settings exit 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError

from kubellm.contract import CompileMode, ServerSettings
from kubellm_inference.app import create_app
from kubellm_inference.engine import EngineState
from kubellm_inference.guard import guarded_protocol
from kubellm_inference.loading import LoadedModel, ModelLoadError, load_model
from kubellm_inference.state import app_state

log = logging.getLogger("kubellm_inference")

EXIT_LOAD_FAILED = 1
EXIT_INVALID_SETTINGS = 2
# The kubelet keeps at most this much of a termination message.
TERMINATION_MESSAGE_MAX_BYTES = 4096


def write_termination_message(path: Path, message: str) -> bool:
    """Write ``message`` where the kubelet reads a container's termination message; True when written.

    In a pod the kubelet mounts that file writable for any user (a non-root container cannot write ``/dev``
    itself); elsewhere it is created only in a writable folder. Skipped otherwise; never raises: failing to report
    an error must not hide the error.
    """
    writable_file = path.is_file() and os.access(path, os.W_OK)
    if not writable_file and not (path.parent.is_dir() and os.access(path.parent, os.W_OK)):
        log.debug("termination message not written: neither %s nor its folder is writable", path)
        return False
    try:
        path.write_bytes(message.encode()[:TERMINATION_MESSAGE_MAX_BYTES])
    except OSError as error:
        log.warning("cannot write the termination message to %s: %s", path, error)
        return False
    return True


def uvicorn_config(app: FastAPI, settings: ServerSettings, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration for ``app`` with the connection limits of ``settings`` (see ``guard``)."""
    return uvicorn.Config(
        app,
        http=guarded_protocol(settings),
        timeout_keep_alive=settings.keep_alive_timeout_s,
        h11_max_incomplete_event_size=settings.max_header_bytes,
        # Applied by the guarded protocol instead, with the probes exempt.
        limit_concurrency=None,
        **options,
    )


class DrainingServer(uvicorn.Server):
    """uvicorn, with SIGTERM turned into a drain instead of an immediate close of the listening socket."""

    def __init__(
        self, config: uvicorn.Config, app: FastAPI, drain_grace_s: float, termination_message_path: Path
    ) -> None:
        super().__init__(config)
        self._app = app
        self._drain_grace_s = drain_grace_s
        self._drain_deadline: float | None = None
        self._termination_message_path = termination_message_path
        self.load_failed = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recorded in uvicorn's captured signals: uvicorn would re-raise them after shutdown and the process
        # would die by the signal instead of exiting 0.
        if self._drain_deadline is not None or sig != signal.SIGTERM:
            if self.should_exit:
                self.force_exit = True
            self.should_exit = True
            return
        log.info("SIGTERM: draining (no new requests; up to %.0fs for the ones in flight)", self._drain_grace_s)
        app_state(self._app).engine.begin_drain()
        self._drain_deadline = time.monotonic() + self._drain_grace_s

    async def on_tick(self, counter: int) -> bool:
        engine = app_state(self._app).engine
        if engine.state is EngineState.failed and not self.load_failed:
            reason = f"model load failed: {engine.failure}"
            log.error("%s; exiting so that the container restarts", reason)
            write_termination_message(self._termination_message_path, reason)
            self.load_failed = True
            self.should_exit = True
        if self._drain_deadline is not None and not self.should_exit:
            in_flight = app_state(self._app).engine.in_flight()
            if in_flight == 0:
                log.info("drained: no request in flight")
                self.should_exit = True
            elif time.monotonic() > self._drain_deadline:
                log.warning("drain grace period over with %d request(s) in flight; stopping them", in_flight)
                # The worker answers them "shutting down" (503) while uvicorn closes the connections.
                app_state(self._app).engine.request_stop()
                self.should_exit = True
        return await super().on_tick(counter)


def prepare_compiled(settings: ServerSettings, loaded: LoadedModel) -> int:
    """``--prepare`` with ``compile: auto``: compile the decode step into the cache as well, so that a server
    started on this cache (an image's prebuilt folder seeds the volume) loads it instead of compiling."""
    from kubellm_inference import compiled

    dtype = loaded.dtype or loaded.model.dtype
    missing = compiled.missing_toolchain() if settings.compile is CompileMode.auto else None
    wanted, reason = compiled.decide(settings.compile, loaded.device, dtype, loaded.quantization, missing)
    log.info("%s", reason)
    if not wanted:
        return 0
    started = time.monotonic()
    key = compiled.cache_key(loaded.source, dtype, loaded.quantization)
    folder = compiled.use_cache_dir(settings.cache_dir / "compiled", key)
    try:
        buckets = compiled.batch_buckets(settings.max_batch_size, loaded.quantization)
        compiled.build_into(folder, loaded.model, buckets, loaded.pad_token_id, loaded.quantization)
    except Exception as error:
        print(f"kubellm serve --prepare: compiling the decode step failed: {error}", file=sys.stderr)
        return EXIT_LOAD_FAILED
    log.info("decode step compiled into %s in %.1fs", folder, time.monotonic() - started)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubellm serve",
        description="Run the inference server. Settings come from KUBELLM_* environment variables; "
        "the options below override them.",
    )
    parser.add_argument("--model", help="hub id, local folder, or the embedded model (KUBELLM_MODEL)")
    parser.add_argument("--host", help="listen address (KUBELLM_HOST)")
    parser.add_argument("--port", type=int, help="listen port (KUBELLM_PORT)")
    parser.add_argument(
        "--prepare",
        action="store_true",
        help="load the model (converting the embedded one into the cache), compile the decode step into the cache "
        "(unless KUBELLM_COMPILE=off) and exit: for image builds",
    )
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    prepare_only = args.prepare
    overrides = {k: v for k, v in vars(args).items() if v is not None and k != "prepare"}
    try:
        settings = ServerSettings(**overrides)
    except ValidationError as error:
        print(f"kubellm serve: invalid settings:\n{error}", file=sys.stderr)
        return EXIT_INVALID_SETTINGS
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if prepare_only:
        try:
            loaded = load_model(settings)
        except ModelLoadError as error:
            print(f"kubellm serve --prepare: {error}", file=sys.stderr)
            return EXIT_LOAD_FAILED
        log.info("model %s prepared in %.1fs", settings.model, loaded.load_seconds)
        return prepare_compiled(settings, loaded)
    app = create_app(settings)
    config = uvicorn_config(
        app,
        settings,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        # After the drain, connections still open (idle keep-alives, a stream past the grace) get a few
        # seconds, then the process goes: kubelet's SIGKILL must never be what ends it.
        timeout_graceful_shutdown=5,
    )
    server = DrainingServer(config, app, settings.drain_grace_s, settings.termination_message_path)
    server.run()
    return EXIT_LOAD_FAILED if server.load_failed or not server.started else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
