"""A pod of the sandbox as local processes: what the kubelet does for one pod, minus containers and images.

:class:`PodRunner` holds a scheduled pod's directory, its own address (``status.podIP``, a loopback address of
:class:`PodAddresses`, where its processes listen at the container ports as rendered) and its containers;
:class:`ContainerRunner` runs one container's command as a local process in its own process group with the
container's environment (secrets and config maps resolved from the API, volumes mapped to directories under the data
dir, ``KUBELLM_HOST`` the pod's address, as a network namespace would give it), runs its startup,
readiness and liveness probes as the kubelet does (:mod:`kubellm_sandbox.probes`), restarts it with the kubelet's
back-off, and reports what containerStatuses and the pod's status say. The loop that creates, schedules and stops
pods is :mod:`kubellm_sandbox.runner`; it is the :class:`PodHost` here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import logging
import os
import pathlib
import random
import re
import shutil
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from kubellm.contract import DEFAULT_CACHE_DIR, env_name
from kubellm.timefmt import now_rfc3339
from kubellm_sandbox.probes import (
    ProbeCounter,
    ProbeError,
    ProbeKind,
    ProbeResult,
    ProbeSpec,
    Verdict,
    parse_probe,
    run_probe,
)
from kubellm_sandbox.processes import die_with_parent, process_start_time

logger = logging.getLogger("kubellm.sandbox.pods")
JsonObject = dict[str, Any]

# Each pod gets its own loopback address, as a cluster gives each pod its own IP, and its processes listen on it at
# the container ports as rendered; 127.0.0.1 is the node's (the API, the Service forwarding).
POD_ADDRESSES = tuple(f"127.0.0.{host}" for host in range(2, 255))
CONTAINER_ID_SCHEME = "sandbox://"  # containerID = sandbox://<pid> of the container's process
BACK_OFF_RESET_SECONDS = 600  # the kubelet forgets a container's back-off after it ran this long
# The kubelet keeps at most 4096 bytes of a termination message file; with FallbackToLogsOnError it takes the
# last 80 lines, at most 2048 bytes, of the log of a container that failed without writing one.
TERMINATION_MESSAGE_MAX_BYTES = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048


@dataclasses.dataclass(frozen=True)
class RunnerSettings:
    data_dir: pathlib.Path
    node_name: str
    back_off_initial_s: float = 10.0  # the kubelet's container restart back-off: 10s doubling up to 5 minutes
    back_off_max_s: float = 300.0
    resync_s: float = 1.0
    forward_retry_s: float = 15.0
    max_termination_grace_s: float | None = None  # cap on terminationGracePeriodSeconds (tests); None: as specified


class PodHost(Protocol):
    """What a pod needs from the runner: settings, the API's objects, Events, and a nudge when its status changed."""

    settings: RunnerSettings

    def wake(self) -> None: ...

    def get_object(
        self, group: str, version: str, plural: str, namespace: str | None, name: str
    ) -> JsonObject | None: ...

    def post_event(self, obj: Mapping[str, Any], kind: str, reason: str, message: str, *, component: str) -> None: ...


def kubellm_executable() -> str:
    """The `kubellm` script of the running interpreter's environment (the venv), else the one on PATH."""
    candidate = pathlib.Path(sys.executable).with_name("kubellm")
    if candidate.is_file():
        return str(candidate)
    return shutil.which("kubellm") or "kubellm"


def resolve_command(command: Sequence[str]) -> list[str]:
    """A container command as a local command line: `kubellm` is this environment's script."""
    parts = list(command)
    if parts and parts[0] == "kubellm":
        parts[0] = kubellm_executable()
    return parts


_VAR_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


