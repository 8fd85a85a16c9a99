"""``kubellm render --resolve``: the operator's model step, run offline against the hub, for a preview of the
derived values and where each came from."""

from __future__ import annotations

import os

from kubellm.quantity import parse_quantity
from kubellm_operator.api import LLMService, SecretKeyRef
from kubellm_operator.egress import EgressPolicy
from kubellm_operator.modelplan import plan_model
from kubellm_operator.resolve import ModelResolver

CDN_HOSTS = frozenset({"127.0.0.1", "localhost", "cdn-lfs.huggingface.co", "cdn-lfs.hf.co", "cas-bridge.xethub.hf.co"})


def resolve_for_render(
    llms: LLMService, hub_endpoint: str | None, bandwidth: str
) -> tuple[LLMService, list[str], str | None]:
    """(the effective LLMService, comment lines, a problem that stops the render or None)."""
    try:
        bytes_per_second = int(parse_quantity(bandwidth))
    except ValueError as error:
        return llms, [], f"--download-bandwidth: {error}"
    if bytes_per_second <= 0:
        return llms, [], f"--download-bandwidth: {bandwidth!r} must be positive"

    def token(_: SecretKeyRef) -> str | None:
        return os.environ.get("HF_TOKEN")

    default = hub_endpoint or os.environ.get("HF_ENDPOINT")
    # Run by its user, on the user's behalf: any address the user's machine reaches, as a browser would.
    resolver = ModelResolver(policy=EgressPolicy(allow_loopback=True, allow_private=True, redirect_hosts=CDN_HOSTS))
    plan = plan_model(llms, resolver, default_endpoint=default, bandwidth=bytes_per_second, read_token=token)
    name = llms.metadata.name
    lines: list[str] = []
    if plan.status is not None and plan.status.commit:
        lines.append(
            f"LLMService {name}: {plan.status.name} on {plan.status.endpoint} is commit {plan.status.commit}, "
            f"{len(plan.status.files)} files, {plan.status.size}, {plan.status.parameters or '?'} parameters "
            f"({plan.status.dtype or '?'})"
        )
    elif plan.status is not None:
        lines.append(f"LLMService {name}: not resolved: {plan.status.error}")
    if plan.hold is not None:
        return llms, lines, f"LLMService {name}: {plan.hold[1]} (the operator would hold it as {plan.hold[0].value})"
    lines += [f"  {d.field}: {d.value}  <- {d.source}" for d in plan.derived]
    return plan.llms, lines, None
