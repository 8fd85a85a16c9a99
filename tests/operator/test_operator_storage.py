"""Storage pre-flight: node facts, eligibility and the fit count, table-style (pure, no cluster)."""

from __future__ import annotations

from typing import Any

import pytest

from kubellm_operator.api import GIB, LLMServiceSpec
from kubellm_operator.storage import NodeFacts, Taint, check_storage, ineligibility, node_facts, parse_headroom


def make_node(
    name: str = "worker-1",
    allocatable: str | None = "100Gi",
    capacity: str | None = "120Gi",
    *,
    labels: dict[str, str] | None = None,
    taints: list[dict[str, str]] | None = None,
    unschedulable: bool = False,
    ready: str = "True",
    disk_pressure: str = "False",
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "conditions": [{"type": "Ready", "status": ready}, {"type": "DiskPressure", "status": disk_pressure}],
        "allocatable": {} if allocatable is None else {"ephemeral-storage": allocatable},
        "capacity": {} if capacity is None else {"ephemeral-storage": capacity},
    }
    spec: dict[str, Any] = {"unschedulable": unschedulable} if unschedulable else {}
    if taints:
        spec["taints"] = taints
    return {"metadata": {"name": name, "labels": labels or {}}, "spec": spec, "status": status}


def summary(fs: int | None = None, image_fs: int | None = None) -> dict[str, Any]:
    node: dict[str, Any] = {}
    if fs is not None:
        node["fs"] = {"availableBytes": fs, "capacityBytes": fs * 2}
    if image_fs is not None:
        node["runtime"] = {"imageFs": {"availableBytes": image_fs, "capacityBytes": image_fs * 2}}
    return {"node": node}


def spec(**fields: Any) -> LLMServiceSpec:
    return LLMServiceSpec.model_validate({"model": {"name": "m"}, **fields})


@pytest.mark.parametrize(
    ("node", "stats", "free"),
    [
        (make_node(allocatable="100Gi"), None, 100 * GIB),
        (make_node(allocatable=None, capacity="50Gi"), None, 50 * GIB),
        (make_node(allocatable="107374182400"), None, 100 * GIB),  # plain bytes, as kubelets report
        (make_node(allocatable="100Gi"), summary(fs=30 * GIB), 30 * GIB),
        (make_node(allocatable="100Gi"), summary(fs=30 * GIB, image_fs=12 * GIB), 12 * GIB),
        (make_node(allocatable="10Gi"), summary(fs=30 * GIB, image_fs=40 * GIB), 10 * GIB),
        (make_node(allocatable=None, capacity=None), None, None),
        (make_node(allocatable=None, capacity=None), summary(image_fs=5 * GIB), 5 * GIB),
    ],
)
def test_free_bytes_are_the_minimum_of_what_is_known(node: dict[str, Any], stats: Any, free: int | None) -> None:
    assert node_facts(node, stats).free == free


