"""The kind end-to-end scenarios: real apiserver validation, scheduler, kubelet probes and images, each asserted.

Opt-in (`make e2e` or `pytest --e2e`); see tests/e2e/conftest.py for the session cluster and the skip rules, and
docs/e2e.md for every command run here. Each scenario runs in its own namespace; every wait is bounded by
`kubectl wait --timeout` or `eventually(timeout_s=...)`, and a failure appends the namespace's state to the report.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from e2e_support import (
    Cluster,
    condition,
    eventually,
    free_local_port,
    in_namespace,
    llmservice,
    owned_children,
    port_forward_command,
    ready_pod_count,
    serving,
    table_row,
    tiny_example,
    warning_lines,
)

# The first scenario also pays for building both images and creating the cluster.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]

READY_TIMEOUT_S = 600  # image already on the node; SmolLM2-135M loads in seconds, CPU runners can be slow
OPERATOR_TIMEOUT_S = 180  # the operator's reaction: a status write, an Event, a log line
DELETE_TIMEOUT_S = 180
ASK_TIMEOUT_S = 180  # one CPU generation of up to maxNewTokens (64 in the example)


def apply_tiny(cluster: Cluster, namespace: str) -> dict[str, Any]:
    manifest = in_namespace(tiny_example(), namespace)
    cluster.apply(manifest)
    return manifest


def wait_ready(cluster: Cluster, namespace: str, name: str, ready: str) -> None:
    target = f"llmservices/{name}"
    # The count first: right after a scale, phase and condition still say Ready from before.
    cluster.wait(namespace, f"jsonpath={{.status.ready}}={ready}", target, timeout_s=READY_TIMEOUT_S)
    cluster.wait(namespace, "jsonpath={.status.phase}=Ready", target, timeout_s=READY_TIMEOUT_S)
    cluster.wait(namespace, "condition=Ready", target, timeout_s=READY_TIMEOUT_S)


def listed(cluster: Cluster, namespace: str, name: str) -> dict[str, str]:
    """The LLMService's row in `kubectl get llmservices` (the CRD's printer columns)."""
    return table_row(cluster.kubectl("-n", namespace, "get", "llmservices").stdout, name)


def test_tiny_example_becomes_ready_and_answers(kind_cluster: Cluster, namespace: str) -> None:
    name = apply_tiny(kind_cluster, namespace)["metadata"]["name"]
    wait_ready(kind_cluster, namespace, name, "1/1")

    row = listed(kind_cluster, namespace, name)
    assert (row.get("READY"), row.get("PHASE")) == ("1/1", "Ready"), row

    port = free_local_port()
    with serving(port_forward_command(kind_cluster.settings, namespace, name, port), port, timeout_s=60):
        base = f"http://127.0.0.1:{port}"
        answer = httpx.post(f"{base}/ask", json={"text": "What is Kubernetes?"}, timeout=ASK_TIMEOUT_S)
        assert answer.status_code == 200, answer.text
        response = answer.json()["response"]
        assert isinstance(response, str) and response.strip(), answer.text

        metrics = httpx.get(f"{base}/metrics", timeout=30)
        assert metrics.status_code == 200, metrics.text
        assert metrics.headers["content-type"].startswith("text/plain"), metrics.headers
        assert "# TYPE " in metrics.text, metrics.text[:500]


def test_scale_to_two_replicas(kind_cluster: Cluster, namespace: str) -> None:
    name = apply_tiny(kind_cluster, namespace)["metadata"]["name"]
    wait_ready(kind_cluster, namespace, name, "1/1")

    kind_cluster.kubectl("-n", namespace, "scale", f"llms/{name}", "--replicas=2")

    wait_ready(kind_cluster, namespace, name, "2/2")
    status = kind_cluster.get_json(namespace, f"llmservices/{name}")["status"]
    assert status["selector"], status
    pods = kind_cluster.get_json(namespace, "pods", "-l", status["selector"])["items"]
    assert ready_pod_count(pods) == 2, [pod["metadata"]["name"] for pod in pods]
    row = listed(kind_cluster, namespace, name)
    assert (row.get("READY"), row.get("PHASE")) == ("2/2", "Ready"), row


def test_storage_beyond_every_node_is_reported(kind_cluster: Cluster, namespace: str) -> None:
    name = "too-big"
    kind_cluster.apply(in_namespace(llmservice(name, storage={"request": "100Ti"}), namespace))

    target = f"llmservices/{name}"
    kind_cluster.wait(namespace, "condition=StorageReady=False", target, timeout_s=OPERATOR_TIMEOUT_S)
    storage_ready = condition(kind_cluster.get_json(namespace, target), "StorageReady")
    assert storage_ready is not None
    assert storage_ready["status"] == "False", storage_ready
    assert storage_ready["reason"] == "InsufficientStorage", storage_ready
    assert storage_ready.get("message"), storage_ready

    def warning_events() -> list[dict[str, Any]] | None:
        events = kind_cluster.get_json(
            namespace,
            "events",
            "--field-selector",
            f"involvedObject.kind=LLMService,involvedObject.name={name},type=Warning,reason=InsufficientStorage",
        )["items"]
        return events or None

    events = eventually(
        warning_events, timeout_s=OPERATOR_TIMEOUT_S, what=f"a Warning InsufficientStorage Event on {name}"
    )
    assert events[0]["message"], events[0]

    def warned() -> list[str] | None:
        return warning_lines(kind_cluster.operator_logs(), namespace, name) or None

    eventually(
        warned, timeout_s=OPERATOR_TIMEOUT_S, what=f"a WARNING line naming {namespace}/{name} in the operator log"
    )


@pytest.mark.parametrize(
    ("spec", "field", "why"),
    [
        pytest.param({"replicas": -1}, "spec.replicas", "greater than or equal to 0", id="schema-minimum"),
        pytest.param(
            {"storage": {"request": "2Gi", "limit": "1Gi"}},
            "spec.storage.limit",
            "storage.limit must be at least storage.request",
            id="cel-rule",
        ),
    ],
)
def test_invalid_llmservice_is_rejected_naming_the_field(
    kind_cluster: Cluster, namespace: str, spec: dict[str, Any], field: str, why: str
) -> None:
    rejected = kind_cluster.apply(in_namespace(llmservice("invalid", **spec), namespace), check=False)
    assert rejected.returncode != 0, rejected.stdout
    assert field in rejected.stderr, rejected.stderr
    assert why in rejected.stderr, rejected.stderr
    assert kind_cluster.kubectl("-n", namespace, "get", "llmservices", "-o", "name").stdout.strip() == ""


def test_delete_removes_deployment_and_service(kind_cluster: Cluster, namespace: str) -> None:
    name = apply_tiny(kind_cluster, namespace)["metadata"]["name"]
    uid = kind_cluster.get_json(namespace, f"llmservices/{name}")["metadata"]["uid"]

    def children() -> list[str]:
        return owned_children(kind_cluster.get_json(namespace, "deployments,services")["items"], uid)

    def both_children() -> list[str] | None:
        found = children()
        return found if {child.split("/")[0] for child in found} == {"deployment", "service"} else None

    created = eventually(both_children, timeout_s=OPERATOR_TIMEOUT_S, what=f"the Deployment and Service of {name}")

    kind_cluster.kubectl("-n", namespace, "delete", f"llmservices/{name}", f"--timeout={DELETE_TIMEOUT_S}s")
    kind_cluster.wait(namespace, "delete", *created, timeout_s=DELETE_TIMEOUT_S)
    assert children() == []
