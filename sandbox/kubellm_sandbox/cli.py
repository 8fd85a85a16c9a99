"""`kubellm sandbox up|down|status`: the whole kubellm loop on this machine, without a cluster.

`up` starts the sandbox (:mod:`kubellm_sandbox.supervisor`: API emulator, this machine as a Node, the operator, the
local runner) in the background, or in the foreground with ``--foreground`` (Ctrl-C stops everything), and prints
``export KUBECONFIG=...`` on stdout (so ``eval "$(kubellm sandbox up)"`` works). `down` stops it and everything it
started; `status` says what runs and lists the LLMServices and their pods.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from kubellm_sandbox.pods import CONTAINER_ID_SCHEME
from kubellm_sandbox.processes import kill_recorded_group, process_start_time, recorded_pid, stop_leftover_processes
from kubellm_sandbox.runner import FORWARDING_ANNOTATION
from kubellm_sandbox.supervisor import Layout, admin_token, configure_logging, serve, write_pid_file

DEFAULT_DATA_DIR = pathlib.Path(".kubellm/sandbox")
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 90.0  # pods drain in-flight requests first (the rendered grace period is 45s)


class SandboxError(Exception):
    """A problem the user can act on; the message says what to do."""


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def read_state(layout: Layout) -> dict[str, Any] | None:
    """The running sandbox's state (API URL, kubeconfig, pid), or None when none runs there."""
    pid = recorded_pid(layout.pid_file)
    if pid is None:
        return None
    try:
        state: dict[str, Any] = json.loads(layout.state_file.read_text())
    except (OSError, ValueError):
        return {"pid": pid, "starting": True}
    return state if state.get("pid") == pid else {"pid": pid, "starting": True}


def clean_stale(layout: Layout) -> bool:
    """Removes what a dead sandbox left (pid files, its operator and pod processes); True if there was something."""
    found = False
    if layout.pid_file.exists() and recorded_pid(layout.pid_file) is None:
        _say(f"kubellm sandbox: cleaning up after a sandbox that is no longer running ({layout.pid_file})")
        found = True
    for what, pid_file in (("operator", layout.operator_pid_file), ("gateway", layout.gateway_pid_file)):
        if kill_recorded_group(pid_file):
            _say(f"kubellm sandbox: stopped a leftover {what} process")
            found = True
    if layout.root.exists() and stop_leftover_processes(layout.root, _say):
        found = True
    for path in (layout.pid_file, layout.operator_pid_file, layout.gateway_pid_file, layout.state_file):
        path.unlink(missing_ok=True)
    return found


def export_line(layout: Layout) -> str:
    return f"export KUBECONFIG={layout.kubeconfig.resolve()}"


def _print_ready(state: dict[str, Any], layout: Layout) -> None:
    _say(
        f"kubellm sandbox is up: API {state['api_url']} (pid {state['pid']}), node {state['node']}\n"
        + (
            f"  gateway (one OpenAI endpoint, model NAMESPACE/NAME): {state['gateway_url']}/v1\n"
            if state.get("gateway_url")
            else ""
        )
        + f"  operator, gateway, local runner and logs: {layout.logs.resolve()}\n"
        + (f"  operator metrics: http://{state['operator_metrics']}/metrics\n" if state.get("operator_metrics") else "")
        + "  stop it with: kubellm sandbox down"
        + (f" --data-dir {layout.root}" if layout.root != DEFAULT_DATA_DIR else "")
    )
    print(export_line(layout), flush=True)


