"""Status from the workload on the emulator: the kubelet stand-in runs the pods, the operator reports them."""

from __future__ import annotations

from operator_support import Kube, kubectl, llmservice, operator_running

from kubellm_emulator.kubelet import Kubelet, PodOutcome

OUTCOMES = {
    "ok": (PodOutcome.ready_pods(), "Ready", "MinimumReplicasAvailable"),
    "crashy": (PodOutcome.crash_loop(), "Degraded", "CrashLoopBackOff"),
    "oomy": (PodOutcome.oom_killed(), "Degraded", "OOMKilled"),
    "evicted": (PodOutcome.evicted(), "Degraded", "EvictedEphemeralStorage"),
    "unplaced": (PodOutcome.unschedulable(), "Degraded", "InsufficientEphemeralStorage"),
    "loading": (PodOutcome.starting(), "Progressing", "ModelLoading"),
}


def phase_and_reason(kube: Kube, name: str) -> tuple[str | None, str | None]:
    obj = kube.get("LLMService", name) or {}
    return (obj.get("status") or {}).get("phase"), kube.condition(name, "Ready").get("reason")


async def test_status_follows_the_pods(kube: Kube) -> None:
    kube.emulator.seed_node("worker-1", ephemeral_storage="100Gi")
    async with operator_running(kube), Kubelet(kube.emulator.api_url) as kubelet:
        for name in OUTCOMES:
            await kube.create(llmservice(name))
        await kube.wait(lambda: all(kube.get("Deployment", n) for n in OUTCOMES), "every Deployment")
        for name, (outcome, _, _) in OUTCOMES.items():
            await kubelet.reconcile("default", name, outcome)
        for name, (_, phase, reason) in OUTCOMES.items():
            await kube.wait(
                lambda n=name, p=phase, r=reason: phase_and_reason(kube, n) == (p, r), f"{name}: {phase} {reason}"
            )
        ok = kube.get("LLMService", "ok")
        assert ok is not None
        assert {k: ok["status"][k] for k in ("ready", "replicas", "readyReplicas", "updatedReplicas")} == {
            "ready": "1/1",
            "replicas": 1,
            "readyReplicas": 1,
            "updatedReplicas": 1,
        }
        assert kube.condition("ok", "Degraded")["status"] == "False"
        assert kube.condition("crashy", "Degraded")["reason"] == "CrashLoopBackOff"
        assert "crash-looping (3 restarts, last exit code 1)" in kube.condition("crashy", "Degraded")["message"]
        assert "The node was low on resource: ephemeral-storage." in kube.condition("evicted", "Ready")["message"]

        # The crash-looping pods get better: Ready, and Degraded flips back with a new transition time.
        before = kube.condition("crashy", "Degraded")["lastTransitionTime"]
        await kubelet.reconcile("default", "crashy", PodOutcome.ready_pods())
        await kube.wait(lambda: phase_and_reason(kube, "crashy") == ("Ready", "MinimumReplicasAvailable"), "recovery")
        assert kube.condition("crashy", "Degraded")["status"] == "False"
        assert kube.condition("crashy", "Degraded")["lastTransitionTime"] >= before

        table = await kubectl(kube, "get", "llms")
        if table is not None:
            print(f"\n$ kubectl get llms\n{table}")  # the README's captured output (pytest -s shows it)
            rows = {line.split()[0]: line.split() for line in table.splitlines()[1:]}
            assert rows["ok"][1:5] == ["embedded:smollm2-135m-instruct", "1/1", "Ready", "MinimumReplicasAvailable"]
            assert rows["oomy"][2:5] == ["0/1", "Degraded", "OOMKilled"]
            assert rows["evicted"][2:5] == ["0/1", "Degraded", "EvictedEphemeralStorage"]
            assert rows["unplaced"][2:5] == ["0/1", "Degraded", "InsufficientEphemeralStorage"]
            assert rows["loading"][2:5] == ["0/1", "Progressing", "ModelLoading"]
            wide = await kubectl(kube, "get", "llms", "ok", "-o", "wide")
            assert wide is not None and "ok.default.svc.cluster.local:5000" in wide
