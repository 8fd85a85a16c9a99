"""Helpers of the kind end-to-end suite: the tool check, the exact commands it runs, waits, port-forwards, dumps.

Every command built here is one a user could type by hand (docs/e2e.md lists them in order): the suite drives
the cluster only through `docker`, `kind` and `kubectl`, never through a client library, so what it proves is
what a user would see. The pure builders (commands, parsers, the skip reason) are unit-tested here without a
cluster; the rest runs only under `--e2e`.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import polling
import yaml

from kubellm_sandbox import kind
from kubellm_sandbox.kind import OPERATOR_DEPLOYMENT, OPERATOR_NAMESPACE, missing_tools

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_EXAMPLE = REPO_ROOT / "examples" / "tiny-smollm2.yaml"

DEFAULT_CLUSTER = "kubellm-e2e"
CLUSTER_ENV = "KUBELLM_E2E_CLUSTER"
KEEP_ENV = "KUBELLM_E2E_KEEP"
REQUIRED_ENV = "KUBELLM_E2E_REQUIRED"
DUMP_DIR_ENV = "KUBELLM_E2E_DUMP_DIR"
DEFAULT_DUMP_DIR = REPO_ROOT / "build" / "e2e-dumps"

INFERENCE_PORT = 5000

OPT_IN_REASON = "e2e tests are opt-in: run `make e2e` or pytest --e2e"
MISSING_TOOLS_PREFIX = "docker/kind not found: "

# Bounds of the slow steps, generous for a 2-4 core CI runner building a torch image from scratch.
BUILD_TIMEOUT_S = 1800
CLUSTER_CREATE_TIMEOUT_S = 600
IMAGE_LOAD_TIMEOUT_S = 900
KUBECTL_TIMEOUT_S = 60
DUMP_COMMAND_TIMEOUT_S = 30

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------------------
# Settings and the skip decision
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class E2ESettings:
    """What the environment chooses: the kind cluster's name, whether to keep it, where failure dumps go, and
    whether the tier must run (CI: a skip there is a failure, not a green run that tested nothing)."""

    cluster: str = DEFAULT_CLUSTER
    keep: bool = False
    dump_dir: Path = DEFAULT_DUMP_DIR
    required: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> E2ESettings:
        return cls(
            cluster=env.get(CLUSTER_ENV) or DEFAULT_CLUSTER,
            keep=_flag(env, KEEP_ENV),
            dump_dir=Path(env.get(DUMP_DIR_ENV) or DEFAULT_DUMP_DIR),
            required=_flag(env, REQUIRED_ENV),
        )

    @property
    def context(self) -> str:
        return kind.context(self.cluster)


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in {"1", "true", "yes"}


def required_failure(settings: E2ESettings, reason: str | None) -> str | None:
    """The error that ends a run whose e2e tier must run but would be skipped, or None."""
    if reason is None or not settings.required:
        return None
    return f"{REQUIRED_ENV}=1 but the e2e tier would be skipped: {reason}"


def skip_reason(opted_in: bool, missing: Callable[[], list[str]] = missing_tools) -> str | None:
    """Why the e2e tests are skipped in this run, or None when they run. The tools are checked only on opt-in."""
    if not opted_in:
        return OPT_IN_REASON
    lacking = missing()
    return MISSING_TOOLS_PREFIX + "; ".join(lacking) if lacking else None


# ---------------------------------------------------------------------------------------------------------
# The commands, in the order the session runs them
# ---------------------------------------------------------------------------------------------------------


def kubectl(settings: E2ESettings, *args: str) -> list[str]:
    return kind.kubectl(settings.cluster, *args)


def operator_logs_command(settings: E2ESettings) -> list[str]:
    return kubectl(settings, "-n", OPERATOR_NAMESPACE, "logs", f"deployment/{OPERATOR_DEPLOYMENT}", "--tail=-1")


def dump_commands(settings: E2ESettings, namespace: str, pods: Sequence[str]) -> list[list[str]]:
    """The state that explains a failed scenario: its objects, workloads, pods (with logs), events, the operator."""
    in_namespace = ("-n", namespace)
    return [
        kubectl(settings, *in_namespace, "get", "llmservices", "-o", "yaml"),
        kubectl(settings, *in_namespace, "get", "deployments,replicasets,services,pods", "-o", "wide"),
        kubectl(settings, *in_namespace, "describe", "pods"),
        kubectl(settings, *in_namespace, "get", "events", "--sort-by=.lastTimestamp"),
        *(kubectl(settings, *in_namespace, "logs", pod, "--all-containers", "--tail=200") for pod in pods),
        kubectl(settings, "get", "nodes", "-o", "wide"),
        kubectl(settings, "-n", OPERATOR_NAMESPACE, "get", "pods", "-o", "wide"),
        kubectl(settings, "-n", OPERATOR_NAMESPACE, "logs", f"deployment/{OPERATOR_DEPLOYMENT}", "--tail=300"),
    ]


# ---------------------------------------------------------------------------------------------------------
# Running commands
# ---------------------------------------------------------------------------------------------------------


class CommandFailed(AssertionError):
    """A command exited non-zero or ran past its bound; the message carries the command and its output."""


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run(
    command: Sequence[str],
    *,
    timeout_s: float = KUBECTL_TIMEOUT_S,
    check: bool = True,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run one command from the repository root, echoed as `$ ...` so a failing test shows what ran."""
    print(f"$ {shlex.join(command)}", flush=True)
    try:
        done = subprocess.run(
            list(command), cwd=REPO_ROOT, input=stdin, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as expired:
        raise CommandFailed(f"`{shlex.join(command)}` ran past its bound of {timeout_s:.0f}s") from expired
    if check and done.returncode != 0:
        raise CommandFailed(
            f"`{shlex.join(command)}` exited {done.returncode}\n"
            f"--- stdout (tail)\n{_tail(done.stdout)}\n--- stderr (tail)\n{_tail(done.stderr)}"
        )
    return done


def eventually(probe: Callable[[], T | None], *, timeout_s: float, what: str, every_s: float = 2.0) -> T:
    """`polling.eventually`, polling every 2.0 s by default (for states kubectl can't wait on; a cluster changes slowly)."""
    return polling.eventually(probe, timeout_s=timeout_s, what=what, every_s=every_s)


@dataclass(frozen=True)
class Cluster:
    """A running kind cluster with kubellm installed, driven through kubectl."""

    settings: E2ESettings

    def kubectl(
        self, *args: str, timeout_s: float = KUBECTL_TIMEOUT_S, check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run(kubectl(self.settings, *args), timeout_s=timeout_s, check=check, stdin=stdin)

    def get_json(self, namespace: str, *args: str) -> Any:
        return json.loads(self.kubectl("-n", namespace, "get", *args, "-o", "json").stdout)

    def apply(self, manifest: Mapping[str, Any], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(dict(manifest), sort_keys=False), check=check)

    def wait(self, namespace: str, condition: str, *targets: str, timeout_s: int) -> None:
        """`kubectl wait --for=<condition>`; its own timeout bounds it, the subprocess bound is a backstop."""
        self.kubectl(
            "-n", namespace, "wait", f"--for={condition}", *targets, f"--timeout={timeout_s}s", timeout_s=timeout_s + 30
        )

    def operator_logs(self) -> str:
        return run(operator_logs_command(self.settings)).stdout

    def dump(self, namespace: str) -> str:
        """Everything `dump_commands` shows, as one text; commands that fail are shown with their error."""
        listed = run(kubectl(self.settings, "-n", namespace, "get", "pods", "-o", "name"), check=False)
        pods = listed.stdout.split() if listed.returncode == 0 else []
        parts = []
        for command in dump_commands(self.settings, namespace, pods):
            try:
                done = run(command, timeout_s=DUMP_COMMAND_TIMEOUT_S, check=False)
                output = done.stdout + (f"\n[stderr] {done.stderr.strip()}" if done.stderr.strip() else "")
            except CommandFailed as error:
                output = str(error)
            parts.append(f"$ {shlex.join(command)}\n{output.rstrip()}\n")
        return "\n".join(parts)


# ---------------------------------------------------------------------------------------------------------
# Parsing what kubectl prints
# ---------------------------------------------------------------------------------------------------------


def table_row(table: str, name: str) -> dict[str, str]:
    """The row of `kubectl get` table output whose NAME is `name`, keyed by upper-case column header.

    Cells are cut at the headers' offsets (kubectl aligns every column under its header), so an empty cell,
    such as a condition reason not yet set, stays empty instead of shifting the cells after it.
    """
    lines = [line for line in table.splitlines() if line.strip()]
    if not lines:
        raise AssertionError(f"empty table, no row {name!r}")
    header = lines[0]
    starts = [match.start() for match in re.finditer(r"\S+", header)]
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    for line in lines[1:]:
        cells = {header[start:end].strip(): line[start:end].strip() for start, end in bounds}
        if cells.get("NAME") == name:
            return cells
    raise AssertionError(f"no row {name!r} in:\n{table}")


def owned_children(items: Sequence[Mapping[str, Any]], owner_uid: str) -> list[str]:
    """`kind/name` of every object whose ownerReferences name `owner_uid` (how kopf.adopt links children)."""
    return sorted(
        f"{item['kind'].lower()}/{item['metadata']['name']}"
        for item in items
        if any(ref.get("uid") == owner_uid for ref in item["metadata"].get("ownerReferences", []))
    )


def condition(resource: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    return next((c for c in resource.get("status", {}).get("conditions", []) if c.get("type") == kind), None)


def warning_lines(log: str, namespace: str, name: str) -> list[str]:
    """Operator log lines at WARNING level that name the object (Kopf prefixes them with [namespace/name])."""
    return [line for line in log.splitlines() if "WARNING" in line and name in line and namespace in line]


def ready_pod_count(pods: Sequence[Mapping[str, Any]]) -> int:
    return sum(
        1
        for pod in pods
        if pod.get("metadata", {}).get("deletionTimestamp") is None
        and any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in pod.get("status", {}).get("conditions", [])
        )
    )


# ---------------------------------------------------------------------------------------------------------
# Manifests
# ---------------------------------------------------------------------------------------------------------


def in_namespace(manifest: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    """A copy placed in the scenario's namespace, pulling only images already loaded into the kind nodes."""
    placed: dict[str, Any] = copy.deepcopy(dict(manifest))
    placed.setdefault("metadata", {})["namespace"] = namespace
    placed.setdefault("spec", {})["imagePullPolicy"] = "IfNotPresent"
    return placed


def llmservice(name: str, **spec: Any) -> dict[str, Any]:
    """A minimal LLMService serving the model inside the inference image, with `spec` fields on top."""
    return {
        "apiVersion": "kubellm.dev/v1alpha1",
        "kind": "LLMService",
        "metadata": {"name": name},
        "spec": {"model": {"name": "embedded:smollm2-135m-instruct"}, **spec},
    }


def tiny_example() -> dict[str, Any]:
    loaded = yaml.safe_load(TINY_EXAMPLE.read_text())
    if not isinstance(loaded, dict):
        raise AssertionError(f"{TINY_EXAMPLE} is not one YAML object")
    return loaded


# ---------------------------------------------------------------------------------------------------------
# Background processes (kubectl port-forward)
# ---------------------------------------------------------------------------------------------------------


def free_local_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def port_forward_command(settings: E2ESettings, namespace: str, service: str, local_port: int) -> list[str]:
    return kubectl(settings, "-n", namespace, "port-forward", f"svc/{service}", f"{local_port}:{INFERENCE_PORT}")


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def serving(command: Sequence[str], port: int, *, timeout_s: float) -> Iterator[subprocess.Popen[bytes]]:
    """Run `command` until the block ends, once 127.0.0.1:`port` accepts connections (bounded by `timeout_s`)."""
    print(f"$ {shlex.join(command)} &", flush=True)
    # Output goes to a file, not a pipe nobody drains, so a chatty process can never block on a full pipe.
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(list(command), stdout=output, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout_s
            while not _accepts(port):
                if process.poll() is not None or time.monotonic() >= deadline:
                    output.seek(0)
                    said = output.read().decode(errors="replace")
                    state = f"exited {process.returncode}" if process.poll() is not None else f"not up in {timeout_s}s"
                    raise CommandFailed(f"`{shlex.join(command)}` {state}, port {port} never accepted:\n{_tail(said)}")
                time.sleep(0.1)
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
