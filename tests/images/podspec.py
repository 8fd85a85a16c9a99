"""A pod's container, as `podman run` / `docker run` flags: what the images' smoke tests run.

The smoke tests run an image the way a kubelet would run the manifest that names it (the Deployment `kubellm
render` prints, or deploy/operator.yaml), so that what they prove holds for the pod: its user and groups,
read-only root, capabilities, no-new-privileges, env, memory limit, volumes and command. Only what a container
engine can express is translated; anything else is refused by name rather than silently dropped.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

from kubellm.quantity import parse_quantity


class UntranslatableError(ValueError):
    """The manifest uses something a container engine run cannot reproduce faithfully."""


@dataclass(frozen=True)
class Probe:
    """An HTTP probe (path on a container port) or an exec probe (a command), with its timing."""

    path: str | None
    port: int | None
    command: list[str] | None
    period_s: int
    failure_threshold: int

    @property
    def budget_s(self) -> int:
        return self.period_s * self.failure_threshold

    def exec_command(self) -> list[str]:
        """The command that runs this probe inside the container (an HTTP probe: the image's own Python)."""
        if self.command is not None:
            return self.command
        url = f"http://127.0.0.1:{self.port}{self.path}"
        check = (
            f"import urllib.request, sys; sys.exit(0 if urllib.request.urlopen({url!r}, timeout=5).status < 400 else 1)"
        )
        return ["python", "-c", check]


@dataclass(frozen=True)
class ContainerRun:
    """One container of a pod template, ready to hand to `ENGINE run`."""

    image: str
    flags: list[str]
    command: list[str]
    args: list[str]
    ports: dict[str, int]
    startup: Probe | None
    liveness: Probe | None
    grace_s: int
    env: dict[str, str] = field(default_factory=dict)

    def run_args(self, extra_flags: list[str]) -> list[str]:
        """Arguments after `ENGINE run`: the pod's flags, the caller's, the image and its command. As in a pod,
        `command` replaces the image's entrypoint (and its CMD) and `args` replace the CMD."""
        if self.command:
            return [
                *self.flags,
                *extra_flags,
                "--entrypoint",
                self.command[0],
                self.image,
                *self.command[1:],
                *self.args,
            ]
        return [*self.flags, *extra_flags, self.image, *self.args]

    def shell(self, engine: str, extra_flags: list[str]) -> str:
        return shlex.join([engine, "run", *self.run_args(extra_flags)])


def _port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    for declared in container.get("ports", []):
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise UntranslatableError(f"probe port {port!r} names no port of container {container['name']!r}")


def _probe(container: dict[str, Any], name: str) -> Probe | None:
    probe = container.get(name)
    if probe is None:
        return None
    period, threshold = int(probe.get("periodSeconds", 10)), int(probe.get("failureThreshold", 3))
    if "httpGet" in probe:
        get = probe["httpGet"]
        return Probe(get.get("path", "/"), _port(container, get["port"]), None, period, threshold)
    if "exec" in probe:
        return Probe(None, None, list(probe["exec"]["command"]), period, threshold)
    raise UntranslatableError(f"{name} of container {container['name']!r}: only httpGet and exec probes are run")


def container_run(deployment: dict[str, Any], env_overrides: dict[str, str] | None = None) -> ContainerRun:
    """The first container of a Deployment's pod template as engine flags; ``env_overrides`` replace env values
    (a port the host already uses, on the host network)."""
    pod = deployment["spec"]["template"]["spec"]
    if len(pod["containers"]) != 1 or pod.get("initContainers"):
        raise UntranslatableError("only pods of exactly one container (no init containers) are translated")
    container = pod["containers"][0]
    pod_security = pod.get("securityContext", {})
    security = {**pod_security, **container.get("securityContext", {})}
    flags: list[str] = []

    if "runAsUser" not in security:
        raise UntranslatableError("runAsUser is unset: the image's USER would decide, not the manifest")
    user = str(security["runAsUser"])
    flags += ["--user", f"{user}:{security['runAsGroup']}" if "runAsGroup" in security else user]
    for group in [pod_security.get("fsGroup"), *pod_security.get("supplementalGroups", [])]:
        if group is not None:
            flags += ["--group-add", str(group)]
    if security.get("readOnlyRootFilesystem"):
        flags.append("--read-only")
    if security.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    if security.get("privileged"):
        raise UntranslatableError("privileged containers are not run by the smoke tests")
    capabilities = security.get("capabilities", {})
    for dropped in capabilities.get("drop", []):
        flags += ["--cap-drop", dropped]
    for added in capabilities.get("add", []):
        flags += ["--cap-add", added]
    if security.get("seccompProfile", {}).get("type", "RuntimeDefault") != "RuntimeDefault":
        raise UntranslatableError("only the RuntimeDefault seccomp profile (the engine's default) is run")

    env: dict[str, str] = {}
    for variable in container.get("env", []):
        if "value" not in variable:
            raise UntranslatableError(f"env {variable['name']}: only literal values are translated (no valueFrom)")
        env[variable["name"]] = str(variable["value"])
    env.update(env_overrides or {})
    for name, value in sorted(env.items()):
        flags += ["--env", f"{name}={value}"]

    memory = container.get("resources", {}).get("limits", {}).get("memory")
    if memory is not None:
        flags += ["--memory", str(int(parse_quantity(str(memory))))]

    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "emptyDir" not in volume:
            kinds = sorted(set(volume) - {"name"})
            raise UntranslatableError(f"volume {mount['name']!r} ({', '.join(kinds)}): only emptyDir is translated")
        # An emptyDir is a fresh directory every user may write (the kubelet makes it 0777), sized by sizeLimit.
        options = ["rw", "exec", "mode=0777"]
        limit = volume["emptyDir"].get("sizeLimit")
        if limit is not None:
            options.append(f"size={int(parse_quantity(str(limit)))}")
        flags += ["--tmpfs", f"{mount['mountPath']}:{','.join(options)}"]

    ports = {
        str(port.get("name", port["containerPort"])): int(port["containerPort"]) for port in container.get("ports", [])
    }
    return ContainerRun(
        image=container["image"],
        flags=flags,
        command=list(container.get("command", [])),
        args=list(container.get("args", [])),
        ports=ports,
        startup=_probe(container, "startupProbe") or _probe(container, "readinessProbe"),
        liveness=_probe(container, "livenessProbe"),
        grace_s=int(pod.get("terminationGracePeriodSeconds", 30)),
        env=env,
    )
