"""deploy/components/gateway's RBAC is exactly what the gateway uses: the rules derived from the requests it made to
the API emulator (list and watch LLMServices and pods, patch its held-requests annotation), both ways."""

from __future__ import annotations

import pathlib

from gateway_support import GATEWAY_COMPONENT, GATEWAY_USER, install, put_llmservice, running_gateway
from test_operator_rbac import Rule, granted, required

from kubellm_emulator import Emulator
from kubellm_emulator.testing import wait_until

CHAT = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


async def test_rbac_is_exactly_what_the_gateway_uses(emulator: Emulator, tmp_path: pathlib.Path) -> None:
    install(emulator)
    put_llmservice(emulator, "sleepy", autoscaling={"minReplicas": 0, "maxReplicas": 1})
    # A hold cap of 1 s: the request is held (and published), then answered 503 without any pod.
    async with running_gateway(emulator, tmp_path, hold_cap_s=1.0) as gateway, gateway.client() as client:
        await gateway.served("default/sleepy")
        answer = await client.post("/v1/chat/completions", json=CHAT | {"model": "default/sleepy"})
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "hold_timeout"
        assert answer.headers["retry-after"]
        await wait_until(
            lambda: any(r.user == GATEWAY_USER and r.method == "PATCH" for r in emulator.requests()),
            timeout=5,
            what="the held-requests patch",
        )
    used: set[Rule] = set()
    for request in emulator.requests():
        if request.user == GATEWAY_USER:
            used |= required(request)
    grants = granted(GATEWAY_COMPONENT / "rbac.yaml")
    assert not used - grants, f"the gateway needs rules its component does not grant: {sorted(used - grants)}"
    assert not grants - used, f"the component grants rules the gateway never used: {sorted(grants - used)}"
