"""Property test: any LLMService the model accepts renders to manifests the official schemas accept, stably."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llmservice_cases import IMAGE, minimal

from kubellm_operator.api import LLMService
from kubellm_operator.render import render

QUANTITIES = st.sampled_from(["1", 2, "500m", "1Gi", "1536Mi", "20Gi", "1e9", "0.5Gi"])
SECRET_REF = st.fixed_dictionaries({"name": st.from_regex(r"\A[a-z][a-z0-9-]{0,10}[a-z0-9]\Z"), "key": st.just("k")})
RESOURCE_LIST = st.fixed_dictionaries({}, optional={"cpu": QUANTITIES, "memory": QUANTITIES})


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    service_type = draw(st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer"]))
    service: dict[str, Any] = {"type": service_type, "port": draw(st.integers(1, 65535))}
    if service_type != "ClusterIP" and draw(st.booleans()):
        service["nodePort"] = draw(st.integers(30000, 32767))
    storage: dict[str, Any] = draw(
        st.one_of(
            st.just({}),
            st.fixed_dictionaries({"cacheSize": QUANTITIES}),
            st.fixed_dictionaries({"claimName": st.just("models")}, optional={"request": st.just("3Gi")}),
        )
    )
    spec: dict[str, Any] = {
        "model": draw(
            st.fixed_dictionaries(
                {"name": st.text(min_size=1, max_size=40)},
                optional={
                    "revision": st.text(max_size=10),
                    "dtype": st.sampled_from(["auto", "float32", "float16", "bfloat16"]),
                    "maxNewTokens": st.integers(1, 32768),
                    "temperature": st.floats(0, 2),
                    "hubTokenSecretRef": SECRET_REF,
                },
            )
        ),
        "replicas": draw(st.integers(0, 1000)),
        "service": service,
        "storage": storage,
        "resources": {
            "requests": draw(RESOURCE_LIST),
            "limits": {**draw(RESOURCE_LIST), **draw(st.sampled_from([{}, {"nvidia.com/gpu": 1}]))},
        },
        "probes": {
            "startup": {"periodSeconds": draw(st.integers(1, 3600)), "budgetSeconds": draw(st.integers(10, 86400))},
            "liveness": {"mode": draw(st.sampled_from(["http", "inference"]))},
        },
        "env": draw(
            st.lists(
                st.fixed_dictionaries(
                    {"name": st.from_regex(r"\A[A-Z_][A-Z0-9_]{0,12}\Z"), "value": st.text(max_size=20)}
                ),
                max_size=3,
                unique_by=lambda var: var["name"],
            ).filter(lambda env: all(not var["name"].startswith(("KUBELLM_", "HF_HOME", "HOME")) for var in env))
        ),
        "nodeSelector": draw(
            st.dictionaries(
                st.from_regex(r"\A[a-z]{1,8}(\.io/[a-z]{1,5})?\Z"), st.from_regex(r"\A[a-z0-9]{0,8}\Z"), max_size=2
            )
        ),
    }
    if draw(st.booleans()):
        spec["auth"] = {"apiKeySecretRef": draw(SECRET_REF)}
    return spec


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs())
def test_any_accepted_spec_renders_valid_stable_manifests(spec: dict[str, Any]) -> None:
    try:
        llms = LLMService.from_object(minimal(**spec))
    except ValueError:
        return  # e.g. requests above limits: refused with a message, nothing to render
    first = render(llms, image_default=IMAGE)
    for manifest in first:
        kubernetes_validate.validate(manifest, "1.32.0", strict=True)
    assert yaml.safe_dump_all(first) == yaml.safe_dump_all(render(llms, image_default=IMAGE))
