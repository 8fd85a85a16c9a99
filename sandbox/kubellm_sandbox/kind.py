"""The commands that put kubellm on a kind cluster: build both images, create (or reuse) the cluster, load the
images, install deploy/ and point the operator at the loaded images.

One source for the kind e2e suite (tests/e2e) and `kubellm demo --cluster kind`; docs/e2e.md lists the same
commands word for word. Both check first that the tools are there (`missing_tools`). Every builder is pure and returns an argv list a user could type by hand from the
repository root (the image builds use `.` as context, the cluster config is named relative to it).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

OPERATOR_IMAGE = "kubellm/operator:dev"
INFERENCE_IMAGE = "kubellm/inference:dev"
OPERATOR_NAMESPACE = "kubellm-system"
OPERATOR_DEPLOYMENT = "kubellm-operator"
OPERATOR_CONTAINER = "operator"
INFERENCE_IMAGE_ENV = "KUBELLM_OPERATOR_INFERENCE_IMAGE"
CRD_NAME = "llmservices.kubellm.dev"
OPERATOR_ROLLOUT_TIMEOUT_S = 300

REQUIRED_TOOLS = ("docker", "kind", "kubectl")
DOCKER_INFO_TIMEOUT_S = 20

KIND_CONFIG = Path(__file__).resolve().with_name("kind-config.yaml")
KIND_CONFIG_ARGUMENT = "sandbox/kubellm_sandbox/kind-config.yaml"  # KIND_CONFIG as named from the repository root


def docker_engine_problem() -> str | None:
    """Why `docker info` fails (the client can exist without an engine, as on the dev machines), or None."""
    try:
        done = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=DOCKER_INFO_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"no answer within {DOCKER_INFO_TIMEOUT_S}s"
    except OSError as error:
        return str(error)
    if done.returncode == 0:
        return None
    lines = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {done.returncode}"


def missing_tools(
    which: Callable[[str], str | None] = shutil.which,
    docker_problem: Callable[[], str | None] = docker_engine_problem,
) -> list[str]:
    """What a kind install lacks here: tools not on PATH, and a Docker engine that does not answer."""
    missing = [f"{tool} (not on PATH)" for tool in REQUIRED_TOOLS if which(tool) is None]
    if which("docker") is not None:
        problem = docker_problem()
        if problem is not None:
            missing.append(f"a running Docker engine (`docker info` failed: {problem})")
    return missing


def context(cluster: str) -> str:
    """The kubeconfig context kind writes; every kubectl call names it, so no other cluster is touched."""
    return f"kind-{cluster}"


def kubectl(cluster: str, *args: str) -> list[str]:
    return ["kubectl", "--context", context(cluster), *args]


def build_commands() -> list[list[str]]:
    """Both images, each one plain image manifest. Docker 29 with the containerd image store attaches a provenance
    attestation by default, which makes the image an index that `kind load docker-image` cannot import ("ctr:
    content digest ... not found", kind issues 3795 and 4066); `--provenance=false` leaves it out."""
    return [
        ["docker", "build", "--provenance=false", "-f", "Dockerfile.operator", "-t", OPERATOR_IMAGE, "."],
        ["docker", "build", "--provenance=false", "-f", "Dockerfile.inference", "-t", INFERENCE_IMAGE, "."],
    ]


def list_clusters_command() -> list[str]:
    return ["kind", "get", "clusters"]


def create_cluster_command(cluster: str) -> list[str]:
    return ["kind", "create", "cluster", "--name", cluster, "--config", KIND_CONFIG_ARGUMENT, "--wait", "180s"]


def export_kubeconfig_command(cluster: str) -> list[str]:
    """Writes the context of a reused cluster into the kubeconfig (kind create does it for a new one)."""
    return ["kind", "export", "kubeconfig", "--name", cluster]


def load_images_command(cluster: str) -> list[str]:
    return ["kind", "load", "docker-image", "--name", cluster, OPERATOR_IMAGE, INFERENCE_IMAGE]


def install_commands(cluster: str) -> list[list[str]]:
    """Install from deploy/, then point the operator at the loaded images and wait until it runs them."""
    deployment = f"deployment/{OPERATOR_DEPLOYMENT}"
    in_operator_namespace = ("-n", OPERATOR_NAMESPACE)
    return [
        kubectl(cluster, "apply", "-k", "deploy/"),
        kubectl(cluster, "wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s"),
        kubectl(cluster, *in_operator_namespace, "set", "image", deployment, f"{OPERATOR_CONTAINER}={OPERATOR_IMAGE}"),
        kubectl(cluster, *in_operator_namespace, "set", "env", deployment, f"{INFERENCE_IMAGE_ENV}={INFERENCE_IMAGE}"),
        # A rebuilt :dev image keeps its tag, so an unchanged pod template would keep the old pods running it.
        kubectl(cluster, *in_operator_namespace, "rollout", "restart", deployment),
        kubectl(
            cluster, *in_operator_namespace, "rollout", "status", deployment, f"--timeout={OPERATOR_ROLLOUT_TIMEOUT_S}s"
        ),
        kubectl(cluster, *in_operator_namespace, "wait", "--for=condition=Available", deployment, "--timeout=60s"),
    ]


def delete_cluster_command(cluster: str) -> list[str]:
    return ["kind", "delete", "cluster", "--name", cluster]
