"""The plan of a pass, table-tested: a pure function of the observation, the previous status and the clock.
No API, no network, no sleeps; the background fetchers are exercised with in-process callables (no sockets)."""

from __future__ import annotations

import dataclasses
import datetime
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from kubellm.modelfiles import HubFailure
from kubellm_operator.api import GIB, GROUP, VERSION, SecretKeyRef
from kubellm_operator.children import Refusal, describe_owner
from kubellm_operator.fetchers import Fetchers, Held, LoadzRequest
from kubellm_operator.modelplan import (
    HubAnswer,
    HubRequest,
    LoadzAnswer,
    TokenUnavailable,
    parse_loadz,
    secret_token_reader,
)
from kubellm_operator.observe import Observation, PlanConfig, Standing
from kubellm_operator.plan import Plan, plan
from kubellm_operator.resolve import Resolution, ResolvedModel
from kubellm_operator.storage import NodeFacts

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
UID = "uid-tiny"
CONFIG = PlanConfig(
    inference_image="kubellm/inference:test",
    gpu_inference_image="kubellm/inference:test-cuda",
    headroom_bytes=2 * GIB,
    hub_endpoint=None,
    bandwidth_bytes=50 * 2**20,
    hub_deadline_s=30.0,
)
NODES = (NodeFacts("worker-1", allocatable=100 * GIB),)
HUB = "http://127.0.0.1:9"
RESOLVED = ResolvedModel(
    name="acme/tiny",
    endpoint=HUB,
    revision=None,
    commit="c" * 40,
    files=("config.json", "model.safetensors"),
    bytes=300_000,
    parameters=70_000,
    dtype="F32",
)


def llmservice(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": {"name": "embedded:smollm2-135m-instruct"}, "storage": {"cacheSize": "1Gi"}}
    body.update(spec)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LLMService",
        "metadata": {"name": "tiny", "namespace": "default", "uid": UID, "generation": 1},
        "spec": body,
    }


def observe(obj: Mapping[str, Any] | None = None, **fields: Any) -> Observation:
    base = Observation(
        key=("default", "tiny"),
        llmservice=llmservice() if obj is None else obj,
        children={"Deployment": None, "Service": None},
        pods=(),
        nodes=NODES,
        config=CONFIG,
    )
    return dataclasses.replace(base, **fields)


def converged_children(first: Plan) -> dict[str, dict[str, Any]]:
    """The children as the API would hold them after the first plan's creates."""
    return {child.kind: child.desired for child in first.children}


def hub_model() -> dict[str, Any]:
    return llmservice(model={"name": "acme/tiny", "hub": {"endpoint": HUB}})


def hub_request() -> HubRequest:
    return HubRequest("default", "acme/tiny", None, HUB)


def condition(decided: Plan, kind: str) -> Mapping[str, Any]:
    return next(c for c in decided.status["conditions"] if c["type"] == kind)


def test_a_gone_llmservice_plans_nothing() -> None:
    assert plan(dataclasses.replace(observe(), llmservice=None), None, NOW).gone


def test_a_new_llmservice_creates_both_children_owned_and_stamped() -> None:
    decided = plan(observe(), None, NOW)
    assert [(c.kind, c.create, c.apply) for c in decided.writes] == [
        ("Deployment", True, False),
        ("Service", True, False),
    ]
    for child in decided.writes:
        refs = child.desired["metadata"]["ownerReferences"]
        assert refs == [
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "LLMService",
                "name": "tiny",
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    assert decided.status_patch is not None and decided.fingerprint is not None and not decided.refusals
    assert decided.storage_basis is not None and decided.fetches == ()


def test_a_converged_pass_writes_nothing() -> None:
    first = plan(observe(), None, NOW)
    second = plan(observe(children=converged_children(first)), first.status, NOW + datetime.timedelta(seconds=5))
    assert second.writes == () and second.status_patch is None and second.events == ()


def test_the_same_inputs_give_the_same_plan() -> None:
    assert plan(observe(), None, NOW) == plan(observe(), None, NOW)


@pytest.mark.parametrize(
    ("refs", "holder"),
    [
        ([], "no owner"),
        (
            [{"apiVersion": "v1", "kind": "ConfigMap", "name": "theirs", "uid": "u-2", "controller": True}],
            "owner ConfigMap theirs (uid u-2)",
        ),
        (
            [
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "LLMService",
                    "name": "tiny",
                    "uid": "old",
                    "controller": True,
                }
            ],
            "owner LLMService tiny (uid old)",
        ),
    ],
    ids=["no-owner", "other-owner", "an-earlier-llmservice-of-that-name"],
)
def test_a_child_not_controlled_by_this_llmservice_is_a_name_conflict(refs: list[Any], holder: str) -> None:
    first = plan(observe(), None, NOW)
    live = converged_children(first)
    live["Service"] = {**live["Service"], "metadata": {**live["Service"]["metadata"], "ownerReferences": refs}}
    decided = plan(observe(children=live), None, NOW)
    assert [c.kind for c in decided.writes] == []  # the Deployment is as rendered; the Service not ours
    assert [r.reason for r in decided.refusals] == ["NameConflict"]
    assert holder in decided.refusals[0].message and describe_owner(live["Service"]) == holder
    degraded = condition(decided, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "NameConflict")
    assert [e.reason for e in decided.events] == ["NameConflict"]
    # Posted once: a later pass with the same conflict posts nothing new.
    again = plan(observe(children=live, posted=decided.posted), decided.status, NOW)
    assert again.events == ()


