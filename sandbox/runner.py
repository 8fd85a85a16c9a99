"""The sandbox's local runner: Deployment controller, scheduler, kubelet and kube-proxy for kubellm's Deployments.

It works on the emulator's object store in-process, level-based: every change in the API (and a one-second tick)
runs one pass that

- plans each kubellm Deployment's pods (:mod:`kubellm_sandbox.deployments`: scale, rolling update) and creates or
  deletes Pod objects (owned by the Deployment, labelled with ``pod-template-hash``);
- schedules its pods onto the sandbox's one Node (nodeSelector and resource requests against allocatable);
- runs each scheduled pod's containers as local processes (:class:`ContainerRunner`: the container's command and
  environment, secrets resolved, volumes mapped to directories under the data dir, ``KUBELLM_PORT`` set to a free
  local port, its own process group, logs in a file), with the startup, readiness and liveness probes run as the
  kubelet runs them (:mod:`kubellm_sandbox.probes`), restarts with back-off (CrashLoopBackOff), and pod status
  written back (phase, conditions, containerStatuses);
- rolls the pods up into the Deployment's status, so the operator's status logic runs unchanged;
- forwards each Service port on 127.0.0.1 to the ready pods (:mod:`kubellm_sandbox.forwarding`).

Pods carry a finalizer of the runner's, so deleting one (by hand, by scale-down, or by garbage collection after
its LLMService is deleted) leaves it Terminating until its processes have stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import re
import secrets
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from kubellm_inference.settings import DEFAULT_CACHE_DIR, env_name
from kubellm_operator.api import parse_quantity
from kubellm_operator.render import SELECTOR_LABEL
from kubellm_sandbox.deployments import (
    POD_TEMPLATE_HASH,
    deployment_status,
    is_ready,
    is_terminating,
    plan_rollout,
    template_hash,
)
from kubellm_sandbox.emulator.errors import ApiError
from kubellm_sandbox.emulator.store import PATCH_MERGE, ObjectStore, WriteOptions, now_rfc3339
from kubellm_sandbox.forwarding import PortForwarder
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

logger = logging.getLogger("kubellm.sandbox.runner")
JsonObject = dict[str, Any]

FIELD_MANAGER = "kubellm-sandbox"
FINALIZER = "sandbox.kubellm.dev/local-process"
PORTS_ANNOTATION = "sandbox.kubellm.dev/local-ports"  # on pods: container port -> 127.0.0.1 port
FORWARDING_ANNOTATION = "sandbox.kubellm.dev/forwarding"  # on Services: what the runner listens on, or why not
MANAGED_BY = ("app.kubernetes.io/managed-by", "kubellm")
CONTAINER_ID_SCHEME = "sandbox://"  # containerID = sandbox://<pid> of the container's process
BACK_OFF_RESET_SECONDS = 600  # the kubelet forgets a container's back-off after it ran this long


@dataclasses.dataclass(frozen=True)
class RunnerSettings:
    data_dir: pathlib.Path
    node_name: str
    back_off_initial_s: float = 10.0  # the kubelet's container restart back-off: 10s doubling up to 5 minutes
    back_off_max_s: float = 300.0
    resync_s: float = 1.0
    forward_retry_s: float = 15.0
    max_termination_grace_s: float | None = None  # cap on terminationGracePeriodSeconds (tests); None: as specified


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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


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
    import base64

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
                last = (self.status.last_state.get("terminated") or {}).get("message")
                if last:
                    # The kubelet's message stops here; the sandbox adds why the last run ended (e.g. the
                    # startup probe's answer "model load failed: ..."), which the operator shows on the LLMService.
                    message += f"; last run: {last}"
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
            exit_code, reason, message = await self._run_once(command, env, started_at)
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
        with self.log_path.open("ab") as log:
            log.write(f"--- {started_at} starting {' '.join(command)}\n".encode())
            log.flush()
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
        if self._kill_reason is not None:
            return exit_code, "Error" if exit_code else "Completed", self._kill_reason
        return exit_code, "Completed" if exit_code == 0 else "Error", ""

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
            resolve_port=lambda port: self.pod.local_port(self.spec, port),
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


def _probe_title(kind: ProbeKind) -> str:
    return {ProbeKind.startup: "Startup probe", ProbeKind.readiness: "Readiness probe"}.get(kind, "Liveness probe")


def die_with_parent() -> None:
    """In a child before exec (Linux): SIGTERM it when the sandbox dies, even by SIGKILL, so no pod is orphaned."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def process_start_time(pid: int) -> str | None:
    """A running process's start time (clock ticks since boot, /proc/<pid>/stat field 22), which tells a reused
    pid apart; None when no such process runs (a zombie counts as gone). "" where /proc is missing."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if pathlib.Path("/proc/self/stat").exists():
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return ""
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]


class PodRunner:
    """One pod scheduled on the sandbox's node: its directories, ports, environment and containers."""

    def __init__(self, runner: LocalRunner, pod: Mapping[str, Any]) -> None:
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
        self.ports: dict[str, int] = {}  # "<container>/<containerPort>" -> local port
        for container in self.spec.get("containers") or []:
            for port in _container_ports(container):
                self.ports[f"{container.get('name')}/{port['containerPort']}"] = free_port()
        self.containers = [ContainerRunner(self, c) for c in self.spec.get("containers") or []]
        self.stopping = False
        self.stopped = asyncio.Event()
        self._events: dict[str, int] = {}

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
        self.stopped.set()

    def local_port(self, container: Mapping[str, Any], port: int | str | None) -> int | None:
        """The local port a container port (number or name) maps to."""
        for declared in _container_ports(container):
            if port in (declared.get("name"), declared.get("containerPort"), str(declared.get("containerPort"))):
                return self.ports.get(f"{container.get('name')}/{declared['containerPort']}")
        if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
            return int(port)  # an undeclared numeric port: the process listens on it itself
        return None

    def ports_annotation(self) -> str:
        return ",".join(f"{key}=127.0.0.1:{port}" for key, port in sorted(self.ports.items()))

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
            local = self.local_port(container, first["containerPort"])
            # The pod's container port maps to this local port; kubellm's server listens where it says.
            env[env_name("port")] = str(local)
            env[env_name("host")] = "127.0.0.1"
        tmp = next((local for mount_path, local in mounts if mount_path == "/tmp"), None)
        if tmp is not None:
            env.setdefault("TMPDIR", str(tmp))
        # What an image would provide: a PATH (this environment's scripts first) and unbuffered Python logs.
        bin_dir = str(pathlib.Path(sys.executable).parent)
        env.setdefault("PATH", os.pathsep.join([bin_dir, os.environ.get("PATH", "/usr/bin:/bin")]))
        env.setdefault("PYTHONUNBUFFERED", "1")
        for name in ("LANG", "LC_ALL", "TZ"):
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
                "status.podIP": "127.0.0.1",
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
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
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


