"""The operator's per-LLMService metrics follow the status each pass computes, and go when the LLMService goes."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from kubellm_operator.metrics import OperatorMetrics


def samples(metrics: OperatorMetrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(metrics.exposition().decode())
        for sample in family.samples
        if sample.name == name
    }


def status(phase: str, ready: str, ready_replicas: int, *conditions: tuple[str, str, str]) -> dict[str, Any]:
    return {
        "phase": phase,
        "ready": ready,
        "readyReplicas": ready_replicas,
        "conditions": [{"type": t, "status": s, "reason": r, "message": "..."} for t, s, r in conditions],
    }


def test_conditions_phase_and_replicas_follow_the_status() -> None:
    metrics = OperatorMetrics()
    metrics.set_status(
        "ns",
        "a",
        status("Degraded", "0/2", 0, ("Ready", "False", "QuotaExceeded"), ("Degraded", "True", "QuotaExceeded")),
    )
    metrics.set_status("ns", "b", status("Ready", "1/1", 1, ("Ready", "True", "MinimumReplicasAvailable")))
    conditions = samples(metrics, "kubellm_llmservice_condition")
    assert conditions == {
        (("name", "a"), ("namespace", "ns"), ("reason", "QuotaExceeded"), ("status", "False"), ("type", "Ready")): 1,
        (("name", "a"), ("namespace", "ns"), ("reason", "QuotaExceeded"), ("status", "True"), ("type", "Degraded")): 1,
        (
            ("name", "b"),
            ("namespace", "ns"),
            ("reason", "MinimumReplicasAvailable"),
            ("status", "True"),
            ("type", "Ready"),
        ): 1,
    }
    phases = samples(metrics, "kubellm_llmservices")
    assert phases[(("phase", "Degraded"),)] == 1 and phases[(("phase", "Ready"),)] == 1
    assert phases[(("phase", "Pending"),)] == 0
    assert samples(metrics, "kubellm_llmservice_replicas")[(("name", "a"), ("namespace", "ns"))] == 2
    assert samples(metrics, "kubellm_llmservice_ready_replicas")[(("name", "b"), ("namespace", "ns"))] == 1

    # A condition that flips replaces its series (no stale Degraded=True beside the new Degraded=False).
    metrics.set_status("ns", "a", status("Ready", "2/2", 2, ("Degraded", "False", "AsExpected")))
    assert set(samples(metrics, "kubellm_llmservice_condition")) == {
        (("name", "a"), ("namespace", "ns"), ("reason", "AsExpected"), ("status", "False"), ("type", "Degraded")),
        (
            ("name", "b"),
            ("namespace", "ns"),
            ("reason", "MinimumReplicasAvailable"),
            ("status", "True"),
            ("type", "Ready"),
        ),
    }
    assert samples(metrics, "kubellm_llmservices")[(("phase", "Ready"),)] == 2

    # Deleted: every series of it goes; deleting twice is harmless.
    metrics.set_status("ns", "a", None)
    metrics.set_status("ns", "a", None)
    assert {dict(k)["name"] for k in samples(metrics, "kubellm_llmservice_condition")} == {"b"}
    assert (("name", "a"), ("namespace", "ns")) not in samples(metrics, "kubellm_llmservice_replicas")
    assert samples(metrics, "kubellm_llmservices")[(("phase", "Ready"),)] == 1


def test_queue_gauges_are_read_at_scrape_time() -> None:
    metrics = OperatorMetrics()
    pending = [3]
    metrics.watch_queue(lambda: pending[0], lambda: 12.5)
    assert samples(metrics, "kubellm_operator_queue_length") == {(): 3}
    pending[0] = 0
    assert samples(metrics, "kubellm_operator_queue_length") == {(): 0}
    assert samples(metrics, "kubellm_operator_queue_overdue_seconds") == {(): 12.5}