def test_writes_still_backing_off_are_not_sent_again() -> None:
    first = plan(observe(), None, NOW)
    refused = Refusal(
        "QuotaExceeded", "Deployment default/tiny was refused (403 Forbidden): exceeded quota", False, kind="Deployment"
    )
    standing = Standing(first.fingerprint or "", (refused,))
    decided = plan(observe(standing=standing), None, NOW)
    assert [c.kind for c in decided.writes] == ["Service"] and decided.refusals == (refused,)
    assert condition(decided, "Degraded")["reason"] == "QuotaExceeded"
    # A spec change (another fingerprint): written again at once.
    changed = plan(observe(llmservice(replicas=2), standing=standing), None, NOW)
    assert [c.kind for c in changed.writes] == ["Deployment", "Service"] and changed.refusals == ()


def test_an_impossible_spec_writes_nothing_and_asks_no_hub() -> None:
    obj = llmservice(
        model={"name": "acme/tiny", "sizeHint": "10Gi", "hub": {"endpoint": HUB}},
        storage={"cacheSize": "12Gi", "limit": "2Gi", "request": "2Gi"},
    )
    decided = plan(observe(obj), None, NOW)
    assert decided.writes == () and decided.fetches == () and decided.invalid is not None
    assert condition(decided, "Ready")["reason"] == "InvalidSpec" and [e.reason for e in decided.events] == [
        "InvalidSpec"
    ]


def test_a_hub_model_waits_for_its_background_resolution() -> None:
    decided = plan(observe(hub_model()), None, NOW)
    assert decided.fetches == (hub_request(),) and decided.writes == () and decided.model_pending
    ready = condition(decided, "Ready")
    assert (ready["reason"], decided.status["phase"]) == ("ModelResolving", "Pending")
    assert "within 30s" in ready["message"]
    # Asked already: not asked twice.
    assert plan(observe(hub_model(), fetching=frozenset({hub_request()})), None, NOW).fetches == ()