def _requests(pod: Mapping[str, Any]) -> dict[str, Decimal]:
    totals: dict[str, Decimal] = {}
    for container in (pod.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        wanted = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        for name, value in wanted.items():
            if name in ("cpu", "memory", "ephemeral-storage") or "/" in name:
                with contextlib.suppress(ValueError):
                    totals[name] = totals.get(name, Decimal(0)) + parse_quantity(value)
    return totals


def unschedulable_reason(
    pod: Mapping[str, Any], node: Mapping[str, Any], others: Sequence[Mapping[str, Any]]
) -> str | None:
    """Why `pod` does not fit on `node` next to the pods already there (the scheduler's message), or None."""
    selector = (pod.get("spec") or {}).get("nodeSelector") or {}
    labels = (node.get("metadata") or {}).get("labels") or {}
    if any(labels.get(key) != value for key, value in selector.items()):
        return "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    used: dict[str, Decimal] = {}
    for other in others:
        for name, value in _requests(other).items():
            used[name] = used.get(name, Decimal(0)) + value
    short = []
    for name, value in sorted(_requests(pod).items()):
        if name == "memory" and name not in (
            ((pod.get("spec") or {}).get("containers") or [{}])[0].get("resources") or {}
        ).get("requests", {}):
            pass
        available = parse_quantity(allocatable[name]) if name in allocatable else Decimal(0)
        if value > 0 and used.get(name, Decimal(0)) + value > available:
            short.append(f"Insufficient {name}")
    if short:
        return "0/1 nodes are available: " + ", ".join(f"1 {reason}" for reason in short) + "."
    return None


def _owner_uid(obj: Mapping[str, Any], kind: str) -> str | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == kind and ref.get("controller", True):
            return str(ref.get("uid"))
    return None


def is_kubellm_deployment(deployment: Mapping[str, Any]) -> bool:
    """Deployments the runner runs: those kubellm renders (managed-by kubellm, with the LLMService selector label)."""
    labels = (deployment.get("metadata") or {}).get("labels") or {}
    return labels.get(MANAGED_BY[0]) == MANAGED_BY[1] and SELECTOR_LABEL in labels


def _pod_name(deployment_name: str, hash_value: str) -> str:
    return f"{deployment_name}-{hash_value}-{''.join(secrets.choice('bcdfghjklmnpqrstvwxz2456789') for _ in range(5))}"


class LocalRunner:
    """The level-based loop over the store; `await runner.run(stop)` until `stop` is set, then every process stops."""

    def __init__(self, store: ObjectStore, settings: RunnerSettings) -> None:
        self.store = store
        self.settings = settings
        self.pods: dict[str, PodRunner] = {}  # pod uid -> its runner
        self.forwarders: dict[int, PortForwarder] = {}  # local port -> forwarder
        self._forward_owner: dict[int, str] = {}  # local port -> "namespace/service/port"
        self._forward_failed: dict[str, tuple[float, str]] = {}  # service port key -> (next retry, message)
        self._written_status: dict[str, str] = {}  # object key -> last status written (JSON)
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping_pods: dict[str, asyncio.Task[None]] = {}
        self._events: dict[str, JsonObject] = {}
        self.write = WriteOptions(field_manager=FIELD_MANAGER)

    # -- wiring ---------------------------------------------------------------------------------------------

    def wake(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wake.set()
        else:
            loop.call_soon_threadsafe(wake.set)

    def rtype(self, group: str, version: str, plural: str) -> Any:
        return self.store.type_for(group, version, plural)

    def get_object(self, group: str, version: str, plural: str, namespace: str | None, name: str) -> JsonObject | None:
        try:
            return self.store.get(self.rtype(group, version, plural), namespace, name)
        except ApiError:
            return None

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.store.add_listener(self.wake)
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    self.reconcile()
                    await self.reconcile_forwarding()
                except Exception:
                    logger.exception("sandbox runner pass failed; retrying")
                waiter = asyncio.create_task(self._wake.wait())
                stopper = asyncio.create_task(stop.wait())
                await asyncio.wait(
                    {waiter, stopper}, timeout=self.settings.resync_s, return_when=asyncio.FIRST_COMPLETED
                )
                waiter.cancel()
                stopper.cancel()
                await asyncio.sleep(0.05)  # coalesce bursts of changes into one pass
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        """Stops every pod's processes and every forwarder (the sandbox is going away)."""
        for pod in list(self.pods.values()):
            self._stop_pod(pod)
        if self._stopping_pods:
            await asyncio.gather(*self._stopping_pods.values(), return_exceptions=True)
        for forwarder in self.forwarders.values():
            await forwarder.stop()
        self.forwarders.clear()

    # -- one pass -------------------------------------------------------------------------------------------

    def reconcile(self) -> None:
        deployments_type = self.rtype("apps", "v1", "deployments")
        pods_type = self.rtype("", "v1", "pods")
        deployments, _ = self.store.list_objects(deployments_type, None, is_kubellm_deployment)
        pods, _ = self.store.list_objects(pods_type, None)
        by_owner: dict[str, list[JsonObject]] = {}
        for pod in pods:
            owner = _owner_uid(pod, "Deployment")
            if owner is not None:
                by_owner.setdefault(owner, []).append(pod)
        managed_uids = {d["metadata"]["uid"] for d in deployments}
        for deployment in deployments:
            self._control(deployment, by_owner.get(deployment["metadata"]["uid"], []))
        ours = [
            pod
            for pod in pods
            if _owner_uid(pod, "Deployment") in managed_uids or FINALIZER in (pod["metadata"].get("finalizers") or [])
        ]
        self._schedule(ours)
        self._kubelet(ours)
        pods, _ = self.store.list_objects(pods_type, None)
        by_owner = {}
        for pod in pods:
            owner = _owner_uid(pod, "Deployment")
            if owner is not None:
                by_owner.setdefault(owner, []).append(pod)
        for deployment in deployments:
            self._roll_up(deployment, by_owner.get(deployment["metadata"]["uid"], []))
        live = {f"pod/{pod['metadata']['uid']}" for pod in pods} | {f"deployment/{uid}" for uid in managed_uids}
        for key in set(self._written_status) - live:
            del self._written_status[key]

    def _control(self, deployment: JsonObject, pods: list[JsonObject]) -> None:
        metadata = deployment["metadata"]
        if metadata.get("deletionTimestamp"):
            return
        try:
            plan = plan_rollout(deployment, pods)
        except ValueError as error:
            self.post_event(deployment, "Warning", "InvalidStrategy", str(error), component="deployment-controller")
            return
        pods_type = self.rtype("", "v1", "pods")
        namespace = metadata.get("namespace") or "default"
        for name in plan.delete:
            with contextlib.suppress(ApiError):
                self.store.delete(pods_type, namespace, name, options=self.write)
                self.post_event(
                    deployment, "Normal", "ScalingReplicaSet", f"Deleted pod {name}", component="deployment-controller"
                )
        template = (deployment.get("spec") or {}).get("template") or {}
        hash_value = template_hash(template)
        for _ in range(plan.create):
            pod_metadata = template.get("metadata") or {}
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": _pod_name(metadata["name"], hash_value),
                    "namespace": namespace,
                    "labels": {**(pod_metadata.get("labels") or {}), POD_TEMPLATE_HASH: hash_value},
                    "annotations": dict(pod_metadata.get("annotations") or {}),
                    "finalizers": [FINALIZER],
                    "ownerReferences": [
                        {
                            "apiVersion": "apps/v1",
                            "kind": "Deployment",
                            "name": metadata["name"],
                            "uid": metadata["uid"],
                            "controller": True,
                            "blockOwnerDeletion": True,
                        }
                    ],
                },
                "spec": json.loads(json.dumps(template.get("spec") or {})),
            }
            created = self.store.create(pods_type, namespace, pod, self.write)
            self.post_event(
                deployment,
                "Normal",
                "SuccessfulCreate",
                f"Created pod: {created['metadata']['name']}",
                component="deployment-controller",
            )

    def _schedule(self, pods: list[JsonObject]) -> None:
        node = self.get_object("", "v1", "nodes", None, self.settings.node_name)
        if node is None:
            return
        pods_type = self.rtype("", "v1", "pods")
        bound = [
            pod
            for pod in pods
            if (pod.get("spec") or {}).get("nodeName")
            and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        ]
        for pod in pods:
            spec = pod.get("spec") or {}
            if spec.get("nodeName") or is_terminating(pod):
                continue
            reason = unschedulable_reason(pod, node, bound)
            namespace, name = pod["metadata"].get("namespace"), pod["metadata"]["name"]
            if reason is None:
                self.store.patch(
                    pods_type,
                    namespace,
                    name,
                    PATCH_MERGE,
                    {"spec": {"nodeName": self.settings.node_name}},
                    options=self.write,
                )
                self.post_event(
                    pod,
                    "Normal",
                    "Scheduled",
                    f"Successfully assigned {namespace}/{name} to {self.settings.node_name}",
                    component="default-scheduler",
                )
                bound.append(pod)
                continue
            status = {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": reason,
                        "lastProbeTime": None,
                        "lastTransitionTime": now_rfc3339(),
                    }
                ],
            }
            if self._changed_status(f"pod/{pod['metadata']['uid']}", status, ignore_times=True):
                self.store.patch(
                    pods_type,
                    namespace,
                    name,
                    PATCH_MERGE,
                    {"status": status},
                    subresource="status",
                    options=self.write,
                )
                self.post_event(pod, "Warning", "FailedScheduling", reason, component="default-scheduler")

    def _kubelet(self, pods: list[JsonObject]) -> None:
        pods_type = self.rtype("", "v1", "pods")
        present = {pod["metadata"]["uid"]: pod for pod in pods}
        for uid, existing in list(self.pods.items()):
            gone = present.get(uid)
            if gone is None or is_terminating(gone):
                self._stop_pod(existing)
        for uid, pod in present.items():
            metadata = pod["metadata"]
            if is_terminating(pod):
                if uid not in self.pods and uid not in self._stopping_pods:
                    self._release(pod)
                continue
            if (pod.get("spec") or {}).get("nodeName") != self.settings.node_name:
                continue
            runner = self.pods.get(uid)
            if runner is None:
                runner = self.pods[uid] = PodRunner(self, pod)
                self.store.patch(
                    pods_type,
                    metadata.get("namespace"),
                    metadata["name"],
                    PATCH_MERGE,
                    {"metadata": {"annotations": {PORTS_ANNOTATION: runner.ports_annotation()}}},
                    options=self.write,
                )
                runner.start()
            runner.pod = pod
            status = runner.status()
            if self._changed_status(f"pod/{uid}", status, ignore_times=True):
                with contextlib.suppress(ApiError):
                    self.store.patch(
                        pods_type,
                        metadata.get("namespace"),
                        metadata["name"],
                        PATCH_MERGE,
                        {"status": status},
                        subresource="status",
                        options=self.write,
                    )

    def _stop_pod(self, runner: PodRunner) -> None:
        self.pods.pop(runner.uid, None)
        if runner.uid in self._stopping_pods:
            return

        async def stop_then_release() -> None:
            try:
                await runner.stop()
            finally:
                self._stopping_pods.pop(runner.uid, None)
                pod = self.get_object("", "v1", "pods", runner.namespace, runner.name)
                if pod is not None and pod["metadata"]["uid"] == runner.uid:
                    with contextlib.suppress(ApiError):
                        status = runner.status()
                        self.store.patch(
                            self.rtype("", "v1", "pods"),
                            runner.namespace,
                            runner.name,
                            PATCH_MERGE,
                            {"status": status},
                            subresource="status",
                            options=self.write,
                        )
                    self._release(pod)
                shutil.rmtree(runner.directory, ignore_errors=True)
                self.wake()

        self._stopping_pods[runner.uid] = asyncio.create_task(stop_then_release(), name=f"stop {runner.key}")

    def _release(self, pod: JsonObject) -> None:
        """Removes the runner's finalizer: the pod's processes are gone, so the API may let the pod go."""
        metadata = pod["metadata"]
        finalizers = metadata.get("finalizers") or []
        if FINALIZER not in finalizers:
            return
        with contextlib.suppress(ApiError):
            self.store.patch(
                self.rtype("", "v1", "pods"),
                metadata.get("namespace"),
                metadata["name"],
                PATCH_MERGE,
                {
                    "metadata": {
                        "finalizers": [f for f in finalizers if f != FINALIZER] or None,
                        "resourceVersion": metadata["resourceVersion"],
                    }
                },
                options=self.write,
            )

    def _roll_up(self, deployment: JsonObject, pods: list[JsonObject]) -> None:
        metadata = deployment["metadata"]
        status = deployment_status(deployment, pods, now_rfc3339())
        if not self._changed_status(
            f"deployment/{metadata['uid']}", status, ignore_times=True, current=deployment.get("status")
        ):
            return
        with contextlib.suppress(ApiError):
            self.store.patch(
                self.rtype("apps", "v1", "deployments"),
                metadata.get("namespace"),
                metadata["name"],
                PATCH_MERGE,
                {"status": {**{k: None for k in (deployment.get("status") or {}) if k not in status}, **status}},
                subresource="status",
                options=self.write,
            )

    def _changed_status(self, key: str, status: Mapping[str, Any], *, ignore_times: bool, current: Any = None) -> bool:
        """Whether `status` differs from what was last written for `key` (times aside); records it if so."""
        comparable = _without_times(status) if ignore_times else status
        text = json.dumps(comparable, sort_keys=True)
        if current is not None and json.dumps(_without_times(current), sort_keys=True) == text:
            self._written_status[key] = text
            return False
        if self._written_status.get(key) == text:
            return False
        self._written_status[key] = text
        return True

    # -- services -------------------------------------------------------------------------------------------

    async def reconcile_forwarding(self) -> None:
        services, _ = self.store.list_objects(self.rtype("", "v1", "services"), None)
        pods = [runner for runner in self.pods.values() if not runner.stopping]
        wanted: dict[int, tuple[str, JsonObject, list[int]]] = {}
        for service in services:
            spec = service.get("spec") or {}
            selector = spec.get("selector") or {}
            if not selector:
                continue
            namespace = service["metadata"].get("namespace") or "default"
            for port in spec.get("ports") or []:
                if (port.get("protocol") or "TCP") != "TCP" or not port.get("port"):
                    continue
                key = f"{namespace}/{service['metadata']['name']}:{port['port']}"
                backends = []
                for runner in pods:
                    labels = (runner.pod.get("metadata") or {}).get("labels") or {}
                    if runner.namespace != namespace or any(labels.get(k) != v for k, v in selector.items()):
                        continue
                    if not is_ready(runner.pod):
                        continue
                    target = port.get("targetPort", port["port"])
                    for container in runner.spec.get("containers") or []:
                        local = runner.local_port(container, target)
                        if local is not None:
                            backends.append(local)
                            break
                local_port = int(port["port"])
                if local_port in wanted and wanted[local_port][0] != key:
                    self._forward_problem(
                        service, key, f"127.0.0.1:{local_port} is already forwarded for {wanted[local_port][0]}"
                    )
                    continue
                wanted[local_port] = (key, service, backends)
        for local_port in list(self.forwarders):
            if local_port not in wanted or self._forward_owner.get(local_port) != wanted[local_port][0]:
                logger.info("no longer forwarding 127.0.0.1:%d (%s)", local_port, self._forward_owner.get(local_port))
                await self.forwarders.pop(local_port).stop()
                self._forward_owner.pop(local_port, None)
        loop_time = asyncio.get_running_loop().time()
        for local_port, (key, service, backends) in wanted.items():
            forwarder = self.forwarders.get(local_port)
            if forwarder is None:
                retry_at, _ = self._forward_failed.get(key, (0.0, ""))
                if loop_time < retry_at:
                    continue
                forwarder = PortForwarder(local_port, name=key)
                try:
                    await forwarder.start()
                except OSError as error:
                    message = f"cannot listen on 127.0.0.1:{local_port} ({error.strerror or error}); another program holds the port"
                    self._forward_failed[key] = (loop_time + self.settings.forward_retry_s, message)
                    self._forward_problem(service, key, message)
                    continue
                self._forward_failed.pop(key, None)
                self.forwarders[local_port] = forwarder
                self._forward_owner[local_port] = key
                logger.info("forwarding 127.0.0.1:%d to the ready pods of %s", local_port, key)
                self._annotate(service, f"127.0.0.1:{local_port}")
            forwarder.set_backends(backends)

    def _forward_problem(self, service: JsonObject, key: str, message: str) -> None:
        if self._annotate(service, f"unavailable: {message}"):
            logger.warning("service %s: %s", key, message)
            self.post_event(service, "Warning", "PortUnavailable", message, component="kubellm-sandbox")

    def _annotate(self, service: JsonObject, value: str) -> bool:
        annotations = (service.get("metadata") or {}).get("annotations") or {}
        if annotations.get(FORWARDING_ANNOTATION) == value:
            return False
        with contextlib.suppress(ApiError):
            self.store.patch(
                self.rtype("", "v1", "services"),
                service["metadata"].get("namespace"),
                service["metadata"]["name"],
                PATCH_MERGE,
                {"metadata": {"annotations": {FORWARDING_ANNOTATION: value}}},
                options=self.write,
            )
        return True

    # -- events ---------------------------------------------------------------------------------------------

    def post_event(self, obj: Mapping[str, Any], kind: str, reason: str, message: str, *, component: str) -> None:
        """A core/v1 Event about `obj`; repeats of the same one bump its count, as the kubelet's recorder does."""
        metadata = obj.get("metadata") or {}
        namespace = metadata.get("namespace") or "default"
        digest = hashlib.sha1(f"{metadata.get('uid')}|{reason}|{message}".encode()).hexdigest()[:12]
        name = f"{metadata.get('name')}.{digest}"
        now = now_rfc3339()
        events = self.rtype("", "v1", "events")
        try:
            existing = self.store.get(events, namespace, name)
        except ApiError:
            existing = None
        try:
            if existing is not None:
                self.store.patch(
                    events,
                    namespace,
                    name,
                    PATCH_MERGE,
                    {"count": int(existing.get("count") or 1) + 1, "lastTimestamp": now},
                    options=self.write,
                )
                return
            self.store.create(
                events,
                namespace,
                {
                    "metadata": {"name": name, "namespace": namespace},
                    "involvedObject": {
                        "apiVersion": obj.get("apiVersion"),
                        "kind": obj.get("kind"),
                        "name": metadata.get("name"),
                        "namespace": namespace,
                        "uid": metadata.get("uid"),
                    },
                    "reason": reason,
                    "message": message,
                    "type": kind,
                    "count": 1,
                    "firstTimestamp": now,
                    "lastTimestamp": now,
                    "source": {"component": component, "host": self.settings.node_name},
                    "reportingComponent": component,
                },
                self.write,
            )
        except ApiError as error:
            logger.debug("could not record the %s Event: %s", reason, error)