def expand(value: str, env: Mapping[str, str]) -> str:
    """The kubelet's `$(VAR)` expansion: defined variables are substituted, `$$` escapes, unknown ones stay."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VAR_REFERENCE.sub(replace, value)


class ContainerConfigError(Exception):
    """The container cannot be started as configured (CreateContainerConfigError); the message says why."""


def _decode_secret_value(secret: Mapping[str, Any], key: str) -> str | None:
    if key in (secret.get("stringData") or {}):
        return str(secret["stringData"][key])
    data = secret.get("data") or {}
    if key not in data:
        return None
    return base64.b64decode(data[key]).decode()


def _container_ports(container: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [port for port in container.get("ports") or [] if port.get("containerPort")]


@dataclasses.dataclass
class ContainerState:
    """What containerStatuses report for one container."""

    state: JsonObject = dataclasses.field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: JsonObject = dataclasses.field(default_factory=dict)
    restart_count: int = 0
    started: bool = False
    ready: bool = False
    container_id: str | None = None


class ContainerRunner:
    """One container of one pod as a local process: start, probes, restarts with back-off, stop."""

    def __init__(self, pod: PodRunner, container: Mapping[str, Any]) -> None:
        self.pod = pod
        self.spec = container
        self.name = str(container.get("name", "container"))
        self.status = ContainerState()
        self.process: asyncio.subprocess.Process | None = None
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._kill_reason: str | None = None
        self._crashes = 0  # consecutive exits, for the back-off
        self.log_path = pod.directory / f"{self.name}.log"
        self.pid_path = pod.directory / f"{self.name}.pid"
        self.termination_message_path = pod.termination_message_path(container)
        self.probes: dict[ProbeKind, ProbeSpec] = {}
        self.probe_error: str | None = None
        try:
            for kind in ProbeKind:
                spec = parse_probe(kind, container.get(kind.value))
                if spec is not None:
                    self.probes[kind] = spec
        except ProbeError as error:
            self.probe_error = str(error)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"container {self.pod.key}/{self.name}")

    def changed(self) -> None:
        self.pod.changed()

    async def stop(self, grace_s: float) -> None:
        self._stopping.set()
        await self._terminate(grace_s)
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, timeout=grace_s + 10)
            if not self._task.done():
                self._task.cancel()

    async def _terminate(self, grace_s: float) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
            # A stopped (SIGSTOP) process would only see its SIGTERM after the grace period's SIGKILL; wake it.
            os.killpg(process.pid, signal.SIGCONT)
        try:
            await asyncio.wait_for(process.wait(), timeout=grace_s)
        except TimeoutError:
            logger.warning("%s/%s did not stop within %gs of SIGTERM; killing it", self.pod.key, self.name, grace_s)
        # The whole process group goes: children of the container's command must not outlive it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()

    def _back_off(self) -> float:
        if self._crashes <= 1:
            return 0.0  # the kubelet restarts a container at once the first time
        settings = self.pod.runner.settings
        return min(settings.back_off_initial_s * 2 ** (self._crashes - 2), settings.back_off_max_s)

    async def _sleep_unless_stopped(self, seconds: float) -> bool:
        """Sleeps; True when the container is being stopped meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        return self._stopping.is_set()

    async def _run(self) -> None:
        while not self._stopping.is_set():
            delay = self._back_off()
            if delay > 0:
                message = f"back-off {delay:g}s restarting failed container={self.name} pod={self.pod.name}"
                self.status.state = {"waiting": {"reason": "CrashLoopBackOff", "message": message}}
                self.changed()
                self.pod.event("Warning", "BackOff", "Back-off restarting failed container " + self.name)
                if await self._sleep_unless_stopped(delay):
                    return
            try:
                command, env = self.pod.command_and_env(self.spec)
            except ContainerConfigError as error:
                self.status.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(error)}}
                self.changed()
                self.pod.event("Warning", "Failed", f"Error: {error}")
                if await self._sleep_unless_stopped(self.pod.runner.settings.back_off_initial_s):
                    return
                continue
            started_at = now_rfc3339()
            began = time.monotonic()
            try:
                exit_code, reason, message = await self._run_once(command, env, started_at)
            except OSError as error:  # the pod's directory vanished, the disk is full, ...: a failed start
                logger.warning("%s/%s: cannot run the container: %s", self.pod.key, self.name, error)
                exit_code, reason, message = 128, "StartError", f"cannot run the container: {error}"
            ran_for = time.monotonic() - began
            self._crashes = 1 if ran_for > BACK_OFF_RESET_SECONDS else self._crashes + 1
            terminated: JsonObject = {
                "exitCode": exit_code,
                "reason": reason,
                "startedAt": started_at,
                "finishedAt": now_rfc3339(),
                "containerID": self.status.container_id,
            }
            if message:
                terminated["message"] = message
            self.status.ready = False
            self.status.started = False
            if self._stopping.is_set():
                self.status.state = {"terminated": terminated}
                self.changed()
                return
            self.status.last_state = {"terminated": terminated}
            self.status.state = {"waiting": {"reason": "ContainerCreating"}}
            self.status.restart_count += 1
            self.changed()

    async def _run_once(self, command: list[str], env: dict[str, str], started_at: str) -> tuple[int, str, str]:
        """Runs the process until it exits (or is killed by a probe or a stop): (exit code, reason, message)."""
        self._kill_reason = None
        # Each run starts with an empty termination message file, as each new container gets one from the kubelet.
        self.termination_message_path.write_bytes(b"")
        with self.log_path.open("ab") as log:
            log.write(f"--- {started_at} starting {' '.join(command)}\n".encode())
            log.flush()
            log_start = log.tell()
            try:
                self.process = await asyncio.create_subprocess_exec(
                    *command,
                    env=env,
                    cwd=str(self.pod.directory),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,  # its own process group: stopped as a whole
                    preexec_fn=die_with_parent,
                )
            except OSError as error:
                log.write(f"--- cannot start: {error}\n".encode())
                return 128, "StartError", f"failed to start the container's command: {error}"
        process = self.process
        self.pid_path.write_text(f"{process.pid} {process_start_time(process.pid) or ''}\n")
        self.status.container_id = f"{CONTAINER_ID_SCHEME}{process.pid}"
        self.status.state = {"running": {"startedAt": started_at}}
        self.status.started = ProbeKind.startup not in self.probes
        self.status.ready = False
        self.changed()
        self.pod.event("Normal", "Started", f"Started container {self.name} (local process {process.pid})")
        probing = asyncio.create_task(self._probe(process), name=f"probes {self.pod.key}/{self.name}")
        try:
            code = await process.wait()
        finally:
            probing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probing
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # leftovers of the group, if any
            self.pid_path.unlink(missing_ok=True)
        exit_code = 128 - code if code < 0 else code  # killed by signal N: 128+N, as a container runtime reports
        return exit_code, "Completed" if exit_code == 0 else "Error", self._termination_message(exit_code, log_start)

    def _termination_message(self, exit_code: int, log_start: int) -> str:
        """lastState.terminated.message, as the kubelet finds it: what the process wrote to its termination
        message file; else (a sandbox addition) why the sandbox killed it, e.g. the failing probe's answer; else,
        with terminationMessagePolicy FallbackToLogsOnError and a failure, the tail of this run's log."""
        try:
            with self.termination_message_path.open("rb") as file:
                written = file.read(TERMINATION_MESSAGE_MAX_BYTES)
        except OSError:
            written = b""
        if written.strip():
            return written.decode(errors="replace")
        if self._kill_reason is not None:
            return self._kill_reason
        if exit_code == 0 or self.spec.get("terminationMessagePolicy") != "FallbackToLogsOnError":
            return ""
        return _log_tail(self.log_path, log_start)

    async def _kill_for(self, process: asyncio.subprocess.Process, reason: str, detail: str) -> None:
        self._kill_reason = f"{reason}: {detail}"[:1024]
        self.pod.event("Normal", "Killing", f"Container {self.name} {reason}, will be restarted")
        await self._terminate(self.pod.grace_seconds())

    async def _probe(self, process: asyncio.subprocess.Process) -> None:
        startup = self.probes.get(ProbeKind.startup)
        if startup is not None:
            if not await self._probe_until(process, startup, stop_on_success=True):
                return
            self.status.started = True
            self.changed()
        tasks = []
        readiness = self.probes.get(ProbeKind.readiness)
        if readiness is None:
            self.status.ready = True
            self.changed()
        else:
            tasks.append(asyncio.create_task(self._probe_until(process, readiness, stop_on_success=False)))
        liveness = self.probes.get(ProbeKind.liveness)
        if liveness is not None:
            tasks.append(asyncio.create_task(self._probe_until(process, liveness, stop_on_success=False)))
        if not tasks:
            return
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    async def _probe_until(
        self, process: asyncio.subprocess.Process, spec: ProbeSpec, *, stop_on_success: bool
    ) -> bool:
        """Runs `spec` every period; False when it killed the container (startup or liveness failure)."""
        counter = ProbeCounter(spec)
        loop = asyncio.get_running_loop()
        await asyncio.sleep(spec.initial_delay_seconds)
        while process.returncode is None:
            began = loop.time()
            result = await self._probe_once(spec)
            verdict = counter.record(result)
            if not result.ok:
                self.pod.event("Warning", "Unhealthy", f"{_probe_title(spec.kind)} failed: {result.message}")
            if spec.kind == ProbeKind.readiness:
                if self.status.ready != (counter.passing is True):
                    self.status.ready = counter.passing is True
                    self.changed()
            elif verdict == Verdict.failed:
                await self._kill_for(process, f"failed {_probe_title(spec.kind).lower()}", result.message)
                return False
            elif verdict == Verdict.succeeded and stop_on_success:
                return True
            await asyncio.sleep(max(spec.period_seconds - (loop.time() - began), 0))
        return False

    async def _probe_once(self, spec: ProbeSpec) -> ProbeResult:
        try:
            _, env = self.pod.command_and_env(self.spec)
        except ContainerConfigError as error:
            return ProbeResult(False, str(error))
        return await run_probe(
            spec,
            resolve_port=lambda port: self.pod.address(self.spec, port),
            env=env,
            resolve_command=resolve_command,
        )

    def status_entry(self) -> JsonObject:
        entry: JsonObject = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "ready": self.status.ready,
            "started": self.status.started,
            "restartCount": self.status.restart_count,
            "state": self.status.state,
            "lastState": self.status.last_state,
        }
        if self.status.container_id:
            entry["containerID"] = self.status.container_id
        return entry


