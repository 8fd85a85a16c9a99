"""Process bookkeeping of the sandbox: pid files that tell a reused pid apart, process groups, no orphans.

Every process the sandbox starts (itself, the operator, each pod's container) runs in its own process group and is
recorded in a pid file as ``<pid> <start time>``; whoever finds a pid file can tell whether that very process still
runs (:func:`recorded_pid`) and stop its whole group (:func:`kill_recorded_group`), which is how `kubellm sandbox
down` and `up` clean up after a sandbox that died.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import signal
import socket
import sys
import time
from collections.abc import Callable

logger = logging.getLogger("kubellm.sandbox")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


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
