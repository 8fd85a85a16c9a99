"""What a create and a no-op pass cost in API requests, measured on the emulator (docs/operator.md quotes these)."""

from __future__ import annotations

from collections import Counter

from operator_support import LEASES_PATH, Kube, llmservice, operator_running
from test_operator_emulator import converged

from kubellm_emulator import WRITE_METHODS


def _tally(kube: Kube, since: int, exclude: tuple[str, ...] = ()) -> Counter[str]:
    counts: Counter[str] = Counter()
    for request in kube.emulator.requests(since=since):
        # The leader Lease's renewals (a read and a write every 2 s) are the same whatever the LLMServices do.
        skipped = (LEASES_PATH, *exclude)
        if request.query.get("watch") in ("true", "1") or any(request.path.startswith(p) for p in skipped):
            continue
        counts["writes" if request.method in WRITE_METHODS else "reads"] += 1
    return counts


async def test_create_and_noop_pass_costs(kube: Kube) -> None:
    kube.emulator.seed_node("worker-1", ephemeral_storage="100Gi")
    async with operator_running(kube, summary_refresh_s=0):
        await kube.quiet(0.5)  # the start-up lists
        marker = kube.emulator.request_marker()
        await kube.create(llmservice())
        await kube.wait(lambda: converged(kube), "the create to converge")
        await kube.quiet(0.5)
        create = _tally(kube, marker + 1)  # minus the test's own POST
        marker = kube.emulator.request_marker()
        kube.emulator.seed_node("worker-1", ephemeral_storage="100Gi", labels={"touched": "yes"})
        await kube.quiet(1.0)
        noop = _tally(kube, marker)
    print(f"create: {dict(create)}; no-op pass: {dict(noop)}")
    assert create["writes"] <= 4 and noop["writes"] == 0
