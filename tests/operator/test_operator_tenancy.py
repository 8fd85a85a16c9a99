"""The tenant policy on the emulator (issue 19 item 7, issue 21 item 2): the real operator, as deploy/'s
ServiceAccount, refuses a spec outside its settings without writing a child, and says so once; a public Service
without auth is rolled out with a Warning Event and the Authenticated condition."""

from __future__ import annotations

from operator_support import Kube, llmservice, operator_running

CHILD_PATHS = ("/apis/apps/v1/namespaces/default/deployments", "/api/v1/namespaces/default/services")


def child_writes(kube: Kube, since: int = 0) -> list[tuple[str, str]]:
    return [(method, path) for method, path in kube.writes(since) if path.startswith(CHILD_PATHS)]


async def test_a_not_allowed_llmservice_gets_no_deployment(kube: Kube) -> None:
    kube.emulator.seed_node("worker-1", ephemeral_storage="100Gi")
    async with operator_running(kube, allowed_image_prefixes=["ghcr.io/kubellm/"]) as metrics:
        await kube.create(llmservice(image="quay.io/someone/inference:1"))
        await kube.wait(lambda: kube.condition("tiny", "Degraded").get("reason") == "NotAllowed", "Degraded=NotAllowed")
        said = (
            "spec.image quay.io/someone/inference:1 is not allowed by the operator's --allowed-image-prefixes "
            "(ghcr.io/kubellm/); name an image under one of them, or none for the operator's default"
        )
        degraded, ready = kube.condition("tiny", "Degraded"), kube.condition("tiny", "Ready")
        assert (degraded["status"], degraded["message"]) == ("True", said)
        assert (ready["status"], ready["reason"]) == ("False", "NotAllowed")
        assert (kube.get("LLMService", "tiny") or {})["status"]["phase"] == "Degraded"
        await kube.wait(lambda: kube.events("tiny", "NotAllowed"), "the NotAllowed Event")
        assert [e["message"] for e in kube.events("tiny", "NotAllowed")] == [said]

        # Nothing was written for it, and later passes (a node appears) write nothing either, nor repeat the Event.
        kube.emulator.seed_node("worker-2", ephemeral_storage="100Gi")
        await kube.quiet(1.0)
        assert child_writes(kube) == []
        assert kube.get("Deployment", "tiny") is None and kube.get("Service", "tiny") is None
        assert len(kube.events("tiny", "NotAllowed")) == 1
        assert metrics.reconciles.labels(outcome="not_allowed")._value.get() >= 1

        # An allowed image: rolled out at once.
        await kube.patch_llmservice("tiny", {"spec": {"image": "ghcr.io/kubellm/inference:0.1.0"}})
        await kube.wait(lambda: kube.get("Deployment", "tiny"), "the Deployment once the image is allowed")
        await kube.wait(lambda: kube.condition("tiny", "Degraded").get("reason") != "NotAllowed", "NotAllowed to clear")

        # Back outside the policy: what runs is left as it was, and nothing is written to it.
        marker = kube.emulator.request_marker()
        await kube.patch_llmservice("tiny", {"spec": {"image": "quay.io/someone/inference:2"}})
        await kube.wait(lambda: kube.condition("tiny", "Degraded").get("reason") == "NotAllowed", "NotAllowed again")
        await kube.quiet(0.5)
        assert child_writes(kube, marker) == []
        container = (kube.get("Deployment", "tiny") or {})["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == "ghcr.io/kubellm/inference:0.1.0"


async def test_a_node_port_without_auth_gets_a_warning_event(kube: Kube) -> None:
    kube.emulator.seed_node("worker-1", ephemeral_storage="100Gi")
    async with operator_running(kube):
        await kube.create(llmservice(service={"type": "NodePort"}))
        await kube.wait(lambda: kube.events("tiny", "PublicWithoutAuth"), "the PublicWithoutAuth Event")
        said = (
            "spec.service.type NodePort exposes the inference routes outside the cluster without an API key; set "
            "spec.auth.apiKeySecretRef"
        )
        event = kube.events("tiny", "PublicWithoutAuth")[0]
        assert (event["type"], event["message"]) == ("Warning", said)
        authenticated = kube.condition("tiny", "Authenticated")
        assert (authenticated["status"], authenticated["reason"], authenticated["message"]) == (
            "False",
            "PublicWithoutAuth",
            said,
        )
        # Allowed by default: the workload is rolled out.
        assert (kube.get("Service", "tiny") or {})["spec"]["type"] == "NodePort"
        assert kube.get("Deployment", "tiny") is not None

        kube.emulator.seed_node("worker-2", ephemeral_storage="100Gi")
        await kube.quiet(1.0)
        assert len(kube.events("tiny", "PublicWithoutAuth")) == 1, "one Event while it lasts, not one per pass"

        await kube.patch_llmservice("tiny", {"spec": {"auth": {"apiKeySecretRef": {"name": "key", "key": "token"}}}})
        await kube.wait(
            lambda: kube.condition("tiny", "Authenticated").get("reason") == "ApiKeyRequired", "Authenticated=True"
        )
        assert kube.condition("tiny", "Authenticated")["status"] == "True"


async def test_public_without_auth_is_refused_when_the_operator_says_so(kube: Kube) -> None:
    kube.emulator.seed_node("worker-1", ephemeral_storage="100Gi")
    async with operator_running(kube, allow_public_without_auth=False):
        await kube.create(llmservice(service={"type": "LoadBalancer"}))
        await kube.wait(lambda: kube.condition("tiny", "Degraded").get("reason") == "NotAllowed", "Degraded=NotAllowed")
        assert kube.condition("tiny", "Degraded")["message"] == (
            "spec.auth is required for spec.service.type LoadBalancer: the operator runs with "
            "--no-allow-public-without-auth; set spec.auth.apiKeySecretRef or use ClusterIP"
        )
        await kube.quiet(0.5)
        assert child_writes(kube) == []
        assert kube.events("tiny", "PublicWithoutAuth") == []
