"""The commands that put kubellm on a kind cluster: build both images, create (or reuse) the cluster, load the
images, install deploy/ and point the operator at the loaded images.

One source for the kind e2e suite (tests/e2e) and `kubellm demo --cluster kind`; docs/e2e.md lists the same
commands word for word. Every builder is pure and returns an argv list a user could type by hand from the
repository root (the image builds use `.` as context, the cluster config is named relative to it).
"""

from __future__ import annotations

from pathlib import Path

OPERATOR_IMAGE = "kubellm/operator:dev"
INFERENCE_IMAGE = "kubellm/inference:dev"
OPERATOR_NAMESPACE = "kubellm-system"
OPERATOR_DEPLOYMENT = "kubellm-operator"
OPERATOR_CONTAINER = "operator"
INFERENCE_IMAGE_ENV = "KUBELLM_OPERATOR_INFERENCE_IMAGE"
CRD_NAME = "llmservices.kubellm.dev"
OPERATOR_ROLLOUT_TIMEOUT_S = 300

KIND_CONFIG = Path(__file__).resolve().with_name("kind-config.yaml")
KIND_CONFIG_ARGUMENT = "sandbox/kind-config.yaml"  # KIND_CONFIG as named from the repository root


def context(cluster: str) -> str:
    """The kubeconfig context kind writes; every kubectl call names it, so no other cluster is touched."""
    return f"kind-{cluster}"


def kubectl(cluster: str, *args: str) -> list[str]:
    return ["kubectl", "--context", context(cluster), *args]


def build_commands() -> list[list[str]]:
    return [
        ["docker", "build", "-f", "Dockerfile.operator", "-t", OPERATOR_IMAGE, "."],
        ["docker", "build", "-f", "Dockerfile.inference", "-t", INFERENCE_IMAGE, "."],
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
