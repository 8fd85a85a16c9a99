"""The running sandbox: the API emulator, this machine as a Node, the local runner and the operator, in one process.

:func:`serve` is what `kubellm sandbox up` runs (in the foreground, or detached in the background): it serves the
emulator on 127.0.0.1 with the LLMService CRD applied, seeds the Node and refreshes its disk figures, runs the
:class:`~kubellm_sandbox.runner.LocalRunner` in-process, and runs `kubellm operator` as a child process against
its own kubeconfig (restarted if it exits), as the ServiceAccount that deploy/ installs and with only deploy/'s RBAC. SIGINT or SIGTERM stops all of it: pods first, then the operator,
then the API. The files it keeps under the data directory are described by :class:`Layout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import yaml

from kubellm_emulator import Emulator
from kubellm_hub.sandbox import DEMO_PORT
from kubellm_operator.config import DEFAULT_HUB_REDIRECT_HOSTS
from kubellm_operator.crd import crd
from kubellm_sandbox import host
from kubellm_sandbox.pods import RunnerSettings, kubellm_executable
from kubellm_sandbox.processes import die_with_parent, process_start_time, stop_leftover_processes
from kubellm_sandbox.runner import LocalRunner

logger = logging.getLogger("kubellm.sandbox")
# What `kubectl apply -k deploy/` installs for the operator's identity, applied into the emulator so that the
# operator runs with exactly those permissions (present in a source checkout, where the sandbox runs from).
DEPLOY = pathlib.Path(__file__).resolve().parents[2] / "deploy"
# The sandbox's node is this machine, whose kubelet summary it emulates: it opts into the kubelet-stats component,
# so the storage pre-flight reads real free bytes instead of counting requests.
OPERATOR_IDENTITY = ("namespace.yaml", "serviceaccount.yaml", "rbac.yaml", "components/kubelet-stats/rbac.yaml")
OPERATOR_SERVICE_ACCOUNT = ("kubellm-system", "kubellm-operator")
GATEWAY_SERVICE_ACCOUNT = ("kubellm-system", "kubellm-gateway")
NODE_REFRESH_S = 30.0
OPERATOR_STOP_GRACE_S = 15.0


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a sandbox keeps its files (all under `root`, `.kubellm/sandbox` by default)."""

    root: pathlib.Path

    @property
    def pid_file(self) -> pathlib.Path:
        return self.root / "sandbox.pid"

    @property
    def operator_pid_file(self) -> pathlib.Path:
        return self.root / "operator.pid"

    @property
    def state_file(self) -> pathlib.Path:
        return self.root / "sandbox.json"

    @property
    def kubeconfig(self) -> pathlib.Path:
        return self.root / "kubeconfig"

    @property
    def gateway_pid_file(self) -> pathlib.Path:
        return self.root / "gateway.pid"

    @property
    def gateway_kubeconfig(self) -> pathlib.Path:
        """The gateway's: deploy/components/gateway's ServiceAccount."""
        return self.root / "gateway.kubeconfig"

    @property
    def gateway_log(self) -> pathlib.Path:
        return self.logs / "gateway.log"

    @property
    def operator_kubeconfig(self) -> pathlib.Path:
        """The operator's: its ServiceAccount's token (the `kubeconfig` above is the cluster admin's, for you)."""
        return self.root / "operator.kubeconfig"

    @property
    def logs(self) -> pathlib.Path:
        return self.root / "logs"

    @property
    def sandbox_log(self) -> pathlib.Path:
        return self.logs / "sandbox.log"

    @property
    def operator_log(self) -> pathlib.Path:
        return self.logs / "operator.log"


def write_pid_file(path: pathlib.Path, pid: int) -> None:
    path.write_text(f"{pid} {process_start_time(pid) or ''}\n")


def operator_command(kubeconfig: pathlib.Path, metrics_port: int) -> list[str]:
    # Not the default port (8080 is often taken on a laptop): a free one on 127.0.0.1, named in sandbox.json, where
    # a local Prometheus scrapes /metrics (tests/monitoring).
    return [
        kubellm_executable(),
        "operator",
        "--kubeconfig",
        str(kubeconfig),
        "--health-host",
        "127.0.0.1",
        "--health-port",
        str(metrics_port),
    ]