@pytest.mark.parametrize(
    ("node", "llms", "why"),
    [
        (make_node(), spec(), None),
        (make_node(ready="False"), spec(), "not Ready"),
        (make_node(ready="Unknown"), spec(), "not Ready"),
        (make_node(unschedulable=True), spec(), "cordoned"),
        (make_node(disk_pressure="True"), spec(), "DiskPressure"),
        (
            make_node(taints=[{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]),
            spec(),
            "taint gpu=yes:NoSchedule",
        ),
        (make_node(taints=[{"key": "gpu", "effect": "NoExecute"}]), spec(), "taint gpu:NoExecute"),
        (make_node(taints=[{"key": "gpu", "effect": "PreferNoSchedule"}]), spec(), None),
        (
            make_node(taints=[{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]),
            spec(tolerations=[{"key": "gpu", "operator": "Equal", "value": "yes", "effect": "NoSchedule"}]),
            None,
        ),
        (
            make_node(taints=[{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]),
            spec(tolerations=[{"key": "gpu", "operator": "Equal", "value": "no"}]),
            "taint gpu=yes:NoSchedule",
        ),
        (
            make_node(taints=[{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]),
            spec(tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoExecute"}]),
            "taint gpu=yes:NoSchedule",
        ),
        (make_node(taints=[{"key": "a", "effect": "NoSchedule"}]), spec(tolerations=[{"operator": "Exists"}]), None),
        (make_node(labels={"pool": "cpu"}), spec(nodeSelector={"pool": "cpu"}), None),
        (make_node(labels={"pool": "gpu"}), spec(nodeSelector={"pool": "cpu"}), "nodeSelector pool=cpu"),
        (make_node(labels={}), spec(nodeSelector={"pool": "cpu"}), "nodeSelector pool=cpu"),
    ],
)
def test_eligibility(node: dict[str, Any], llms: LLMServiceSpec, why: str | None) -> None:
    assert ineligibility(node_facts(node), llms) == why


def affinity(*terms: dict[str, Any]) -> dict[str, Any]:
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(terms)}}}


def expression(key: str, operator: str, *values: str) -> dict[str, Any]:
    return {"matchExpressions": [{"key": key, "operator": operator, "values": list(values)}]}


@pytest.mark.parametrize(
    ("labels", "node_affinity", "eligible"),
    [
        ({"zone": "a"}, affinity(expression("zone", "In", "a", "b")), True),
        ({"zone": "c"}, affinity(expression("zone", "In", "a", "b")), False),
        ({"zone": "c"}, affinity(expression("zone", "NotIn", "a")), True),
        ({}, affinity(expression("zone", "NotIn", "a")), True),
        ({"gpu": "1"}, affinity(expression("gpu", "Exists")), True),
        ({}, affinity(expression("gpu", "Exists")), False),
        ({"gpu": "1"}, affinity(expression("gpu", "DoesNotExist")), False),
        ({"cores": "64"}, affinity(expression("cores", "Gt", "32")), True),
        ({"cores": "16"}, affinity(expression("cores", "Gt", "32")), False),
        ({"cores": "16"}, affinity(expression("cores", "Lt", "32")), True),
        ({"cores": "many"}, affinity(expression("cores", "Lt", "32")), False),
        # Terms are ORed; expressions inside a term are ANDed.
        ({"zone": "c"}, affinity(expression("zone", "In", "a"), expression("zone", "In", "c")), True),
        (
            {"zone": "a", "gpu": "1"},
            affinity(
                {
                    "matchExpressions": [
                        *expression("zone", "In", "a")["matchExpressions"],
                        *expression("gpu", "DoesNotExist")["matchExpressions"],
                    ]
                }
            ),
            False,
        ),
        ({}, affinity({"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["worker-1"]}]}), True),
        ({}, affinity({"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["worker-2"]}]}), False),
        ({}, affinity({}), False),  # an empty term matches nothing
        ({"zone": "z"}, {"podAffinity": {}}, True),  # no node affinity: no constraint
    ],
)
def test_required_node_affinity(labels: dict[str, str], node_affinity: dict[str, Any], eligible: bool) -> None:
    facts = node_facts(make_node(labels=labels))
    assert (ineligibility(facts, spec(affinity=node_affinity)) is None) is eligible


def test_taint_without_value_matches_equal_toleration_with_empty_value() -> None:
    facts = NodeFacts(name="n", taints=(Taint("dedicated", "", "NoSchedule"),))
    assert ineligibility(facts, spec(tolerations=[{"key": "dedicated", "operator": "Equal"}])) is None


def test_check_counts_fitting_eligible_and_seen_nodes_and_picks_the_best() -> None:
    nodes = [
        node_facts(make_node("small", "8Gi")),
        node_facts(make_node("big", "50Gi")),
        node_facts(make_node("bigger-but-cordoned", "500Gi", unschedulable=True)),
        node_facts(make_node("medium", "30Gi")),
    ]
    check = check_storage(spec(storage={"request": "20Gi"}), nodes, headroom=2 * GIB)
    assert (check.need, check.nodes_seen, check.eligible_nodes, check.fitting_nodes) == (22 * GIB, 4, 3, 2)
    assert (check.best_node, check.best_node_free, check.ok) == ("big", 50 * GIB, True)
    # The counts stay on the check (status.storage shows them when no node fits); the message that a node fits
    # carries none of them, so a cordon or a summary elsewhere does not rewrite the condition.
    assert check.message == "an eligible node has 22Gi of free ephemeral storage (20Gi + 2Gi headroom)"


def test_check_fails_with_the_best_node_named() -> None:
    nodes = [node_facts(make_node("a", "15Gi")), node_facts(make_node("b", "18Gi", capacity="20Gi"))]
    check = check_storage(spec(model={"name": "m", "sizeHint": "15Gi"}), nodes, headroom=2 * GIB)
    # sizeHint 15Gi -> cache 18Gi -> request 19Gi, plus 2Gi headroom.
    assert check.need == 21 * GIB
    assert not check.ok
    assert check.message == (
        "no eligible node has 21Gi of free ephemeral storage (19Gi + 2Gi headroom); best node b has 18Gi free "
        "(2 eligible of 2 nodes)"
    )


def test_check_uses_min_node_free_and_says_why_no_node_is_eligible() -> None:
    nodes = [node_facts(make_node("a", unschedulable=True)), node_facts(make_node("b", disk_pressure="True"))]
    check = check_storage(spec(storage={"minNodeFree": "1Gi"}), nodes, headroom=0)
    assert check.need == GIB
    assert (check.eligible_nodes, check.fitting_nodes, check.best_node) == (0, 0, None)
    assert check.message == (
        "none of 2 nodes is eligible for these pods (a cordoned, b DiskPressure); needs 1Gi of free ephemeral "
        "storage (1Gi + 0 headroom)"
    )


def test_ties_pick_the_first_name_so_the_message_is_stable() -> None:
    nodes = [node_facts(make_node(n, "40Gi")) for n in ("c", "a", "b")]
    assert check_storage(spec(), nodes, headroom=0).best_node == "a"


def test_no_nodes() -> None:
    check = check_storage(spec(), [], headroom=GIB)
    assert (check.ok, check.nodes_seen) == (False, 0)
    assert check.message.startswith("no nodes are visible to the operator")


@pytest.mark.parametrize(("value", "expected"), [("2Gi", 2 * GIB), ("0", 0), (1024, 1024), ("1.5Ki", 1536), ("1m", 1)])
def test_parse_headroom(value: str | int, expected: int) -> None:
    assert parse_headroom(value) == expected


@pytest.mark.parametrize("value", ["-1Gi", "lots", "2GB"])
def test_parse_headroom_rejects(value: str) -> None:
    with pytest.raises(ValueError, match=repr(value)):
        parse_headroom(value)