def up(layout: Layout, *, api_port: int = 0, foreground: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Starts a sandbox (or finds the running one); returns its state. Raises SandboxError."""
    state = read_state(layout)
    if state is not None and not state.get("starting"):
        if not quiet:
            _say(f"kubellm sandbox: already running in {layout.root} (pid {state['pid']}, API {state['api_url']})")
            print(export_line(layout), flush=True)
        return state
    if state is not None:
        raise SandboxError(f"a sandbox is starting in {layout.root} (pid {state['pid']}); try again in a moment")
    clean_stale(layout)
    if api_port and not _port_free(api_port):
        raise SandboxError(
            f"--api-port {api_port}: 127.0.0.1:{api_port} is already in use; pick another port, or leave "
            "--api-port out to use a free one"
        )
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.logs.mkdir(parents=True, exist_ok=True)
    if foreground:
        run_foreground(layout, api_port=api_port)
        return {}
    command = [sys.executable, "-m", "kubellm_sandbox.cli", "serve", "--data-dir", str(layout.root)]
    if api_port:
        command += ["--api-port", str(api_port)]
    with layout.sandbox_log.open("ab") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        state = read_state(layout)
        if state is not None and not state.get("starting") and state.get("pid") == process.pid:
            if not quiet:
                _print_ready(state, layout)
            return state
        if process.poll() is not None:
            raise SandboxError(f"the sandbox exited during its start:\n{_tail(layout.sandbox_log)}")
        time.sleep(0.1)
    _stop_pid(process.pid, process_group=True)
    raise SandboxError(f"the sandbox did not start within {START_TIMEOUT_S:.0f}s:\n{_tail(layout.sandbox_log)}")


def run_foreground(layout: Layout, *, api_port: int = 0, announce: bool = True) -> None:
    """Runs the sandbox in this process until Ctrl-C (SIGINT) or SIGTERM."""
    configure_logging()
    write_pid_file(layout.pid_file, os.getpid())
    try:
        asyncio.run(
            serve(layout, api_port=api_port, on_ready=(lambda s: _print_ready(s, layout)) if announce else None)
        )
    except OSError as error:
        raise SandboxError(f"cannot start the API on 127.0.0.1:{api_port or 'a free port'}: {error}") from error
    finally:
        layout.pid_file.unlink(missing_ok=True)


def _stop_pid(pid: int, *, process_group: bool) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if process_group:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)


def down(layout: Layout) -> bool:
    """Stops the sandbox and everything it started; False when none was running."""
    pid = recorded_pid(layout.pid_file)
    if pid is None:
        cleaned = clean_stale(layout)
        _say(f"kubellm sandbox: no sandbox is running in {layout.root}" + ("" if not cleaned else " (cleaned up)"))
        return False
    _say(f"kubellm sandbox: stopping (pid {pid}): pods, operator, API ...")
    start_time = process_start_time(pid)

    def alive() -> bool:
        return start_time is not None and process_start_time(pid) == start_time

    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and alive():
        time.sleep(0.1)
    if alive():
        _say(f"kubellm sandbox: it did not stop within {STOP_TIMEOUT_S:.0f}s; killing it")
        _stop_pid(pid, process_group=os.getpgid(pid) == pid)
    clean_stale(layout)
    _say("kubellm sandbox: stopped")
    return True


def _tail(path: pathlib.Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def api_get(api_url: str, path: str, token: str) -> dict[str, Any]:
    request = urllib.request.Request(api_url + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        body: dict[str, Any] = json.load(response)
        return body


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return dict(condition)
    return {}


def _pod_addresses(pod: dict[str, Any]) -> str:
    """podIP:port of each container port (where the pod's processes listen), or "-"."""
    ip = (pod.get("status") or {}).get("podIP")
    ports = [p["containerPort"] for c in pod["spec"].get("containers") or [] for p in c.get("ports") or []]
    return ",".join(f"{ip}:{port}" for port in ports) if ip and ports else "-"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def status(layout: Layout) -> int:
    state = read_state(layout)
    if state is None:
        clean_stale(layout)
        print(f"no sandbox is running in {layout.root}; start one with: kubellm sandbox up")
        return 1
    if state.get("starting"):
        print(f"a sandbox is starting in {layout.root} (pid {state['pid']})")
        return 0
    operator = recorded_pid(layout.operator_pid_file)
    print(f"sandbox: running (pid {state['pid']}), API {state['api_url']}, node {state['node']}")
    print(f"operator: running (pid {operator})" if operator else f"operator: not running (see {layout.operator_log})")
    gateway = recorded_pid(layout.gateway_pid_file)
    if state.get("gateway_url"):
        running = f"running (pid {gateway}) on {state['gateway_url']}"
        print(f"gateway: {running}" if gateway else f"gateway: not running (see {layout.gateway_log})")
    print(f"local runner: in the sandbox process; pod logs under {layout.root / 'pods'}")
    print(export_line(layout))
    try:
        token = admin_token(layout)
        services = api_get(state["api_url"], "/apis/kubellm.dev/v1alpha1/llmservices", token)["items"]
        pods = api_get(state["api_url"], "/api/v1/pods", token)["items"]
        forwarded = api_get(state["api_url"], "/api/v1/services", token)["items"]
    except (OSError, urllib.error.URLError, KeyError, ValueError) as error:
        print(f"cannot read the API: {error}")
        return 1
    print()
    if not services:
        print("no LLMServices; try: kubectl apply -f examples/tiny-smollm2.yaml")
    else:
        rows = [["NAMESPACE", "NAME", "PHASE", "READY", "REASON", "MESSAGE"]]
        for item in services:
            ready = _condition(item, "Ready")
            rows.append(
                [
                    item["metadata"].get("namespace", ""),
                    item["metadata"]["name"],
                    str((item.get("status") or {}).get("phase", "")),
                    str((item.get("status") or {}).get("ready", "")),
                    str(ready.get("reason", "")),
                    str(ready.get("message", ""))[:80],
                ]
            )
        print(_table(rows))
    if pods:
        print()
        rows = [["POD", "PHASE", "READY", "RESTARTS", "STATE", "PID", "ADDRESS"]]
        for pod in pods:
            containers = (pod.get("status") or {}).get("containerStatuses") or []
            states = [next(iter(c.get("state") or {"waiting": {}})) for c in containers]
            reasons = [
                ((c.get("state") or {}).get(s) or {}).get("reason") or s
                for c, s in zip(containers, states, strict=True)
            ]
            pids = [
                str(c.get("containerID", "")).removeprefix(CONTAINER_ID_SCHEME)
                for c in containers
                if "running" in (c.get("state") or {})
            ]
            rows.append(
                [
                    f"{pod['metadata'].get('namespace')}/{pod['metadata']['name']}",
                    str((pod.get("status") or {}).get("phase", "")),
                    f"{sum(1 for c in containers if c.get('ready'))}/{len((pod.get('spec') or {}).get('containers') or [])}",
                    str(sum(int(c.get("restartCount") or 0) for c in containers)),
                    ",".join(reasons) or "-",
                    ",".join(pids) or "-",
                    _pod_addresses(pod),
                ]
            )
        print(_table(rows))
    forwards = [
        (
            f"{s['metadata'].get('namespace')}/{s['metadata']['name']}",
            (s["metadata"].get("annotations") or {}).get(FORWARDING_ANNOTATION),
        )
        for s in forwarded
    ]
    forwards = [(name, where) for name, where in forwards if where]
    if forwards:
        print()
        for name, where in forwards:
            print(f"service {name}: {where}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubellm sandbox",
        description="Run kubellm on this machine without a cluster: an in-memory Kubernetes API, the operator, "
        "and pods as local processes of the inference server.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def data_dir(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--data-dir",
            type=pathlib.Path,
            default=DEFAULT_DATA_DIR,
            help="where the sandbox keeps its kubeconfig, logs, pid files and model cache (default: %(default)s)",
        )

    up_parser = commands.add_parser("up", help="start the sandbox (or report the running one)")
    data_dir(up_parser)
    up_parser.add_argument("--api-port", type=int, default=0, help="port of the API on 127.0.0.1 (default: a free one)")
    up_parser.add_argument("--foreground", action="store_true", help="run in this terminal; Ctrl-C stops everything")
    down_parser = commands.add_parser("down", help="stop the sandbox and every process it started")
    data_dir(down_parser)
    status_parser = commands.add_parser("status", help="what runs, the LLMServices and their pods")
    data_dir(status_parser)
    serve_parser = commands.add_parser("serve", help=argparse.SUPPRESS)  # what `up` runs in the background
    data_dir(serve_parser)
    serve_parser.add_argument("--api-port", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    layout = Layout(args.data_dir)
    try:
        if args.command == "up":
            if not 0 <= args.api_port <= 65535:
                raise SandboxError(f"--api-port {args.api_port}: a port is 1-65535 (0: a free one)")
            up(layout, api_port=args.api_port, foreground=args.foreground)
            return 0
        if args.command == "down":
            down(layout)
            return 0
        if args.command == "status":
            return status(layout)
        run_foreground(layout, api_port=args.api_port, announce=False)
        return 0
    except SandboxError as error:
        _say(f"kubellm sandbox: {error}")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
