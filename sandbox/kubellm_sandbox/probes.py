"""The sandbox kubelet's probes: a container's startupProbe, readinessProbe and livenessProbe, run as the kubelet does.

A probe is parsed from the container's manifest (:func:`parse_probe`), executed once by :func:`run_probe` (an HTTP
GET against the pod's local port, or a command with the pod's environment, both bounded by ``timeoutSeconds``), and
its consecutive results are counted by :class:`ProbeCounter`, which applies ``successThreshold`` and
``failureThreshold`` exactly as the kubelet's prober does. The scheduling (``periodSeconds``, startup gating the
other two) lives in the runner; everything here is a pure function of its inputs except :func:`run_probe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import json
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp

# Kubernetes defaults for a probe's fields (core/v1 Probe).
DEFAULT_PERIOD_SECONDS = 10
DEFAULT_TIMEOUT_SECONDS = 1
DEFAULT_FAILURE_THRESHOLD = 3
DEFAULT_SUCCESS_THRESHOLD = 1
# The kubelet reports at most this much of a failed probe's output in the pod's events.
OUTPUT_LIMIT = 10 * 1024


class ProbeKind(enum.StrEnum):
    startup = "startupProbe"
    readiness = "readinessProbe"
    liveness = "livenessProbe"


@dataclasses.dataclass(frozen=True)
class ProbeSpec:
    """One probe of a container, with the Kubernetes defaults filled in."""

    kind: ProbeKind
    period_seconds: float
    timeout_seconds: float
    failure_threshold: int
    success_threshold: int
    initial_delay_seconds: float
    http_path: str | None = None
    http_port: int | str | None = None
    http_scheme: str = "HTTP"
    http_headers: tuple[tuple[str, str], ...] = ()
    exec_command: tuple[str, ...] | None = None
    tcp_port: int | str | None = None

    def describe(self) -> str:
        if self.exec_command is not None:
            action = "exec " + " ".join(self.exec_command)
        elif self.http_path is not None:
            action = f"http-get {self.http_path} port {self.http_port}"
        else:
            action = f"tcp-socket port {self.tcp_port}"
        return (
            f"{self.kind.value}: {action} delay={self.initial_delay_seconds:g}s timeout={self.timeout_seconds:g}s "
            f"period={self.period_seconds:g}s #success={self.success_threshold} #failure={self.failure_threshold}"
        )


class ProbeError(ValueError):
    """A probe the sandbox cannot run (no action, or one it does not implement); the message names the field."""


def _number(probe: Mapping[str, Any], field: str, default: float, minimum: float, kind: ProbeKind) -> float:
    value = probe.get(field)
    if value is None:
        return float(default)
    if not isinstance(value, int | float) or isinstance(value, bool) or value < minimum:
        raise ProbeError(f"{kind.value}.{field} must be a number >= {minimum:g}, got {value!r}")
    return float(value)


def parse_probe(kind: ProbeKind, probe: Mapping[str, Any] | None) -> ProbeSpec | None:
    """The container's `kind` probe as a :class:`ProbeSpec`, or None when the container has none."""
    if not probe:
        return None
    base = ProbeSpec(
        kind,
        period_seconds=_number(probe, "periodSeconds", DEFAULT_PERIOD_SECONDS, 1, kind),
        timeout_seconds=_number(probe, "timeoutSeconds", DEFAULT_TIMEOUT_SECONDS, 1, kind),
        failure_threshold=int(_number(probe, "failureThreshold", DEFAULT_FAILURE_THRESHOLD, 1, kind)),
        success_threshold=int(_number(probe, "successThreshold", DEFAULT_SUCCESS_THRESHOLD, 1, kind)),
        initial_delay_seconds=_number(probe, "initialDelaySeconds", 0, 0, kind),
    )
    if kind != ProbeKind.readiness and base.success_threshold != 1:
        raise ProbeError(f"{kind.value}.successThreshold must be 1 for liveness and startup probes")
    if "httpGet" in probe:
        http = probe["httpGet"] or {}
        headers = tuple((str(h.get("name", "")), str(h.get("value", ""))) for h in http.get("httpHeaders") or [])
        return dataclasses.replace(
            base,
            http_path=str(http.get("path") or "/"),
            http_port=http.get("port"),
            http_scheme=str(http.get("scheme") or "HTTP").upper(),
            http_headers=headers,
        )
    if "exec" in probe:
        command = (probe["exec"] or {}).get("command") or []
        if not command:
            raise ProbeError(f"{kind.value}.exec.command must name a command")
        return dataclasses.replace(base, exec_command=tuple(str(part) for part in command))
    if "tcpSocket" in probe:
        return dataclasses.replace(base, tcp_port=(probe["tcpSocket"] or {}).get("port"))
    raise ProbeError(f"{kind.value} has no httpGet, exec or tcpSocket action the sandbox can run")


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    ok: bool
    message: str


