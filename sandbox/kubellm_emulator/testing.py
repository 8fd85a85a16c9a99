"""Helpers for tests that run real clients against an in-process `Emulator`.

- `kopf_operator(emulator, registry=...)`: starts Kopf in the current event loop inside the test body and stops it on
  exit (Kopf cancels tasks created after its start when it stops, so it must not outlive the test body).
- One process-wide `@kopf.on.login` handler per registry that reads the *current* emulator's URL, so that handlers
  registered by earlier tests never point at a stopped server.
- `kubernetes_configuration(emulator)`: a `kubernetes.client.Configuration` for the emulator, also set as the
  default so that `kubernetes.client.CoreV1Api()` inside sync Kopf handlers talks to it.

The sync kubernetes client blocks the calling thread: from an async test call it via `asyncio.to_thread`, and write
Kopf handlers that use it as sync functions (Kopf runs those in threads), or the loop serving the emulator blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from kubellm_emulator.server import Emulator

_current_url: dict[str, str | None] = {"url": None}
_registries_with_login: set[int] = set()
TOKEN = "kubellm-emulator"


def _login(**_: Any) -> Any:
    import kopf

    url = _current_url["url"]
    if url is None:
        return None
    return kopf.ConnectionInfo(server=url, scheme="Bearer", token=TOKEN, default_namespace="default")


def ensure_kopf_login(registry: Any = None) -> None:
    """Registers the one login handler (reading the current emulator URL) in `registry` (Kopf's default if None)."""
    import kopf

    target = registry if registry is not None else kopf.get_default_registry()
    if id(target) in _registries_with_login:
        return
    _registries_with_login.add(id(target))
    kopf.on.login(registry=target, id="kubellm-emulator-login")(_login)


def kubernetes_configuration(emulator: Emulator, *, set_default: bool = True) -> Any:
    """A kubernetes-client Configuration pointing at `emulator` (and made the default unless told otherwise)."""
    import kubernetes

    configuration = kubernetes.client.Configuration()
    configuration.host = emulator.api_url
    configuration.api_key = {"authorization": f"Bearer {TOKEN}"}
    if set_default:
        kubernetes.client.Configuration.set_default(configuration)
    return configuration


@contextlib.asynccontextmanager
async def kopf_operator(
    emulator: Emulator,
    *,
    registry: Any = None,
    settings: Any = None,
    namespaces: tuple[str, ...] = (),
    memo: Any = None,
    configure: Callable[[Any], None] | None = None,
    startup_timeout: float = 30.0,
    stop_timeout: float = 30.0,
) -> AsyncIterator[asyncio.Task[None]]:
    """Runs `kopf.operator()` against `emulator` for the duration of the `async with` block.

    `configure(settings)` may tune Kopf's settings before the start (the defaults here make tests quick:
    short watch timeouts and no persisted-progress delays).
    """
    import kopf

    ensure_kopf_login(registry)
    _current_url["url"] = emulator.api_url
    settings = settings if settings is not None else kopf.OperatorSettings()
    settings.watching.server_timeout = 60
    settings.watching.client_timeout = 70
    settings.networking.request_timeout = 30
    settings.posting.level = logging.INFO
    if configure is not None:
        configure(settings)
    stop_flag = asyncio.Event()
    ready_flag = asyncio.Event()
    task = asyncio.create_task(
        kopf.operator(
            registry=registry,
            settings=settings,
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
            memo=memo,
        )
    )
    try:
        ready = asyncio.create_task(ready_flag.wait())
        done, _ = await asyncio.wait({ready, task}, timeout=startup_timeout, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            ready.cancel()
            task.result()  # re-raises why the operator ended during its start
            raise RuntimeError("the Kopf operator exited during its start")
        if ready not in done:
            ready.cancel()
            raise TimeoutError(f"the Kopf operator was not ready within {startup_timeout}s")
        yield task
    finally:
        stop_flag.set()
        emulator.close_idle_connections()
        try:
            await asyncio.wait_for(task, timeout=stop_timeout)
        except (asyncio.CancelledError, TimeoutError):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        if _current_url["url"] == emulator.api_url:
            _current_url["url"] = None


async def wait_until(
    predicate: Callable[[], Any], *, timeout: float = 10.0, what: str = "a condition", interval: float = 0.02
) -> Any:
    """Polls `predicate` (cheap, in-process) every `interval` seconds until it returns a truthy value (which it
    returns); raises TimeoutError naming `what` after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if loop.time() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)