def operator_environment() -> dict[str, str]:
    env = dict(os.environ)
    # The operator reads the kubelet summary (this disk's free bytes) more often than in a cluster: it is cheap here.
    env.setdefault("KUBELLM_OPERATOR_SUMMARY_REFRESH_S", "15")
    # This machine is the cluster: the pods' addresses are loopback ones (127.0.0.x), and so is the demo hub
    # (examples/hub-tiny.yaml, kubellm_hub.sandbox.DEMO_PORT, its CDN on another port). An operator setting, as an
    # administrator would allow a single-node cluster's or an in-cluster mirror's addresses.
    env.setdefault("KUBELLM_OPERATOR_EGRESS_ALLOW_LOOPBACK", "true")
    env.setdefault("KUBELLM_OPERATOR_ALLOWED_HUB_ENDPOINTS", f"https://huggingface.co,http://127.0.0.1:{DEMO_PORT}")
    env.setdefault("KUBELLM_OPERATOR_HUB_REDIRECT_HOSTS", ",".join([*DEFAULT_HUB_REDIRECT_HOSTS, "127.0.0.1"]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def gateway_command(kubeconfig: pathlib.Path, port: int) -> list[str]:
    # The gateway serves the namespaces LLMServices are applied to here; it listens on 127.0.0.1 only.
    return [
        kubellm_executable(),
        "gateway",
        "--kubeconfig",
        str(kubeconfig),
        "--namespaces",
        "*",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--identity",
        "sandbox-gateway",
    ]


class ChildProcess:
    """A kubellm component (`kubellm operator`, `kubellm gateway`) as a child process in its own process group,
    restarted with back-off when it exits."""

    def __init__(
        self, name: str, command: list[str], env: dict[str, str], log: pathlib.Path, pid_file: pathlib.Path
    ) -> None:
        self.name, self.command, self.env, self.log, self.pid_file = name, command, env, log, pid_file
        self.process: asyncio.subprocess.Process | None = None
        self._stop = asyncio.Event()
        self.restarts = 0

    async def run(self) -> None:
        delay = 1.0
        while not self._stop.is_set():
            began = time.monotonic()
            with self.log.open("ab") as log:
                self.process = await asyncio.create_subprocess_exec(
                    *self.command,
                    env=self.env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=die_with_parent,
                )
            write_pid_file(self.pid_file, self.process.pid)
            logger.info("%s started (pid %d); log: %s", self.name, self.process.pid, self.log)
            code = await self.process.wait()
            self.pid_file.unlink(missing_ok=True)
            if self._stop.is_set():
                return
            self.restarts += 1
            delay = 1.0 if time.monotonic() - began > 60 else min(delay * 2, 30.0)
            logger.warning("%s exited with %s; restarting in %.0fs (see %s)", self.name, code, delay, self.log)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=delay)

    async def stop(self) -> None:
        self._stop.set()
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout=OPERATOR_STOP_GRACE_S)
        except TimeoutError:
            logger.warning("%s did not stop within %.0fs; killing it", self.name, OPERATOR_STOP_GRACE_S)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        self.pid_file.unlink(missing_ok=True)


def operator_process(layout: Layout, metrics_port: int) -> ChildProcess:
    return ChildProcess(
        "operator",
        operator_command(layout.operator_kubeconfig, metrics_port),
        operator_environment(),
        layout.operator_log,
        layout.operator_pid_file,
    )


def gateway_process(layout: Layout, port: int) -> ChildProcess:
    env = dict(os.environ) | {"PYTHONUNBUFFERED": "1"}
    command = gateway_command(layout.gateway_kubeconfig, port)
    return ChildProcess("gateway", command, env, layout.gateway_log, layout.gateway_pid_file)


def admin_token(layout: Layout) -> str:
    """The cluster admin's bearer token, from the sandbox's kubeconfig (for the CLI's own plain-HTTP reads)."""
    config = yaml.safe_load(layout.kubeconfig.read_text())
    return str(config["users"][0]["user"]["token"])