def _error_text(body: str) -> str:
    """A failed probe's body for messages: the `error.message` of a JSON error envelope (kubellm's), else the text."""
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        message = json.loads(body)["error"]["message"]
        if isinstance(message, str):
            return message
    return body.strip()[:300]


async def _http_get(url: str, headers: Mapping[str, str], timeout: float) -> ProbeResult:
    # The kubelet counts 200-399 as success; redirects are not followed to another host (none exist locally).
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    try:
        async with (
            aiohttp.ClientSession(timeout=client_timeout) as session,
            session.get(url, headers=dict(headers), allow_redirects=False) as response,
        ):
            body = (await response.content.read(OUTPUT_LIMIT)).decode(errors="replace")
            if 200 <= response.status < 400:
                return ProbeResult(True, f"HTTP probe succeeded with statuscode: {response.status}")
            return ProbeResult(False, f"HTTP probe failed with statuscode: {response.status}: {_error_text(body)}")
    except TimeoutError:
        return ProbeResult(False, f'Get "{url}": context deadline exceeded (Client.Timeout exceeded)')
    except aiohttp.ClientConnectorError as error:
        return ProbeResult(False, f'Get "{url}": dial tcp {error.host}:{error.port}: connect: {error.strerror}')
    except aiohttp.ClientError as error:
        return ProbeResult(False, f'Get "{url}": {error}')


async def _exec(command: Sequence[str], env: Mapping[str, str], timeout: float) -> ProbeResult:
    try:
        process = await asyncio.create_subprocess_exec(
            *command,
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as error:
        return ProbeResult(False, f"exec {command[0]}: {error}")
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout=timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        return ProbeResult(False, f"command timed out after {timeout:g}s")
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        raise
    text = output[:OUTPUT_LIMIT].decode(errors="replace").strip()
    if process.returncode == 0:
        return ProbeResult(True, text)
    return ProbeResult(False, f"command exited with {process.returncode}: {text}")


async def _tcp(host: str, port: int, timeout: float) -> ProbeResult:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=timeout)
    except (OSError, TimeoutError) as error:
        return ProbeResult(False, f"dial tcp {host}:{port}: {error or 'timeout'}")
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return ProbeResult(True, "")


async def run_probe(
    spec: ProbeSpec,
    *,
    resolve_port: Callable[[int | str | None], tuple[str, int] | None],
    env: Mapping[str, str],
    resolve_command: Callable[[Sequence[str]], list[str]] = list,
) -> ProbeResult:
    """Runs the probe once. `resolve_port` maps the probe's port (number or container port name) to the pod's
    (IP, port), as the kubelet dials the pod IP."""
    if spec.exec_command is not None:
        return await _exec(resolve_command(spec.exec_command), env, spec.timeout_seconds)
    address = resolve_port(spec.http_port if spec.http_path is not None else spec.tcp_port)
    if address is None:
        wanted = spec.http_port if spec.http_path is not None else spec.tcp_port
        return ProbeResult(False, f"the probe's port {wanted!r} names no port of the container")
    host, port = address
    if spec.http_path is None:
        return await _tcp(host, port, spec.timeout_seconds)
    if spec.http_scheme != "HTTP":
        return ProbeResult(False, f"scheme {spec.http_scheme} is not served by local processes")
    path = spec.http_path if spec.http_path.startswith("/") else "/" + spec.http_path
    return await _http_get(f"http://{host}:{port}{path}", dict(spec.http_headers), spec.timeout_seconds)


class Verdict(enum.Enum):
    """What the kubelet concludes after a probe result."""

    unchanged = "unchanged"
    succeeded = "succeeded"  # the threshold of consecutive successes was just reached
    failed = "failed"  # the threshold of consecutive failures was just reached


@dataclasses.dataclass
class ProbeCounter:
    """Consecutive results of one probe and the state they imply (the kubelet's worker, minus the clock).

    `passing` starts as None (unknown: readiness is false, the startup probe has not succeeded); a success
    threshold reached makes it True, a failure threshold reached makes it False.
    """

    spec: ProbeSpec
    successes: int = 0
    failures: int = 0
    passing: bool | None = None
    last_message: str = ""

    def record(self, result: ProbeResult) -> Verdict:
        self.last_message = result.message
        if result.ok:
            self.failures = 0
            self.successes += 1
            if self.successes >= self.spec.success_threshold and self.passing is not True:
                self.passing = True
                return Verdict.succeeded
            return Verdict.unchanged
        self.successes = 0
        self.failures += 1
        if self.failures >= self.spec.failure_threshold and self.passing is not False:
            self.passing = False
            return Verdict.failed
        if self.failures >= self.spec.failure_threshold and self.spec.kind != ProbeKind.readiness:
            # Liveness and startup act on every failure past the threshold (the container is killed each time).
            return Verdict.failed
        return Verdict.unchanged

    def reset(self) -> None:
        """A restarted container starts its probes over."""
        self.successes = self.failures = 0
        self.passing = None
        self.last_message = ""