def test_a_resolved_hub_model_is_pinned_and_its_answer_refreshed_only_when_due() -> None:
    answer = HubAnswer(Resolution(RESOLVED))
    fresh = plan(observe(hub_model(), fetched={hub_request(): Held(answer, 10.0)}), None, NOW)
    assert [c.kind for c in fresh.writes] == ["Deployment", "Service"] and fresh.fetches == ()
    env = {
        e["name"]: e.get("value") for e in fresh.writes[0].desired["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["KUBELLM_REVISION"] == "c" * 40
    assert fresh.status["model"]["commit"] == "c" * 40
    stale = plan(observe(hub_model(), fetched={hub_request(): Held(answer, 700.0)}), None, NOW)
    assert stale.fetches == (hub_request(),) and stale.writes == fresh.writes  # the held answer serves meanwhile


def test_after_a_restart_a_resolved_llmservice_is_left_as_it_was_until_the_answer_comes() -> None:
    answer = HubAnswer(Resolution(RESOLVED))
    first = plan(observe(hub_model(), fetched={hub_request(): Held(answer, 1.0)}), None, NOW)
    restarted = plan(observe(hub_model(), children=converged_children(first)), first.status, NOW)
    assert restarted.writes == () and restarted.status_patch is None and restarted.fetches == (hub_request(),)


def test_a_hub_past_its_deadline_is_degraded_hub_unreachable_and_the_rollout_goes_on() -> None:
    message = f"hub unreachable: {HUB} did not answer within 30s (the operator's deadline for resolving acme/tiny)"
    answer = HubAnswer(Resolution(None, HubFailure.HubUnreachable, message))
    decided = plan(observe(hub_model(), fetched={hub_request(): Held(answer, 1.0)}), None, NOW)
    degraded = condition(decided, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "HubUnreachable") and "within 30s" in degraded[
        "message"
    ]
    assert [c.kind for c in decided.writes] == ["Deployment", "Service"]


def test_a_model_the_hub_refuses_holds_the_rollout() -> None:
    answer = HubAnswer(Resolution(None, HubFailure.ModelNotFound, "model not found: acme/tiny"), "Secret x missing")
    decided = plan(observe(hub_model(), fetched={hub_request(): Held(answer, 1.0)}), None, NOW)
    assert decided.writes == () and decided.model_hold is not None and "Secret x missing" in decided.model_hold
    assert condition(decided, "Degraded")["reason"] == "ModelNotFound"


LOADING_POD = {
    "metadata": {"name": "tiny-1", "namespace": "default", "uid": "pod-1"},
    "status": {"phase": "Running", "containerStatuses": [{"ready": False}]},
}


def test_loading_progress_comes_from_the_held_loadz_answer_and_is_read_again_when_due() -> None:
    request = LoadzRequest("default/tiny-1", "pod-1")
    first = plan(observe(), None, NOW)
    children = converged_children(first)
    asked = plan(observe(children=children, pods=(LOADING_POD,)), None, NOW)
    assert asked.fetches == (request,) and asked.recheck_s is not None
    answer = LoadzAnswer(phase="downloading", bytesDone=1, bytesTotal=4, line="downloading 1/4 (25%)")
    shown = plan(observe(children=children, pods=(LOADING_POD,), fetched={request: Held(answer, 0.5)}), None, NOW)
    assert shown.fetches == () and shown.status["loading"]["bytesDone"] == 1
    assert plan(observe(children=children, pods=(LOADING_POD,), fetched={request: Held(answer, 5)}), None, NOW).fetches


@pytest.mark.parametrize(
    "raw",
    [
        {"bytesDone": "a"},
        {"bytesDone": -1},
        {"bytesTotal": 2**60},
        {"bytesPerSecond": "NaN"},
        {"phase": "x" * 100},
        {"phase": "<script>"},
        ["not", "an", "object"],
        "text",
    ],
)
def test_a_bad_loadz_answer_is_ignored_with_one_log_line(raw: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="kubellm.operator"):
        assert parse_loadz(raw, "pod tiny-1") is None
    assert len([r for r in caplog.records if "ignoring the /loadz answer of pod tiny-1" in r.message]) == 1


def test_a_long_loadz_line_is_cut_to_one_short_line() -> None:
    answer = parse_loadz({"phase": "downloading", "line": "a\nb" + "c" * 10_000, "extra": {"deep": [1] * 100}})
    assert answer is not None and answer.line is not None and len(answer.line) == 200 and "\n" not in answer.line


def test_a_bad_loadz_answer_through_the_fetchers_leaves_a_status() -> None:
    """{"bytesDone": "a"} from a pod: held as no answer, and the plan still gives a status."""
    notified = threading.Event()
    fetchers = Fetchers(
        hub=lambda request: HubAnswer(Resolution(RESOLVED)),
        loadz=lambda key, request: {"bytesDone": "a", "phase": "downloading"},
        notify=lambda key: notified.set(),
        workers=1,
    )
    request = LoadzRequest("default/tiny-1", "pod-1")
    try:
        fetchers.request(("default", "tiny"), [request])
        assert notified.wait(5), "the fetch ended and queued a pass"
        held = fetchers.held(("default", "tiny"))
    finally:
        fetchers.close()
    assert held[request].answer is None
    first = plan(observe(), None, NOW)
    decided = plan(observe(children=converged_children(first), pods=(LOADING_POD,), fetched=held), None, NOW)
    assert decided.status["phase"] == "Progressing" and "loading" not in decided.status


def test_a_fetch_past_its_deadline_is_given_up_and_not_repeated_while_it_hangs() -> None:
    release = threading.Event()
    calls: list[str] = []
    done = threading.Event()

    def hang(request: HubRequest) -> HubAnswer:
        calls.append(request.model)
        release.wait(10)
        return HubAnswer(Resolution(RESOLVED))

    fetchers = Fetchers(hub=hang, loadz=lambda key, r: None, notify=lambda key: done.set(), hub_deadline_s=0.2)
    try:
        fetchers.request(("default", "tiny"), [hub_request()])
        assert done.wait(5)
        held = fetchers.held(("default", "tiny"))[hub_request()]
        assert isinstance(held.answer, HubAnswer) and held.answer.resolution.failure == HubFailure.HubUnreachable
        assert "did not answer within 0.2s" in (held.answer.resolution.message or "")
        done.clear()
        fetchers.request(("default", "tiny"), [hub_request()])  # the call still hangs: not made again
        assert _eventually(lambda: not fetchers.in_flight(("default", "tiny")))
        assert fetchers.held(("default", "tiny"))[hub_request()].answer == held.answer
        assert calls == ["acme/tiny"]
    finally:
        release.set()
        fetchers.close()


def _eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    until = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > until:
            return False
        time.sleep(0.02)
    return True


def _secret(value: str) -> dict[str, Any]:
    return {"data": {"token": value}}


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("/w==", "is not UTF-8 text"),  # 0xff
        ("not base64!", "is not valid base64"),
        ("", "is empty or holds control characters"),
        ("aGZfYQpiCg==", "is empty or holds control characters"),  # "hf_a\nb\n": two lines
    ],
)
def test_a_bad_token_is_a_clear_problem(value: str, words: str) -> None:
    read = secret_token_reader(lambda namespace, name: _secret(value), "default")
    with pytest.raises(TokenUnavailable, match=words):
        read(SecretKeyRef(name="hub", key="token"))


def test_a_good_token_is_read() -> None:
    read = secret_token_reader(lambda namespace, name: _secret("aGZfb2s="), "default")
    assert read(SecretKeyRef(name="hub", key="token")) == "hf_ok"