def install_operator_identity(emulator: Emulator, layout: Layout) -> None:
    """deploy/'s namespace, ServiceAccount and RBAC into the emulator, and the operator's kubeconfig for that
    ServiceAccount; without a deploy/ folder (an installed wheel) the operator gets the admin's kubeconfig."""
    files = [DEPLOY / name for name in OPERATOR_IDENTITY]
    if not all(path.is_file() for path in files):
        logger.warning("no deploy/ manifests at %s: the operator runs as the cluster admin", DEPLOY)
        # Where the operator's leader Lease lives (deploy/namespace.yaml creates it otherwise).
        emulator.apply_manifest({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kubellm-system"}})
        emulator.write_kubeconfig(layout.operator_kubeconfig, context="kubellm-sandbox")
        return
    for path in files:
        emulator.apply_manifests(path)
    emulator.write_kubeconfig(
        layout.operator_kubeconfig, context="kubellm-sandbox-operator", service_account=OPERATOR_SERVICE_ACCOUNT
    )


def install_gateway_identity(emulator: Emulator, layout: Layout) -> None:
    """deploy/components/gateway's ServiceAccount and RBAC, and the gateway's kubeconfig for it (the admin's without
    a deploy/ folder)."""
    files = [DEPLOY / "components" / "gateway" / name for name in ("serviceaccount.yaml", "rbac.yaml")]
    if not all(path.is_file() for path in files):
        emulator.write_kubeconfig(layout.gateway_kubeconfig, context="kubellm-sandbox")
        return
    for path in files:
        emulator.apply_manifests(path)
    emulator.write_kubeconfig(
        layout.gateway_kubeconfig, context="kubellm-sandbox-gateway", service_account=GATEWAY_SERVICE_ACCOUNT
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def seed_node(emulator: Emulator, name: str, data_dir: pathlib.Path) -> None:
    emulator.seed_node(name, **host.node_fields(data_dir))
    emulator.seed_node_stats(name, **host.stats_fields(data_dir))


async def refresh_node_stats(emulator: Emulator, name: str, data_dir: pathlib.Path, stop: asyncio.Event) -> None:
    """Re-measures the disk for the kubelet summary (no Node write, so no watch event unless the size changes)."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=NODE_REFRESH_S)
        with contextlib.suppress(OSError):
            emulator.seed_node_stats(name, **host.stats_fields(data_dir))


async def serve(
    layout: Layout,
    *,
    api_port: int = 0,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[dict[str, Any]], None] | None = None,
    with_operator: bool = True,
    runner_settings: dict[str, Any] | None = None,
    gateway_port: int = 0,
) -> None:
    """Runs the sandbox until `stop` is set (or SIGINT/SIGTERM, when `stop` is not given). Raises OSError when
    the API port cannot be bound."""
    stop = stop if stop is not None else _signal_stop()
    layout.logs.mkdir(parents=True, exist_ok=True)
    stop_leftover_processes(layout.root)
    node = host.node_name()
    async with Emulator(requested_port=api_port or None) as emulator:
        emulator.apply_manifest(crd())
        seed_node(emulator, node, layout.root)
        emulator.write_kubeconfig(layout.kubeconfig, context="kubellm-sandbox")
        install_operator_identity(emulator, layout)
        runner = LocalRunner(
            emulator.store, RunnerSettings(data_dir=layout.root, node_name=node, **(runner_settings or {}))
        )
        tasks = [
            asyncio.create_task(runner.run(stop), name="runner"),
            asyncio.create_task(refresh_node_stats(emulator, node, layout.root, stop), name="node-stats"),
        ]
        children: list[ChildProcess] = []
        gateway_url = operator_metrics = None
        if with_operator:
            install_gateway_identity(emulator, layout)
            port = gateway_port or free_port()
            metrics_port = free_port()  # kept across the operator's restarts, so a scrape config stays valid
            children = [operator_process(layout, metrics_port), gateway_process(layout, port)]
            gateway_url = f"http://127.0.0.1:{port}"
            operator_metrics = f"127.0.0.1:{metrics_port}"
        for child in children:
            tasks.append(asyncio.create_task(child.run(), name=child.name))
        state = {
            "pid": os.getpid(),
            "api_url": emulator.api_url,
            "gateway_url": gateway_url,
            "operator_metrics": operator_metrics,
            "kubeconfig": str(layout.kubeconfig.resolve()),
            "node": node,
            "data_dir": str(layout.root.resolve()),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        layout.state_file.write_text(json.dumps(state, indent=2) + "\n")
        logger.info("sandbox API %s; node %s; kubeconfig %s", emulator.api_url, node, layout.kubeconfig)
        if on_ready is not None:
            on_ready(state)
        try:
            await stop.wait()
        finally:
            logger.info("stopping the sandbox: pods, operator and gateway, API")
            stop.set()
            # The runner stops every pod's processes on its way out; the operator goes after, then the API.
            await asyncio.gather(tasks[0], return_exceptions=True)
            await asyncio.gather(*(child.stop() for child in children))
            for task in tasks[1:]:
                task.cancel()
            await asyncio.gather(*tasks[1:], return_exceptions=True)
            layout.state_file.unlink(missing_ok=True)


def _signal_stop() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, stop.set)
    return stop


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # The emulator logs every refused request at INFO; the sandbox's log is for the sandbox's own story.
    logging.getLogger("kubellm_emulator").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