def _log_tail(path: pathlib.Path, start: int) -> str:
    """The last FALLBACK_LOG_LINES lines, at most FALLBACK_LOG_BYTES, of `path` from byte `start` on."""
    try:
        with path.open("rb") as log:
            end = log.seek(0, os.SEEK_END)
            # Enough bytes for the lines wanted, unless they are very long (then the byte limit cuts anyway).
            log.seek(max(start, end - 64 * FALLBACK_LOG_BYTES))
            text = log.read()
    except OSError:
        return ""
    tail = b"".join(text.splitlines(keepends=True)[-FALLBACK_LOG_LINES:])[-FALLBACK_LOG_BYTES:]
    return tail.decode(errors="replace")


def _probe_title(kind: ProbeKind) -> str:
    return {ProbeKind.startup: "Startup probe", ProbeKind.readiness: "Readiness probe"}.get(kind, "Liveness probe")


def pod_ports(spec: Mapping[str, Any]) -> list[int]:
    """Every container port a pod declares: what its processes will listen on at the pod's address."""
    return sorted({int(p["containerPort"]) for c in spec.get("containers") or [] for p in _container_ports(c)})


class PodAddressError(RuntimeError):
    """No pod address has the pod's container ports free."""


def _bindable(ip: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((ip, port))
        except OSError:
            return False
    return True


class PodAddresses:
    """The pod network: hands each pod an address of :data:`POD_ADDRESSES` where its container ports are free (other
    sandboxes and programs on this machine may hold some), starting at a random one so that two sandboxes rarely
    race for the same; the pod's processes bind it themselves (``KUBELLM_HOST``)."""

    def __init__(self) -> None:
        self._taken: set[str] = set()

    def allocate(self, ports: Sequence[int]) -> str:
        start = random.randrange(len(POD_ADDRESSES))
        for ip in POD_ADDRESSES[start:] + POD_ADDRESSES[:start]:
            if ip not in self._taken and all(_bindable(ip, port) for port in ports):
                self._taken.add(ip)
                return ip
        raise PodAddressError(f"no address of 127.0.0.2-254 has ports {list(ports)} free")

    def release(self, ip: str) -> None:
        self._taken.discard(ip)


class PodRunner:
    """One pod scheduled on the sandbox's node: its address, directories, environment and containers."""

    def __init__(self, runner: PodHost, pod: Mapping[str, Any], ip: str) -> None:
        metadata = pod["metadata"]
        self.runner = runner
        self.namespace = str(metadata.get("namespace") or "default")
        self.name = str(metadata["name"])
        self.uid = str(metadata["uid"])
        self.key = f"{self.namespace}/{self.name}"
        self.pod = pod
        self.spec: Mapping[str, Any] = pod.get("spec") or {}
        self.directory = runner.settings.data_dir / "pods" / self.namespace / self.name
        self.directory.mkdir(parents=True, exist_ok=True)
        self.started_at = now_rfc3339()
        self.ip = ip
        self.containers = [ContainerRunner(self, c) for c in self.spec.get("containers") or []]
        self.stopping = False

    def changed(self) -> None:
        self.runner.wake()

    def start(self) -> None:
        for container in self.containers:
            container.start()

    def grace_seconds(self) -> float:
        grace = float(self.spec.get("terminationGracePeriodSeconds", 30))
        cap = self.runner.settings.max_termination_grace_s
        return min(grace, cap) if cap is not None else grace

    async def stop(self) -> None:
        self.stopping = True
        await asyncio.gather(*(c.stop(self.grace_seconds()) for c in self.containers))

    def address(self, container: Mapping[str, Any], port: int | str | None) -> tuple[str, int] | None:
        """(pod IP, port) of a container port given by number or name, as the kubelet and kube-proxy dial it."""
        for declared in _container_ports(container):
            if port in (declared.get("name"), declared.get("containerPort"), str(declared.get("containerPort"))):
                return self.ip, int(declared["containerPort"])
        if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
            return self.ip, int(port)  # an undeclared numeric port: the process listens on it itself
        return None

    def volume_paths(self, container: Mapping[str, Any]) -> list[tuple[str, pathlib.Path]]:
        """(mountPath, local directory) for each of the container's mounts, longest mount path first."""
        volumes = {v.get("name"): v for v in self.spec.get("volumes") or []}
        data_dir = self.runner.settings.data_dir
        mapped: list[tuple[str, pathlib.Path]] = []
        for mount in container.get("volumeMounts") or []:
            mount_path = str(mount.get("mountPath") or "")
            volume = volumes.get(mount.get("name"))
            if volume is None:
                raise ContainerConfigError(f'volumeMounts: volume "{mount.get("name")}" is not in the pod\'s volumes')
            if mount_path == DEFAULT_CACHE_DIR:
                # The model cache outlives pods here: a restarted or new pod finds the converted model at once.
                local = data_dir / "cache"
            elif "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"].get("claimName", "")
                local = data_dir / "volumes" / self.namespace / str(claim)
            elif "emptyDir" in volume:
                local = self.directory / "volumes" / str(volume["name"])
            elif "hostPath" in volume:
                local = pathlib.Path(volume["hostPath"].get("path", "/"))
            else:
                raise ContainerConfigError(
                    f'volume "{volume.get("name")}": the sandbox maps emptyDir, persistentVolumeClaim and hostPath '
                    "volumes to directories; other kinds are not supported"
                )
            if mount.get("subPath"):
                local = local / str(mount["subPath"])
            local.mkdir(parents=True, exist_ok=True)
            mapped.append((mount_path.rstrip("/") or "/", local))
        return sorted(mapped, key=lambda pair: len(pair[0]), reverse=True)

    def termination_message_path(self, container: Mapping[str, Any]) -> pathlib.Path:
        """The local file standing in for the container's terminationMessagePath (the kubelet mounts one there)."""
        return self.directory / f"{container.get('name', 'container')}.termination-log"

    def command_and_env(self, container: Mapping[str, Any]) -> tuple[list[str], dict[str, str]]:
        """The container's command line and environment as a local process (mounts mapped, secrets resolved)."""
        mounts = self.volume_paths(container)

        def local_path(value: str) -> str:
            # A path under a mount is the mount's directory here. A path that exists on this machine is left
            # alone: a pod cannot see it, but pointing model.name at a local folder is how one serves it locally.
            if (
                value.startswith("/")
                and value != "/"
                and pathlib.Path(value).exists()
                and not any(value == mount_path for mount_path, _ in mounts)
            ):
                return value
            for mount_path, local in mounts:
                if value == mount_path or value.startswith(mount_path + "/"):
                    return str(local) + value[len(mount_path) :]
            return value

        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            env.update(self._env_from(source))
        for var in container.get("env") or []:
            name = str(var.get("name"))
            if "valueFrom" in var:
                value = self._value_from(var["valueFrom"], container)
                if value is None:
                    continue
            else:
                value = expand(str(var.get("value", "")), env)
            env[name] = local_path(value)
        ports = _container_ports(container)
        if ports:
            first = next((p for p in ports if p.get("name") == "http"), ports[0])
            # What a pod's network namespace gives it: its own address. The process binds it at the rendered port
            # (kubellm's server listens on KUBELLM_HOST; in a cluster it binds 0.0.0.0 inside the namespace).
            env[env_name("port")] = str(first["containerPort"])
            env[env_name("host")] = self.ip
        # No file can be mounted at the container's terminationMessagePath here: kubellm's server is told where
        # its stand-in is (other programs would write /dev/termination-log, which the sandbox does not read).
        env[env_name("termination_message_path")] = str(self.termination_message_path(container))
        tmp = next((local for mount_path, local in mounts if mount_path == "/tmp"), None)
        if tmp is not None:
            env.setdefault("TMPDIR", str(tmp))
        # What an image would provide: a PATH (this environment's scripts first) and unbuffered Python logs.
        bin_dir = str(pathlib.Path(sys.executable).parent)
        env.setdefault("PATH", os.pathsep.join([bin_dir, os.environ.get("PATH", "/usr/bin:/bin")]))
        env.setdefault("PYTHONUNBUFFERED", "1")
        # PYTHONPATH: the pods run the code of the tree the sandbox runs (a worktree's, not another install's),
        # as an image built from that tree would.
        for name in ("LANG", "LC_ALL", "TZ", "PYTHONPATH"):
            if name in os.environ:
                env.setdefault(name, os.environ[name])
        arguments = [expand(str(a), env) for a in container.get("args") or []]
        raw_command = [expand(str(c), env) for c in container.get("command") or []]
        if not raw_command:
            raise ContainerConfigError(
                f"container {container.get('name')} has no command: the sandbox runs a container's command as a "
                "local process and cannot run an image's entrypoint"
            )
        command = resolve_command([local_path(part) for part in raw_command + arguments])
        return command, env

    def _value_from(self, source: Mapping[str, Any], container: Mapping[str, Any]) -> str | None:
        if "secretKeyRef" in source or "configMapKeyRef" in source:
            secret = "secretKeyRef" in source
            ref = source["secretKeyRef" if secret else "configMapKeyRef"]
            kind = "secret" if secret else "configmap"
            obj = self.runner.get_object("", "v1", "secrets" if secret else "configmaps", self.namespace, ref["name"])
            if obj is None:
                if ref.get("optional"):
                    return None
                raise ContainerConfigError(f'{kind} "{ref["name"]}" not found')
            value = _decode_secret_value(obj, ref["key"]) if secret else (obj.get("data") or {}).get(ref["key"])
            if value is None:
                if ref.get("optional"):
                    return None
                raise ContainerConfigError(
                    f"couldn't find key {ref['key']} in {kind.capitalize()} {self.namespace}/{ref['name']}"
                )
            return str(value)
        if "fieldRef" in source:
            path = source["fieldRef"].get("fieldPath", "")
            fields = {
                "metadata.name": self.name,
                "metadata.namespace": self.namespace,
                "metadata.uid": self.uid,
                "spec.nodeName": self.runner.settings.node_name,
                "spec.serviceAccountName": str(self.spec.get("serviceAccountName") or "default"),
                "status.podIP": self.ip,
                "status.hostIP": "127.0.0.1",
            }
            return fields.get(path, "")
        if "resourceFieldRef" in source:
            ref = source["resourceFieldRef"]
            resources = container.get("resources") or {}
            kind, _, what = str(ref.get("resource", "")).partition(".")
            value = (resources.get(kind) or {}).get(what)
            return str(value) if value is not None else ""
        return None

    def _env_from(self, source: Mapping[str, Any]) -> dict[str, str]:
        prefix = str(source.get("prefix") or "")
        for field, plural in (("secretRef", "secrets"), ("configMapRef", "configmaps")):
            if field not in source:
                continue
            ref = source[field]
            obj = self.runner.get_object("", "v1", plural, self.namespace, ref.get("name", ""))
            if obj is None:
                if ref.get("optional"):
                    return {}
                raise ContainerConfigError(f'{plural[:-1]} "{ref.get("name")}" not found')
            keys = set(obj.get("data") or {}) | set(obj.get("stringData") or {})
            if plural == "secrets":
                return {prefix + key: _decode_secret_value(obj, key) or "" for key in keys}
            return {prefix + key: str(value) for key, value in (obj.get("data") or {}).items()}
        return {}

    def event(self, kind: str, reason: str, message: str) -> None:
        self.runner.post_event(self.pod, kind, reason, message, component="kubelet")

    def status(self) -> JsonObject:
        """The pod's status as the kubelet reports it."""
        containers = [c.status_entry() for c in self.containers]
        all_ready = bool(containers) and all(c["ready"] for c in containers)
        running = [c for c in containers if "running" in c["state"]]
        terminated = [c for c in containers if "terminated" in c["state"]]
        if self.stopping and len(terminated) == len(containers):
            phase = "Succeeded" if all(c["state"]["terminated"]["exitCode"] == 0 for c in terminated) else "Failed"
        elif running or any(c["restartCount"] for c in containers):
            phase = "Running"
        else:
            phase = "Pending"
        previous = {c.get("type"): c for c in (self.pod.get("status") or {}).get("conditions") or []}
        now = now_rfc3339()

        def condition(kind: str, ok: bool, reason: str | None = None) -> JsonObject:
            status = "True" if ok else "False"
            before = previous.get(kind) or {}
            entry: JsonObject = {
                "type": kind,
                "status": status,
                "lastProbeTime": None,
                "lastTransitionTime": before.get("lastTransitionTime")
                if before.get("status") == status and before.get("lastTransitionTime")
                else now,
            }
            if reason and not ok:
                entry["reason"] = reason
            return entry

        not_ready = [c["name"] for c in containers if not c["ready"]]
        ready_reason = "ContainersNotReady" if not_ready else None
        conditions = [
            condition("PodReadyToStartContainers", True),
            condition("Initialized", True),
            condition("Ready", all_ready and not self.stopping, ready_reason),
            condition("ContainersReady", all_ready, ready_reason),
            condition("PodScheduled", True),
        ]
        for entry in conditions:
            if entry["type"] in ("Ready", "ContainersReady") and not_ready:
                entry["message"] = f"containers with unready status: [{' '.join(not_ready)}]"
        return {
            "phase": phase,
            "conditions": conditions,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "startTime": self.started_at,
            "qosClass": _qos_class(self.spec),
            "containerStatuses": containers,
        }


def _qos_class(spec: Mapping[str, Any]) -> str:
    resources = [c.get("resources") or {} for c in spec.get("containers") or []]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "BestEffort"
    guaranteed = all(
        (r.get("limits") or {}).get(kind) is not None
        and (r.get("requests") or {}).get(kind, (r.get("limits") or {}).get(kind)) == (r.get("limits") or {}).get(kind)
        for r in resources
        for kind in ("cpu", "memory")
    )
    return "Guaranteed" if guaranteed else "Burstable"
