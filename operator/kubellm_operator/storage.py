"""Node storage pre-flight: can any node the pods may run on hold the model's ephemeral storage?

Pure functions over plain Kubernetes objects (a Node, optionally its kubelet stats summary) and the
LLMService spec; the Kopf handlers feed them from a Node index. The seed's pods were evicted with "The node
was low on resource: ephemeral-storage": this check says so before the pods are scheduled.

How free space is counted (the scheduler stays the final arbiter): a node's free bytes are the minimum of what is
known about it. Always: its allocatable ``ephemeral-storage`` (capacity when allocatable is missing) minus the
ephemeral-storage requests of the pods already bound to it, as the scheduler's NodeResourcesFit counts (the
LLMService's own pods excepted: they are the ones being placed). With the opt-in RBAC for the kubelet summary
(``deploy/components/kubelet-stats``: nodes/proxy get), also the available bytes of the node filesystem
(``node.fs``, where emptyDirs and logs live) and of the runtime image filesystem (``node.runtime.imageFs``,
containerd's ``/var/lib/containerd``).

A node is eligible when it is Ready, not cordoned, not under DiskPressure, carries no NoSchedule/NoExecute
taint the LLMService does not tolerate, and matches its nodeSelector and required node affinity.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubellm.quantity import format_bytes, parse_quantity
from kubellm_operator.api import Affinity, LLMServiceSpec, StoragePlan, Toleration

EPHEMERAL_STORAGE = "ephemeral-storage"
BLOCKING_TAINT_EFFECTS = frozenset({"NoSchedule", "NoExecute"})
BASIS_REQUESTS = "allocatable minus the ephemeral-storage requests of the pods on each node"
BASIS_SUMMARY = "the kubelet summary (node and image filesystems) and " + BASIS_REQUESTS
SHOWN_FREE_STEP = 2**30  # a status shows free space in whole GiB (see StorageCheck.best_node_free_shown)


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str


@dataclass(frozen=True)
class NodeFacts:
    """What the pre-flight check needs to know about one Node (the value stored in the Node index)."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    unschedulable: bool = False
    ready: bool = True
    disk_pressure: bool = False
    allocatable: int | None = None  # ephemeral-storage bytes
    capacity: int | None = None
    fs_available: int | None = None  # kubelet summary: node.fs.availableBytes
    image_fs_available: int | None = None  # kubelet summary: node.runtime.imageFs.availableBytes
    # ephemeral-storage requests of the pods bound to the node, by owning LLMService ("namespace/name", "" for others)
    requested: tuple[tuple[str, int], ...] = ()

    def free_for(self, owner: str | None = None) -> int | None:
        """Free ephemeral storage for ``owner``'s pods: the minimum of what is known (see the module docstring)."""
        base = self.allocatable if self.allocatable is not None else self.capacity
        if base is not None:
            base -= sum(amount for who, amount in self.requested if owner is None or who != owner)
        known = [v for v in (base, self.fs_available, self.image_fs_available) if v is not None]
        return max(0, min(known)) if known else None

    @property
    def free(self) -> int | None:
        return self.free_for(None)


def pod_ephemeral_request(pod: Mapping[str, Any]) -> int:
    """A pod's ephemeral-storage request as the scheduler counts it: the sum over its containers, or the largest
    init container's when that is more, plus the pod overhead (k8s.io/component-helpers resource.PodRequests)."""

    def request(container: Mapping[str, Any]) -> int:
        value = ((container.get("resources") or {}).get("requests") or {}).get(EPHEMERAL_STORAGE)
        return _bytes(value) or 0

    spec = pod.get("spec") or {}
    containers = sum(request(c) for c in spec.get("containers") or [])
    init = max((request(c) for c in spec.get("initContainers") or []), default=0)
    overhead = _bytes((spec.get("overhead") or {}).get(EPHEMERAL_STORAGE)) or 0
    return max(containers, init) + overhead


