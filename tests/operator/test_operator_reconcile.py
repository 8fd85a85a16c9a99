"""The reconcile's pure helpers: is the desired child applied, the applied hash, node book, work queue."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from kubellm_operator.api import GIB, LLMService
from kubellm_operator.children import APPLIED_HASH_ANNOTATION, is_applied, with_applied_hash
from kubellm_operator.render import render
from kubellm_operator.storage import NodeFacts
from kubellm_operator.views import NodeBook, WatchView
from kubellm_operator.workqueue import WorkQueue

DESIRED = {
    "metadata": {"name": "tiny", "labels": {"a": "1"}},
    "spec": {
        "replicas": 1,
        "template": {
            "spec": {
                "containers": [
                    {
                        "name": "inference",
                        "command": ["kubellm", "serve"],
                        "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                        "resources": {"limits": {"ephemeral-storage": "2Gi", "memory": "1024Mi"}},
                    }
                ],
                "volumes": [{"name": "cache", "emptyDir": {"sizeLimit": "1Gi"}}],
                "tolerations": [{"key": "gpu", "operator": "Exists"}],
            }
        },
    },
}


def edit(path: list[Any], value: Any) -> dict[str, Any]:
    import copy

    actual = copy.deepcopy(DESIRED)
    target: Any = actual
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return actual


CONTAINER = ["spec", "template", "spec", "containers", 0]


@pytest.mark.parametrize(
    ("actual", "applied"),
    [
        (DESIRED, True),
        # Server defaults and other managers' fields do not count as drift.
        (edit([*CONTAINER, "terminationMessagePath"], "/dev/termination-log"), True),
        (edit(["metadata", "uid"], "123"), True),
        (edit([*CONTAINER, "env"], [{"name": "B", "value": "2"}, {"name": "A", "value": "1"}]), True),
        # A variable someone else added is drift: the lists end up exactly as rendered.
        (
            edit(
                [*CONTAINER, "env"],
                [{"name": "B", "value": "2"}, {"name": "X", "value": "9"}, {"name": "A", "value": "1"}],
            ),
            False,
        ),
        # Quantities compare by value, as the apiserver canonicalises them.
        (edit([*CONTAINER, "resources", "limits", "memory"], "1Gi"), True),
        (edit(["spec", "template", "spec", "volumes", 0, "emptyDir", "sizeLimit"], "1024Mi"), True),
        # Drift.
        (edit(["spec", "replicas"], 3), False),
        (edit([*CONTAINER, "env"], [{"name": "A", "value": "1"}, {"name": "B", "value": "changed"}]), False),
        (edit([*CONTAINER, "env"], [{"name": "A", "value": "1"}]), False),
        (edit([*CONTAINER, "command"], ["kubellm", "serve", "--debug"]), False),
        (edit([*CONTAINER, "resources", "limits", "memory"], "2Gi"), False),
        (edit(["spec", "template", "spec", "tolerations"], []), False),
        (edit(["metadata", "labels"], {}), False),
        (edit(["spec", "template", "spec", "containers"], []), False),
        # A string that looks like a quantity but is not under resources compares as a string.
        (edit([*CONTAINER, "env"], [{"name": "A", "value": "1.0"}, {"name": "B", "value": "2"}]), False),
        (None, False),
    ],
)
def test_is_applied(actual: Any, applied: bool) -> None:
    assert is_applied(DESIRED, actual) is applied


def llms(**spec: Any) -> LLMService:
    return LLMService.model_validate(
        {"metadata": {"name": "tiny", "namespace": "default"}, "spec": {"model": {"name": "m"}, **spec}}
    )


def test_applied_hash_is_stable_and_changes_with_the_spec() -> None:
    first = [with_applied_hash(c) for c in render(llms(), image_default="img")]
    again = [with_applied_hash(c) for c in render(llms(), image_default="img")]
    other = [with_applied_hash(c) for c in render(llms(replicas=2), image_default="img")]

    def digest(children: list[dict[str, Any]], i: int) -> str:
        return str(children[i]["metadata"]["annotations"][APPLIED_HASH_ANNOTATION])

    assert digest(first, 0) == digest(again, 0) and digest(first, 1) == digest(again, 1)
    assert digest(first, 0) != digest(other, 0) and digest(first, 1) == digest(other, 1)
    assert "annotations" not in render(llms(), image_default="img")[0]["metadata"]  # the input is not mutated


def test_node_book_merges_summaries_and_reports_changes() -> None:
    book = NodeBook()
    book.replace({"a": [NodeFacts(name="a", allocatable=100 * GIB)], "b": [NodeFacts(name="b", allocatable=GIB)]})
    assert book.names() == ["a", "b"]
    summary = {"node": {"fs": {"availableBytes": 30 * GIB}, "runtime": {"imageFs": {"availableBytes": 20 * GIB}}}}
    assert book.set_summary("a", summary) is True
    assert book.set_summary("a", summary) is False
    # Any change counts: whether it reaches a status is for Operator.reevaluate_storage to say.
    summary["node"]["fs"]["availableBytes"] = 30 * GIB - 1000  # type: ignore[index]
    assert book.set_summary("a", summary) is True
    assert {f.name: f.free for f in book.facts()} == {"a": 20 * GIB, "b": GIB}
    assert book.set_summary("a", None) is True
    assert {f.name: f.free for f in book.facts()} == {"a": 100 * GIB, "b": GIB}


def test_work_queue_coalesces_and_orders_by_due_time() -> None:
    queue = WorkQueue()
    queue.add(("ns", "late"), delay=0.05)
    queue.add(("ns", "a"))
    queue.add(("ns", "a"))
    queue.add(("ns", "late"))  # an earlier due time wins
    assert queue.pending() == 2
    got = {queue.get(), queue.get()}
    assert got == {("ns", "a"), ("ns", "late")}
    assert queue.pending() == 0


def test_work_queue_close_releases_a_waiting_worker() -> None:
    queue = WorkQueue()
    results: list[Any] = []
    worker = threading.Thread(target=lambda: results.append(queue.get()))
    worker.start()
    queue.close()
    worker.join(timeout=5)
    assert results == [None] and not worker.is_alive()


def _obj(rv: str, replicas: int = 1) -> dict[str, Any]:
    return {"metadata": {"name": "tiny", "resourceVersion": rv}, "spec": {"replicas": replicas}}


def test_watch_view_answers_kubellms_own_write_until_the_watch_delivers_newer() -> None:
    deployments: dict[tuple[str, str], list[dict[str, Any]]] = {}
    pods = {("ns", "tiny"): [{"metadata": {"name": "tiny-b"}}, {"metadata": {"name": "tiny-a"}}]}
    view = WatchView()
    view.attach({"Deployment": deployments, "Service": {}}, pods)
    key = ("Deployment", "ns", "tiny")
    assert view.child(key) is None and view.child(("Service", "ns", "tiny")) is None
    # Created by a pass: the response stands in until the watch has it.
    view.wrote(key, None, _obj("2"))
    assert view.child(key) == _obj("2")
    deployments[("ns", "tiny")] = [_obj("2")]
    view.seen(key, "2")
    # Updated by a pass (rv 2 -> 3); the watch still holds 2, then delivers a newer state (status by a controller).
    view.wrote(key, _obj("2"), _obj("3", replicas=2))
    assert view.child(key) == _obj("3", replicas=2)
    deployments[("ns", "tiny")] = [_obj("4", replicas=2)]
    view.seen(key, "4")
    assert view.child(key) == _obj("4", replicas=2)
    # Deleted by hand: gone from the watch, so the next pass re-creates it.
    del deployments[("ns", "tiny")]
    view.seen(key, "4")
    assert view.child(key) is None
    # Pods come sorted by name, as the API lists them.
    assert [p["metadata"]["name"] for p in view.pods(("ns", "tiny"))] == ["tiny-a", "tiny-b"]
    assert view.pods(("ns", "other")) == []


def test_watch_view_refuses_a_pass_before_the_indexes_are_attached() -> None:
    with pytest.raises(RuntimeError, match="attached"):
        WatchView().child(("Deployment", "ns", "tiny"))
