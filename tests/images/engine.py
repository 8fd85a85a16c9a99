"""The container engine the image smoke tests drive (podman or docker, through their CLI), and the opt-in.

The smoke tests run only when asked: KUBELLM_IMAGE_TESTS=1 (docker if its engine answers, else podman),
=podman or =docker, after `make images` (.ci/run does both). Without it, or where the engine cannot run a
container, they are skipped with the reason.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import polling

OPT_IN_ENV = "KUBELLM_IMAGE_TESTS"
ENGINES = ("docker", "podman")
T = TypeVar("T")


def answers(engine: str) -> bool:
    """Whether ``engine`` is installed and its daemon or storage answers."""
    if shutil.which(engine) is None:
        return False
    try:
        return subprocess.run([engine, "info"], capture_output=True, timeout=60, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def choose_engine(env: Mapping[str, str], can_run: Callable[[str], bool] = answers) -> tuple[str | None, str]:
    """The engine to use, or None and the reason the smoke tests are skipped."""
    wanted = env.get(OPT_IN_ENV, "").strip().lower()
    if wanted in ("", "0", "false", "no"):
        return None, f"image smoke tests are opt-in: `make images`, then {OPT_IN_ENV}=1 (or =podman, =docker)"
    candidates = ENGINES if wanted in ("1", "true", "yes") else (wanted,)
    if any(candidate not in ENGINES for candidate in candidates):
        return None, f"{OPT_IN_ENV}={wanted!r}: use 1, podman or docker"
    for candidate in candidates:
        if can_run(candidate):
            return candidate, ""
    return None, f"no container engine can run here ({', '.join(candidates)}: missing or `info` fails)"


@dataclass(frozen=True)
class Engine:
    """One container engine, through its CLI; every call bounded."""

    name: str

    def run(self, *args: str, timeout_s: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([self.name, *args], capture_output=True, text=True, timeout=timeout_s, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"{self.name} {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}")
        return done

    def require_image(self, image: str) -> None:
        """Opted in but not built: a failure that says what to run, not a skip that hides it."""
        found = self.run("image", "inspect", image, check=False).returncode == 0
        assert found, f"{self.name} has no image {image}: run `make images ENGINE={self.name}` first"

    def read_only_flags(self) -> list[str]:
        """podman's --read-only also mounts writable tmpfs on /tmp, /var/tmp and /run; a pod gets none of them."""
        return ["--read-only-tmpfs=false"] if self.name == "podman" else []

    def logs(self, container: str) -> str:
        done = self.run("logs", container, check=False)
        return (done.stdout + done.stderr)[-6000:]

    def state(self, container: str) -> str:
        done = self.run("inspect", "--format", "{{.State.Status}} exit={{.State.ExitCode}}", container, check=False)
        return done.stdout.strip() or done.stderr.strip()

    def exited(self, container: str) -> int | None:
        """The exit code once the container has stopped, else None."""
        done = self.run("inspect", "--format", "{{.State.Running}} {{.State.ExitCode}}", container, check=False)
        running, _, code = done.stdout.strip().partition(" ")
        return int(code) if running == "false" and code else None


def eventually(probe: Callable[[], T | None], *, timeout_s: float, what: str, every_s: float = 0.5) -> T:
    """`polling.eventually`, polling every 0.5 s by default (containers answer within seconds)."""
    return polling.eventually(probe, timeout_s=timeout_s, what=what, every_s=every_s)