def _bytes(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return int(parse_quantity(value))
    except ValueError:
        return None


def _condition_true(conditions: Iterable[Mapping[str, Any]], kind: str) -> bool | None:
    for condition in conditions:
        if condition.get("type") == kind:
            return condition.get("status") == "True"
    return None


def summary_available(summary: Mapping[str, Any] | None) -> tuple[int | None, int | None]:
    """Available bytes of ``node.fs`` and ``node.runtime.imageFs`` in a kubelet stats summary (None if absent)."""
    node_stats = (summary or {}).get("node") or {}
    fs_available = _bytes((node_stats.get("fs") or {}).get("availableBytes"))
    image_fs_available = _bytes(((node_stats.get("runtime") or {}).get("imageFs") or {}).get("availableBytes"))
    return fs_available, image_fs_available


def node_facts(node: Mapping[str, Any], summary: Mapping[str, Any] | None = None) -> NodeFacts:
    """Extract :class:`NodeFacts` from a Node object and, if known, its kubelet ``stats/summary``."""
    metadata = node.get("metadata") or {}
    spec = node.get("spec") or {}
    status = node.get("status") or {}
    conditions = status.get("conditions") or []
    taints = tuple(
        Taint(key=t.get("key", ""), value=t.get("value") or "", effect=t.get("effect", ""))
        for t in spec.get("taints") or []
    )
    fs_available, image_fs_available = summary_available(summary)
    return NodeFacts(
        name=metadata.get("name", ""),
        labels=dict(metadata.get("labels") or {}),
        taints=taints,
        unschedulable=bool(spec.get("unschedulable", False)),
        # A node without a Ready condition has not reported yet: not eligible.
        ready=_condition_true(conditions, "Ready") is True,
        disk_pressure=_condition_true(conditions, "DiskPressure") is True,
        allocatable=_bytes((status.get("allocatable") or {}).get(EPHEMERAL_STORAGE)),
        capacity=_bytes((status.get("capacity") or {}).get(EPHEMERAL_STORAGE)),
        fs_available=fs_available,
        image_fs_available=image_fs_available,
    )


# ---------------------------------------------------------------------------------------------------------
# Scheduling predicates (the subset of the scheduler's that decides where an LLMService's pods may go).
# ---------------------------------------------------------------------------------------------------------


def tolerates(toleration: Toleration, taint: Taint) -> bool:
    """The scheduler's toleration/taint match (k8s.io/api/core/v1 Toleration.ToleratesTaint)."""
    if toleration.effect is not None and toleration.effect.value != taint.effect:
        return False
    if toleration.key and toleration.key != taint.key:
        return False
    if toleration.operator.value == "Exists":
        return True  # an empty key with Exists tolerates every taint
    return bool(toleration.key) and (toleration.value or "") == taint.value


def _match_expression(expression: Mapping[str, Any], value: str | None) -> bool:
    operator = expression.get("operator")
    values = list(expression.get("values") or [])
    if operator == "In":
        return value is not None and value in values
    if operator == "NotIn":
        return value is None or value not in values
    if operator == "Exists":
        return value is not None
    if operator == "DoesNotExist":
        return value is None
    if operator in ("Gt", "Lt") and value is not None and len(values) == 1:
        try:
            left, right = int(value), int(values[0])
        except ValueError:
            return False
        return left > right if operator == "Gt" else left < right
    return False


def _match_term(term: Mapping[str, Any], node: NodeFacts) -> bool:
    expressions = term.get("matchExpressions") or []
    fields = term.get("matchFields") or []
    if not expressions and not fields:
        return False  # the scheduler: an empty term matches no node
    for expression in expressions:
        if not _match_expression(expression, node.labels.get(expression.get("key", ""))):
            return False
    for expression in fields:
        value = node.name if expression.get("key") == "metadata.name" else None
        if not _match_expression(expression, value):
            return False
    return True


def required_affinity_terms(affinity: Affinity | None) -> list[Mapping[str, Any]] | None:
    """The nodeSelectorTerms of requiredDuringSchedulingIgnoredDuringExecution (wire shape), or None when not set.

    The affinity is typed (api.Affinity), so a malformed one never reaches this check: the CRD refuses it.
    """
    node_affinity = affinity.node_affinity if affinity is not None else None
    required = node_affinity.required_during_scheduling_ignored_during_execution if node_affinity else None
    if required is None:
        return None
    return [term.model_dump(by_alias=True, exclude_none=True, mode="json") for term in required.node_selector_terms]


def ineligibility(node: NodeFacts, spec: LLMServiceSpec) -> str | None:
    """Why the LLMService's pods cannot go to this node (a few words), or None when they can."""
    if not node.ready:
        return "not Ready"
    if node.unschedulable:
        return "cordoned"
    if node.disk_pressure:
        return "DiskPressure"
    for taint in node.taints:
        if taint.effect in BLOCKING_TAINT_EFFECTS and not any(tolerates(t, taint) for t in spec.tolerations):
            return f"taint {taint.key}{'=' + taint.value if taint.value else ''}:{taint.effect}"
    for key, value in spec.node_selector.items():
        if node.labels.get(key) != value:
            return f"nodeSelector {key}={value}"
    terms = required_affinity_terms(spec.affinity)
    if terms is not None and not any(_match_term(term, node) for term in terms):
        return "required node affinity"
    return None


# ---------------------------------------------------------------------------------------------------------
# The check
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StorageCheck:
    """The outcome of the pre-flight check for one LLMService."""

    need: int  # bytes: the plan's min_node_free plus the operator's headroom
    request: int  # bytes: min_node_free alone (for messages)
    headroom: int
    nodes_seen: int
    eligible_nodes: int
    fitting_nodes: int
    best_node: str | None
    best_node_free: int | None
    excluded: tuple[tuple[str, str], ...]  # (node, why) for nodes that are not eligible
    basis: str = BASIS_REQUESTS  # how free space was counted, for status.storage

    @property
    def ok(self) -> bool:
        return self.fitting_nodes > 0

    @property
    def best_node_free_shown(self) -> int | None:
        """The best node's free bytes as the status shows them: rounded down to whole GiB, so that the kubelet
        summary's jitter (a node's free space moves by ~1 % between reads) rarely rewrites a status."""
        return None if self.best_node_free is None else self.best_node_free // SHOWN_FREE_STEP * SHOWN_FREE_STEP

    @property
    def message(self) -> str:
        need = f"{format_bytes(self.need)} of free ephemeral storage ({format_bytes(self.request)} + {format_bytes(self.headroom)} headroom)"
        shown = self.best_node_free_shown
        best = (
            f"best node {self.best_node} has {format_bytes(shown)} free"
            if self.best_node is not None and shown is not None
            else "no eligible node reports its free storage"
        )
        if self.ok:
            # No counts and no free space while the verdict holds: they move with every cordon, heartbeat and
            # kubelet summary of any node, and would rewrite every LLMService's status for nothing it acts on.
            return f"an eligible node has {need}"
        if self.nodes_seen == 0:
            return f"no nodes are visible to the operator; needs {need}"
        if self.eligible_nodes == 0:
            why = ", ".join(f"{name} {reason}" for name, reason in self.excluded[:5])
            return f"none of {self.nodes_seen} nodes is eligible for these pods ({why}); needs {need}"
        return f"no eligible node has {need}; {best} ({self.eligible_nodes} eligible of {self.nodes_seen} nodes)"


def check_storage(
    spec: LLMServiceSpec,
    nodes: Iterable[NodeFacts],
    headroom: int,
    owner: str | None = None,
    plan: StoragePlan | None = None,
) -> StorageCheck:
    """Count the nodes that are eligible for the LLMService's pods and have the free storage it needs
    (``owner``, "namespace/name", names the LLMService whose own pods' requests are not subtracted; ``plan``, the
    spec's storage plan when the caller has it)."""
    request = (plan or spec.storage_plan()).min_node_free
    need = request + headroom
    seen = 0
    eligible: list[NodeFacts] = []
    excluded: list[tuple[str, str]] = []
    for node in sorted(nodes, key=lambda n: n.name):
        seen += 1
        reason = ineligibility(node, spec)
        if reason is None:
            eligible.append(node)
        else:
            excluded.append((node.name, reason))
    free = {n.name: n.free_for(owner) for n in eligible}
    known = [n for n in eligible if free[n.name] is not None]
    # max() keeps the first of equals and the nodes are sorted by name: the message is stable across passes.
    best = max(known, key=lambda n: free[n.name] or 0, default=None)
    summarised = any(n.fs_available is not None or n.image_fs_available is not None for n in eligible)
    return StorageCheck(
        need=need,
        request=request,
        headroom=headroom,
        nodes_seen=seen,
        eligible_nodes=len(eligible),
        fitting_nodes=sum(1 for n in known if (free[n.name] or 0) >= need),
        best_node=best.name if best is not None else None,
        best_node_free=free[best.name] if best is not None else None,
        excluded=tuple(excluded),
        basis=BASIS_SUMMARY if summarised else BASIS_REQUESTS,
    )


def parse_headroom(value: str | int) -> int:
    """The operator's storage headroom setting in bytes (ValueError when malformed or negative)."""
    parsed = parse_quantity(value)
    if parsed < 0:
        raise ValueError(f"{value!r} must not be negative")
    return int(parsed.to_integral_value(rounding="ROUND_CEILING"))