def _without_times(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _without_times(v)
            for k, v in value.items()
            if k not in ("lastTransitionTime", "lastUpdateTime", "lastProbeTime", "lastHeartbeatTime")
        }
    if isinstance(value, list):
        return [_without_times(v) for v in value]
    return value


def stop_leftover_processes(data_dir: pathlib.Path, log: Callable[[str], None] = logger.info) -> int:
    """Kills the process groups of pod processes a dead sandbox left behind (their pid files); returns how many."""
    killed = 0
    for pid_file in sorted((data_dir / "pods").glob("*/*/*.pid")):
        if kill_recorded_group(pid_file):
            log(f"stopped a leftover pod process ({pid_file.parent.name}/{pid_file.stem})")
            killed += 1
        pid_file.unlink(missing_ok=True)
    return killed


def recorded_pid(pid_file: pathlib.Path) -> int | None:
    """The pid in a pid file ("pid start-time") if that very process still runs, else None."""
    try:
        parts = pid_file.read_text().split()
        pid, start = int(parts[0]), parts[1] if len(parts) > 1 else ""
    except (OSError, ValueError, IndexError):
        return None
    current = process_start_time(pid)
    if current is None or (start and current and current != start):
        return None
    return pid


def kill_recorded_group(pid_file: pathlib.Path, grace_s: float = 5.0) -> bool:
    """SIGTERM, then SIGKILL after `grace_s`, to the process group of a live recorded pid."""
    pid = recorded_pid(pid_file)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and recorded_pid(pid_file) is not None:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    return True
