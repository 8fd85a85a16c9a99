"""The level-based reconcile of one LLMService, and the machinery that re-runs it when the world changes.

:func:`converge` reads the LLMService, renders its children (``render.py``), applies those that differ from
what the API holds (server-side apply, field manager ``kubellm``), reads the Deployment's pods, runs the
storage pre-flight against the Node snapshot, computes the status and writes it only when it changed. It is
the only function that writes, and it is idempotent: a pass over a converged LLMService makes reads only.

Every pass runs from one work queue: Kopf's create/update/resume handlers only queue the LLMService (a spec
change), and so do the watches of what kubellm depends on (its children, their pods, Nodes, kubelet summaries).
The queue coalesces bursts (one pass per LLMService however many pods changed), and one retry policy
(:class:`RetryPolicy`) decides when a failing LLMService is tried again: exponential backoff with jitter, 1 s
doubling to ``--retry-max-s``, ``Retry-After`` honoured, reset only when what the pass would write changes (the
spec, or what it depends on); a write the API refuses as invalid is not retried until then.

A pass is a plan and a thin executor: :func:`plan_child` decides, from what was read, how each child is written
(nothing, server-side apply, or a JSON patch that first replaces lists someone else merged into); the executor
makes those writes, turns every refusal into a :class:`Refusal`, and the status (``status.py``) is computed from
the observations and the refusals and written even when the children could not be.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import hashlib
import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from kubellm.quantity import format_bytes, parse_quantity
from kubellm.timefmt import now_rfc3339
from kubellm_operator import autoscale, render
from kubellm_operator.api import AutoscalingSpec, LLMService, LLMServiceSpec
from kubellm_operator.cluster import Cluster, api_message, api_reason, retry_after_seconds
from kubellm_operator.config import OperatorSettings
from kubellm_operator.metrics import CHANGED, ERROR, INVALID, REFUSED, UNCHANGED, WAITING, OperatorMetrics
from kubellm_operator.modelplan import (
    HOLD_RETRY_S,
    LOADING_REFRESH_S,
    ModelPlan,
    demand_fetcher,
    loading_status,
    loadz_fetcher,
    plan_model,
    pods_loading,
    secret_token_reader,
)
from kubellm_operator.resolve import ModelResolver
from kubellm_operator.status import (
    API_REFUSED,
    CHILD_REJECTED,
    DEGRADED,
    FORBIDDEN,
    INSUFFICIENT_STORAGE,
    INVALID_SPEC,
    QUOTA_EXCEEDED,
    READY,
    REFUSAL_REASONS,
    STORAGE_READY,
    Observed,
    compute_status,
    condition,
    status_patch,
    storage_view,
)
from kubellm_operator.storage import NodeFacts, StorageCheck, check_storage, pod_ephemeral_request, summary_available

logger = logging.getLogger("kubellm.operator")

# On each child: the hash of what kubellm last applied. Comparing desired fields with the live object catches
# edits; the hash catches fields kubellm stopped setting (a removed env var), which a subset check cannot see.
APPLIED_HASH_ANNOTATION = "kubellm.dev/applied-hash"
_QUANTITY_PARENTS = frozenset({"requests", "limits", "capacity", "allocatable"})
_QUANTITY_KEYS = frozenset({"sizeLimit"})
CHILD_KINDS = ("Deployment", "Service")  # what render.render() returns, in that order

Key = tuple[str, str]  # (namespace, name) of an LLMService


# ---------------------------------------------------------------------------------------------------------
# Is the desired child already applied?
# ---------------------------------------------------------------------------------------------------------


def _same_scalar(desired: Any, actual: Any, path: tuple[str, ...]) -> bool:
    if desired == actual:
        return True
    # The apiserver canonicalises quantities ("1024Mi" may come back as "1Gi", a bare 2 as "2").
    is_quantity = bool(path) and (path[-1] in _QUANTITY_KEYS or (len(path) > 1 and path[-2] in _QUANTITY_PARENTS))
    if is_quantity and isinstance(desired, str | int) and isinstance(actual, str | int):
        try:
            return parse_quantity(desired) == parse_quantity(actual)
        except ValueError:
            return False
    return False


def is_applied(desired: Any, actual: Any, path: tuple[str, ...] = ()) -> bool:
    """Whether every field of ``desired`` has its value in ``actual`` (server defaults and others' fields ignored).

    Lists of named items (containers, env, ports, volumes) match by name, as server-side apply merges them;
    other lists must match item by item.
    """
    if isinstance(desired, Mapping):
        if not isinstance(actual, Mapping):
            return False
        return all(key in actual and is_applied(value, actual[key], (*path, key)) for key, value in desired.items())
    if isinstance(desired, list):
        if not isinstance(actual, list):
            return False
        if desired and all(isinstance(item, Mapping) and "name" in item for item in desired):
            by_name = {item.get("name"): item for item in actual if isinstance(item, Mapping)}
            # Exactly kubellm's items: an item someone else added (a second port) is drift too.
            return len(desired) == len(actual) and all(
                item["name"] in by_name and is_applied(item, by_name[item["name"]], (*path, str(item["name"])))
                for item in desired
            )
        return len(desired) == len(actual) and all(
            is_applied(d, a, (*path, str(i))) for i, (d, a) in enumerate(zip(desired, actual, strict=True))
        )
    return _same_scalar(desired, actual, path)


# The merge keys server-side apply uses for the lists kubellm renders (k8s.io/api struct tags
# patchMergeKey/listMapKeys): items another manager added under another key survive a forced apply.
_MERGE_KEYS: dict[str, tuple[str, ...]] = {
    "containers": ("name",),
    "initContainers": ("name",),
    "env": ("name",),
    "volumes": ("name",),
    "volumeMounts": ("mountPath",),
    "ownerReferences": ("uid",),
}
_PORT_KEYS = {"Service": ("port", "protocol"), "Deployment": ("containerPort", "protocol")}


def _merge_key(kind: str, field: str, item: Any) -> tuple[Any, ...] | None:
    keys = _PORT_KEYS.get(kind) if field == "ports" else _MERGE_KEYS.get(field)
    if keys is None or not isinstance(item, Mapping):
        return None
    # protocol defaults to TCP on the server: a port written without it has the same key as one with TCP.
    return tuple(item.get(key, "TCP" if key == "protocol" else None) for key in keys)


def _pointer(path: tuple[str | int, ...]) -> str:
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in path)


def list_repairs(kind: str, desired: Any, actual: Any, path: tuple[str | int, ...] = ()) -> list[dict[str, Any]]:
    """JSON-patch operations that replace the keyed lists of ``actual`` holding items under keys kubellm does not
    render (or twice): server-side apply merges by key and leaves another manager's items in place, so a Service
    whose ports someone replaced would get kubellm's port beside theirs (two ports named http, which the apiserver
    refuses). Lists without foreign items are left to server-side apply (recursing into their items)."""
    if isinstance(desired, Mapping) and isinstance(actual, Mapping):
        return [
            op
            for key, value in desired.items()
            if key in actual
            for op in list_repairs(kind, value, actual[key], (*path, key))
        ]
    if not (isinstance(desired, list) and isinstance(actual, list) and path and isinstance(path[-1], str)):
        return []
    field = path[-1]
    wanted = [_merge_key(kind, field, item) for item in desired]
    if not wanted or any(key is None for key in wanted):
        return []  # an atomic list: a forced apply replaces it whole
    present = [_merge_key(kind, field, item) for item in actual]
    if any(key not in wanted for key in present) or len(set(present)) != len(present):
        return [{"op": "replace", "path": _pointer(path), "value": desired}]
    ops: list[dict[str, Any]] = []
    for item in desired:
        index = present.index(_merge_key(kind, field, item)) if _merge_key(kind, field, item) in present else None
        if index is not None:
            ops += list_repairs(kind, item, actual[index], (*path, index))
    return ops


def with_applied_hash(child: dict[str, Any]) -> dict[str, Any]:
    """The child with its own content hash in an annotation."""
    digest = hashlib.sha256(json.dumps(child, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
    stamped = copy.deepcopy(child)
    stamped["metadata"].setdefault("annotations", {})[APPLIED_HASH_ANNOTATION] = digest
    return stamped


# ---------------------------------------------------------------------------------------------------------
# Shared state: node snapshot, per-LLMService locks, the work queue
# ---------------------------------------------------------------------------------------------------------


class NodeBook:
    """The latest Node facts (from the Kopf Node index) merged with the latest kubelet summaries."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._facts: dict[str, NodeFacts] = {}
        self._summaries: dict[str, tuple[int | None, int | None]] = {}
        self._requested: dict[str, tuple[tuple[str, int], ...]] = {}

    def replace(self, index: Mapping[str, Iterable[NodeFacts]]) -> bool:
        """The Node facts from the index; True when they changed (a heartbeat alone changes none of them)."""
        facts = {name: next(iter(store)) for name, store in index.items() if store}
        with self._lock:
            changed = facts != self._facts
            self._facts = facts
        return changed

    def replace_pods(self, index: Mapping[str, Iterable[tuple[str, int]]]) -> bool:
        """The ephemeral-storage requests of the pods bound to each node; True when they changed."""
        requested = {node: tuple(sorted(uses)) for node, uses in index.items() if uses}
        with self._lock:
            changed = requested != self._requested
            self._requested = requested
        return changed

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._facts)

    def set_summary(self, name: str, summary: Mapping[str, Any] | None) -> bool:
        """Remember a node's summary (None forgets it); True when its free space changed (whether that changes any
        LLMService's status is for :meth:`Operator.reevaluate_storage` to say: a change of a few bytes can cross
        the GiB a status shows)."""
        available = summary_available(summary) if summary is not None else (None, None)
        with self._lock:
            before = self._summaries.get(name, (None, None))
            if summary is None:
                self._summaries.pop(name, None)
            else:
                self._summaries[name] = available
        return before != available

    def facts(self) -> list[NodeFacts]:
        with self._lock:
            merged = []
            for name, facts in self._facts.items():
                fs, image_fs = self._summaries.get(name, (None, None))
                merged.append(
                    dataclasses.replace(
                        facts,
                        fs_available=fs,
                        image_fs_available=image_fs,
                        requested=self._requested.get(name, ()),
                    )
                )
            return merged


ChildKey = tuple[str, str, str]  # (kind, namespace, name) of a child


class WatchView:
    """kubellm's children and pods as the watches hold them (Kopf indexes, attached by the first handler call),
    corrected by what kubellm itself wrote and the watch has not delivered yet.

    Kopf runs no handler before every index has its initial listing, and every pass is queued by a handler, so a
    pass never sees a half-filled view. A child written by a pass comes back from the write's response: the watch
    event of that write may arrive after the next pass starts; until the watch delivers any newer state of the
    child, the response stands in for it. A child deleted by hand leaves the index, and the next pass re-creates it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._children: Mapping[str, Mapping[Key, Iterable[Mapping[str, Any]]]] | None = None
        self._pods: Mapping[Key, Iterable[Mapping[str, Any]]] | None = None
        self._written: dict[ChildKey, tuple[str | None, Mapping[str, Any]]] = {}

    def attach(
        self,
        children: Mapping[str, Mapping[Key, Iterable[Mapping[str, Any]]]],
        pods: Mapping[Key, Iterable[Mapping[str, Any]]],
    ) -> None:
        self._children, self._pods = children, pods

    @property
    def attached(self) -> bool:
        return self._children is not None and self._pods is not None

    def child(self, key: ChildKey) -> Mapping[str, Any] | None:
        if self._children is None:
            raise RuntimeError("a pass ran before any Kopf handler attached the watch indexes")
        store = self._children[key[0]].get((key[1], key[2]))
        live = next(iter(store), None) if store else None
        with self._lock:
            written = self._written.get(key)
        if written is not None and _resource_version(live) == written[0]:
            return written[1]  # the watch has not delivered kubellm's own write yet
        return live

    def pods(self, key: Key) -> list[dict[str, Any]]:
        if self._pods is None:
            raise RuntimeError("a pass ran before any Kopf handler attached the watch indexes")
        store = self._pods.get(key)
        # Sorted by name, as the API lists them: the status is the same however the events arrived.
        return sorted((copy.deepcopy(dict(p)) for p in store or ()), key=lambda p: p["metadata"]["name"])

    def wrote(self, key: ChildKey, before: Mapping[str, Any] | None, response: Mapping[str, Any]) -> None:
        with self._lock:
            self._written[key] = (_resource_version(before), response)

    def seen(self, key: ChildKey, resource_version: str | None) -> None:
        """The watch delivered a state of the child: unless it is the one before kubellm's write, it is newer."""
        with self._lock:
            written = self._written.get(key)
            if written is not None and written[0] != resource_version:
                del self._written[key]


def _resource_version(obj: Mapping[str, Any] | None) -> str | None:
    return None if obj is None else (obj.get("metadata") or {}).get("resourceVersion")


class KeyedLocks:
    """One lock per LLMService, so two passes over the same one never interleave."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[Key, threading.Lock] = {}

    @contextmanager
    def hold(self, key: Key) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            yield


class WorkQueue:
    """LLMServices due for a pass: each key at most once, at its earliest due time (a controller work queue)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: dict[Key, float] = {}
        self._closed = False

    def add(self, key: Key, delay: float = 0.0) -> None:
        if math.isinf(delay):
            return
        with self._cond:
            due = time.monotonic() + delay
            self._due[key] = min(self._due.get(key, due), due)
            self._cond.notify()

    def due_in(self, key: Key) -> float | None:
        """Seconds until ``key`` is due (negative when overdue), or None when it is not queued."""
        with self._cond:
            due = self._due.get(key)
            return None if due is None else due - time.monotonic()

    def overdue(self) -> float:
        """How long the longest-waiting due key has been due (0 when none is): a stuck queue grows this."""
        with self._cond:
            now = time.monotonic()
            return max((now - due for due in self._due.values() if due <= now), default=0.0)

    def get(self) -> Key | None:
        """The next due key (blocking), or None once closed."""
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                if self._due:
                    key, due = min(self._due.items(), key=lambda item: item[1])
                    if due <= now:
                        del self._due[key]
                        return key
                    self._cond.wait(due - now)
                else:
                    self._cond.wait()
            return None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._due)


# ---------------------------------------------------------------------------------------------------------
# Refusals and the one retry policy
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """A write the API refused with a 4xx that waiting alone will not fix: what the status and the Event say."""

    reason: str  # a status.py refusal reason: ChildRejected, Forbidden, QuotaExceeded, ApiRefused
    message: str  # names the object and carries the apiserver's own message (which names the field)
    permanent: bool  # the same write will be refused again until the spec changes (400/422)
    retry_after: float | None = None
    kind: str = ""  # the child refused (Deployment, Service)


def is_transient(exc: ApiException) -> bool:
    """Errors that a later try of the same request may not get: conflicts, throttling, timeouts, server errors."""
    return exc.status in (0, 408, 409, 429, None) or (exc.status or 0) >= 500


def refusal(exc: ApiException, what: str) -> Refusal | None:
    """The Refusal for a refused request about ``what`` ("Deployment default/tiny"), or None when it is transient."""
    if is_transient(exc):
        return None
    said = api_message(exc)
    message = f"{what} was refused ({exc.status} {api_reason(exc)}): {said}"
    kind = what.split(" ", 1)[0]
    if exc.status == 403:
        # The quota admission plugin answers 403 Forbidden "exceeded quota: ..." (k8s.io/apiserver resourcequota).
        reason = QUOTA_EXCEEDED if "exceeded quota" in said else FORBIDDEN
        return Refusal(reason, message, permanent=False, retry_after=retry_after_seconds(exc), kind=kind)
    if exc.status in (400, 422):
        return Refusal(CHILD_REJECTED, message, permanent=True, kind=kind)
    return Refusal(API_REFUSED, message, permanent=False, retry_after=retry_after_seconds(exc), kind=kind)


@dataclass
class _Backoff:
    attempts: int
    fingerprint: str | None  # what the pass would write when it failed; a different one resets the backoff
    until: float  # monotonic time before which no write is retried (inf: not until the fingerprint changes)
    refusals: tuple[Refusal, ...] = ()


class RetryPolicy:
    """One backoff per LLMService: ``base`` doubling to ``cap`` seconds, with jitter (a random 50-100% of the
    step, so LLMServices failing together do not retry together), never sooner than ``Retry-After``."""

    def __init__(
        self,
        base: float = 1.0,
        cap: float = 300.0,
        *,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base, self.cap, self._rng, self._clock = base, cap, rng, clock
        self._lock = threading.Lock()
        self._state: dict[Key, _Backoff] = {}

    def failed(
        self,
        key: Key,
        fingerprint: str | None,
        *,
        permanent: bool = False,
        retry_after: float | None = None,
        refusals: tuple[Refusal, ...] = (),
    ) -> float:
        """Record a failed pass; the delay until the next try (inf: not before the fingerprint changes)."""
        with self._lock:
            before = self._state.get(key)
            if before is not None and fingerprint is not None and before.fingerprint not in (None, fingerprint):
                before = None  # a different write failed: its own backoff starts over
            attempts = (before.attempts if before else 0) + 1
            step = min(self.cap, self.base * 2 ** (attempts - 1))
            delay = math.inf if permanent else max(step * (0.5 + self._rng() / 2), retry_after or 0.0)
            self._state[key] = _Backoff(
                attempts,
                fingerprint or (before.fingerprint if before else None),
                self._clock() + delay,
                refusals or (before.refusals if before else ()),
            )
            return delay

    def succeeded(self, key: Key) -> None:
        with self._lock:
            self._state.pop(key, None)

    reset = succeeded  # a spec change: whatever failed before is not what will be tried next

    def wait(self, key: Key) -> float:
        """Seconds until ``key`` may be tried again (0 when it is not backing off, inf when parked)."""
        with self._lock:
            state = self._state.get(key)
            return 0.0 if state is None else max(0.0, state.until - self._clock())

    def holding(self, key: Key, fingerprint: str) -> tuple[Refusal, ...] | None:
        """The refusals to keep reporting instead of writing again: same write, still within its backoff."""
        with self._lock:
            state = self._state.get(key)
            if state is None or not state.refusals or state.fingerprint != fingerprint or self._clock() >= state.until:
                return None
            return state.refusals

    def attempts(self, key: Key) -> int:
        with self._lock:
            state = self._state.get(key)
            return state.attempts if state else 0


# ---------------------------------------------------------------------------------------------------------
# The plan of a pass (pure) and its executor
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChildPlan:
    """How one child is written this pass: not at all, by server-side apply, and/or a JSON patch of lists."""

    kind: str
    desired: dict[str, Any]  # rendered, adopted and hash-stamped
    live: dict[str, Any] | None
    repairs: tuple[dict[str, Any], ...] = ()  # JSON-patch operations replacing lists with foreign items
    apply: bool = False


def plan_child(desired: dict[str, Any], live: dict[str, Any] | None) -> ChildPlan:
    kind = desired["kind"]
    if live is None:
        return ChildPlan(kind, desired, live, apply=True)
    repairs = tuple(list_repairs(kind, desired, live))
    annotations = (live.get("metadata") or {}).get("annotations") or {}
    stamped = annotations.get(APPLIED_HASH_ANNOTATION) == desired["metadata"]["annotations"][APPLIED_HASH_ANNOTATION]
    return ChildPlan(kind, desired, live, repairs, apply=not (stamped and is_applied(desired, live)) or bool(repairs))


def fingerprint(children: Iterable[Mapping[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(list(children), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Result:
    outcome: str
    writes: tuple[str, ...] = ()
    invalid: str | None = None
    held: StorageCheck | None = None  # set when storage.enforce holds the replicas at 0
    model_hold: str | None = None  # set when the hub refused the model (kubellm_operator.modelplan)
    status: Mapping[str, Any] = field(default_factory=dict)
    refusals: tuple[Refusal, ...] = ()
    fingerprint: str | None = None
    recheck_s: float | None = None  # pods are loading: no event marks a download's progress, so look again then


def _describe_validation(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        parts.append(f"{where}: {error['msg']}" if where else error["msg"])
    return "; ".join(parts)


class Operator:
    """One running operator's state and its reconcile (see the module docstring)."""

    def __init__(self, settings: OperatorSettings, cluster: Cluster, metrics: OperatorMetrics) -> None:
        self.settings = settings
        self.cluster = cluster
        self.metrics = metrics
        self.nodes = NodeBook()
        self.locks = KeyedLocks()
        self.queue = WorkQueue()
        self.retry = RetryPolicy(cap=settings.retry_max_s)
        self._known: set[Key] = set()
        self._known_lock = threading.Lock()
        self._announce_keys: set[Key] = set()
        self._posted: dict[Key, set[tuple[str, str]]] = {}
        self._summaries_forbidden = False
        self._running: dict[int, float] = {}  # thread id -> monotonic start of the pass it runs
        self.last_watch_event = time.monotonic()
        self.models = ModelResolver(policy=settings.hub_policy, allowed_endpoints=settings.hub_endpoints)
        self.fetch_loadz = loadz_fetcher(settings.pod_policy)
        self.fetch_demand = demand_fetcher(settings.pod_policy)
        self._scaling_history: dict[Key, tuple[autoscale.Sample, ...]] = {}
        # What each LLMService's last pass based its storage verdict on, and what of it reached the status:
        # a node change re-evaluates these in memory and queues only the LLMServices whose view changed.
        self._storage_basis: dict[Key, tuple[LLMServiceSpec, tuple[Any, ...]]] = {}
        self.storage_dirty = threading.Event()
        self.view = WatchView()

    # Which LLMServices exist (fed by the LLMService watch) --------------------------------------------------

    def remember(self, key: Key, exists: bool) -> None:
        with self._known_lock:
            if exists:
                self._known.add(key)
            else:
                self._known.discard(key)
                self._posted.pop(key, None)
                self._storage_basis.pop(key, None)
                self._scaling_history.pop(key, None)
        if not exists:
            self.metrics.set_status(*key, None)
            self.metrics.set_autoscaling(*key, None)
            self.retry.reset(key)

    def watched(self) -> None:
        """A watch delivered an event: the watches make progress (see :meth:`health`)."""
        self.last_watch_event = time.monotonic()

    # Triggers: the only ways a pass gets queued ------------------------------------------------------------

    def spec_changed(self, key: Key, *, announce: bool = False) -> None:
        """Kopf saw the LLMService created, changed or resumed: start over, now."""
        self.remember(key, exists=True)
        self.retry.reset(key)
        if announce:
            with self._known_lock:
                self._announce_keys.add(key)
        self.queue.add(key)

    def trigger(self, key: Key) -> None:
        """Something the LLMService depends on changed: a pass now, unless it is backing off (then at its time).

        A pass that finds the same writes still within their backoff reports the refusals without writing again.
        """
        wait = self.retry.wait(key)
        self.queue.add(key, 0.0 if math.isinf(wait) else wait)

    def requeue_all(self) -> None:
        with self._known_lock:
            keys = sorted(self._known)
        for key in keys:
            self.trigger(key)

    def nodes_changed(self) -> None:
        """A Node, a bound pod or a kubelet summary changed: :meth:`reevaluate_storage` soon (the background
        thread coalesces bursts, such as a Deployment's pods being bound, into one sweep)."""
        self.storage_dirty.set()

    def reevaluate_storage(self) -> list[Key]:
        """Re-run the storage pre-flight of every LLMService in memory against the current nodes, and queue those
        whose verdict or shown figures changed (issue 13: a heartbeat or a kubelet summary's jitter queues none;
        cordoning a node queues the LLMServices whose verdict it flips). LLMServices without a completed pass are
        not here: their first pass is queued by Kopf's create/resume."""
        facts = self.nodes.facts()
        headroom = self.settings.headroom_bytes
        with self._known_lock:
            basis = list(self._storage_basis.items())
        changed = [
            key
            for key, (spec, view) in sorted(basis)
            if storage_view(check_storage(spec, facts, headroom, f"{key[0]}/{key[1]}")) != view
        ]
        for key in changed:
            self.trigger(key)
        return changed

    # Health --------------------------------------------------------------------------------------------------

    def health(self) -> str | None:
        """Why the operator is stuck (for /healthz), or None while its watches and its queue make progress."""
        now = time.monotonic()
        stall = self.settings.stall_after_s
        if stall > 0:
            overdue = self.queue.overdue()
            if overdue > stall:
                return f"the work queue has had a pass due for {overdue:.0f}s (--stall-after-s {stall:g})"
            with self._known_lock:
                running = max((now - started for started in self._running.values()), default=0.0)
            if running > stall:
                return f"a reconcile pass has been running for {running:.0f}s (--stall-after-s {stall:g})"
        watch_stall = self.settings.watch_stall_after_s
        if watch_stall > 0 and now - self.last_watch_event > watch_stall:
            return (
                f"no watch event for {now - self.last_watch_event:.0f}s (--watch-stall-after-s {watch_stall:g}); "
                "kubelets update their Node at least every 5 minutes, so the watches are stuck"
            )
        return None

    # The pass ---------------------------------------------------------------------------------------------

    def converge(self, namespace: str, name: str, *, announce: bool = False) -> Result:
        """One level-based pass over the LLMService; ``announce`` re-logs a standing storage warning (resume)."""
        with self.metrics.timed(), self.locks.hold((namespace, name)):
            with self._known_lock:
                self._running[threading.get_ident()] = time.monotonic()
            try:
                result = self._converge(namespace, name, announce=announce)
            except ApiException as exc:
                kind = "conflict" if exc.status == 409 else "server" if (exc.status or 0) >= 500 else "client"
                self.metrics.errors.labels(kind=kind).inc()
                self.metrics.reconciles.labels(outcome=ERROR).inc()
                raise
            except Exception:
                self.metrics.errors.labels(kind="other").inc()
                self.metrics.reconciles.labels(outcome=ERROR).inc()
                raise
            finally:
                with self._known_lock:
                    self._running.pop(threading.get_ident(), None)
        self.metrics.reconciles.labels(outcome=result.outcome).inc()
        return result

    def _converge(self, namespace: str, name: str, *, announce: bool) -> Result:
        key = (namespace, name)
        # Observe: the children from the watches (WatchView), the LLMService from the API. The children are read
        # before their owner: a child missing because the garbage collector removed it then comes with a 404 for the
        # owner, never with an owner that looks alive (and would be re-created).
        live: dict[str, dict[str, Any] | None] = {}
        for kind in CHILD_KINDS:
            watched = self.view.child((kind, namespace, name))
            live[kind] = copy.deepcopy(dict(watched)) if watched is not None else None
        obj = self.cluster.get_llmservice(namespace, name)
        if obj is None or (obj.get("metadata") or {}).get("deletionTimestamp"):
            # Deleted: ownerReferences make the children garbage.
            self.metrics.set_status(namespace, name, None)
            with self._known_lock:
                self._storage_basis.pop(key, None)
            return Result(UNCHANGED)
        metadata = obj.get("metadata") or {}
        generation = metadata.get("generation")
        previous: Mapping[str, Any] = obj.get("status") or {}

        # Plan.
        llms: LLMService | None = None
        model_plan: ModelPlan | None = None
        invalid: str | None = None
        try:
            llms = LLMService.from_object({k: v for k, v in obj.items() if k != "status"})
            # The hub model resolved and what the user left unset derived from it, before anything is planned.
            model_plan = plan_model(
                llms,
                self.models,
                default_endpoint=self.settings.hub_endpoint,
                bandwidth=self.settings.bandwidth_bytes,
                read_token=secret_token_reader(self.cluster.get_secret, namespace),
            )
            llms = model_plan.llms
            problems = llms.spec.problems()
            invalid = "; ".join(problems) if problems else None
        except ValidationError as exc:
            invalid = _describe_validation(exc)
        owner = f"{namespace}/{name}"
        storage = check_storage(llms.spec, self.nodes.facts(), self.settings.headroom_bytes, owner) if llms else None
        with self._known_lock:
            if llms is not None and storage is not None:
                self._storage_basis[key] = (llms.spec, storage_view(storage))
            else:
                self._storage_basis.pop(key, None)  # an invalid spec: no node change makes it valid
        # storage.enforce holds the replicas at 0 only when the check knows some nodes and none fits.
        enforced = llms is not None and llms.spec.storage.enforce
        held = storage if enforced and storage is not None and storage.nodes_seen and not storage.ok else None
        plans: list[ChildPlan] = []
        print_: str | None = None
        model_hold = model_plan.hold if model_plan is not None else None
        scaling: autoscale.Plan | None = None
        if llms is not None and invalid is None and model_hold is None and llms.spec.autoscaling is not None:
            scaling = self._plan_scaling(key, llms.spec.autoscaling, obj, live["Deployment"])
        if llms is not None and invalid is None and model_hold is None:
            children = render.render(
                llms,
                image_default=self.settings.inference_image,
                gpu_image_default=self.settings.gpu_inference_image,
                replicas=0 if held is not None else scaling.desired if scaling is not None else None,
            )
            kopf.adopt(children, owner=obj)  # type: ignore[arg-type]
            stamped = [with_applied_hash(c) for c in children]
            print_ = fingerprint(stamped)
            plans = [plan_child(child, live[child["kind"]]) for child in stamped]

        # Execute: the writes the plan asks for, unless the same writes are still backing off.
        writes: list[str] = []
        refusals: list[Refusal] = []
        standing = {r.kind: r for r in self.retry.holding(key, print_) or ()} if print_ is not None else {}
        deployment: Mapping[str, Any] | None = live["Deployment"]
        for plan in plans:
            held_back = standing.get(plan.kind)
            if held_back is not None:
                refusals.append(held_back)  # not written again before its retry (drift elsewhere is still repaired)
                continue
            actual, refused = self._write(plan, writes)
            if refused is not None:
                refusals.append(refused)
            if plan.kind == "Deployment" and refused is None:
                deployment = actual

        # Status: from the observations and the refusals, written even when the children could not be.
        pods = self.view.pods(key)
        raw_replicas = (obj.get("spec") or {}).get("replicas", 1)
        if scaling is not None:
            desired = scaling.desired
        elif llms is not None:
            desired = llms.spec.fixed_replicas()
        else:
            desired = raw_replicas if isinstance(raw_replicas, int) else 0
        seen = Observed(
            generation=generation,
            desired=desired,
            deployment=deployment,
            pods=pods,
            storage=storage,
            selector=render.selector_string(name),
            endpoint=render.endpoint(llms) if llms is not None else None,
            held_for_storage=held is not None,
            invalid=invalid,
            refusals=tuple((r.reason, r.message) for r in refusals),
            rollout=llms.spec.effective_rollout() if llms is not None and invalid is None else None,
            startup_budget_seconds=llms.spec.probes.startup.budget_seconds if llms is not None else None,
            now=datetime.datetime.now(datetime.UTC),
            model=model_plan.status if model_plan is not None else None,
            model_hold=(model_hold[0].value, model_hold[1]) if model_hold is not None else None,
            loading=loading_status(pods, self.fetch_loadz) if invalid is None and model_hold is None else None,
            autoscaling=scaling.status if scaling is not None else None,
            scaling=scaling.condition if scaling is not None else None,
        )
        status = compute_status(seen, previous, now_rfc3339())
        patch = status_patch(previous, status)
        if patch is not None:
            self.cluster.patch_llmservice_status(namespace, name, patch)
            writes.append("status")
            self.metrics.writes.labels(target="status").inc()
        self.metrics.set_status(namespace, name, status)
        recheck = LOADING_REFRESH_S if invalid is None and model_hold is None and pods_loading(pods) else None
        if scaling is not None and (pods or scaling.held or scaling.desired):
            # Demand moves without an event: looked at again while there are pods (or held requests) to scale.
            recheck = min(recheck or autoscale.PERIOD_S, autoscale.PERIOD_S)
        self._announce(obj, previous, status, storage, invalid, announce, tuple(refusals))
        result_refusals = tuple(refusals)
        if invalid is not None:
            return Result(INVALID, tuple(writes), invalid=invalid, status=status)
        if refusals:
            return Result(
                REFUSED, tuple(writes), status=status, refusals=result_refusals, fingerprint=print_, recheck_s=recheck
            )
        if model_hold is not None:
            return Result(WAITING, tuple(writes), model_hold=model_hold[1], status=status)
        if held is not None:
            return Result(WAITING, tuple(writes), held=held, status=status, fingerprint=print_, recheck_s=recheck)
        outcome = CHANGED if writes else UNCHANGED
        return Result(outcome, tuple(writes), status=status, fingerprint=print_, recheck_s=recheck)

    def _plan_scaling(
        self,
        key: Key,
        settings: AutoscalingSpec,
        obj: Mapping[str, Any],
        deployment: Mapping[str, Any] | None,
    ) -> autoscale.Plan:
        """The autoscaler's inputs read (the Ready pods' demand, the held requests, the history), its pure plan
        computed, and the history and the metrics updated."""
        pods = self.view.pods(key)
        running = [p for p in pods if autoscale.is_running(p)]
        demand = {str((p.get("metadata") or {}).get("name")): self.fetch_demand(p) for p in running}
        asked = ((deployment or {}).get("spec") or {}).get("replicas") if deployment is not None else None
        now = time.time()
        with self._known_lock:
            history = self._scaling_history.get(key, ())
        planned = autoscale.plan(
            autoscale.Observation(
                settings=settings,
                asked=asked if isinstance(asked, int) else None,
                pods=pods,
                demand_by_pod=demand,
                annotations=(obj.get("metadata") or {}).get("annotations") or {},
                history=history,
                previous=(obj.get("status") or {}).get("autoscaling"),
                now=now,
                now_text=now_rfc3339(),
            )
        )
        if planned.sample is not None:
            history = (*history, planned.sample)
        with self._known_lock:
            self._scaling_history[key] = autoscale.trim(history, now, settings.scale_down_delay_seconds)
        decision = planned.decision
        if asked is not None and asked != decision.desired:
            logger.info(
                "LLMService %s/%s: replicas %s -> %d (%s: %s)",
                *key,
                asked,
                decision.desired,
                decision.reason,
                decision.message,
            )
        self.metrics.set_autoscaling(*key, (decision.desired, decision.demand, decision.signal_missing is not None))
        return planned

    def _write(self, plan: ChildPlan, writes: list[str]) -> tuple[Mapping[str, Any] | None, Refusal | None]:
        """Carry out one child's plan; a refusal is returned, a transient error raised (the pass is retried)."""
        metadata = plan.desired["metadata"]
        what = f"{plan.kind} {metadata.get('namespace')}/{metadata['name']}"
        actual: Mapping[str, Any] | None = plan.live
        try:
            if plan.repairs:
                # Lists another manager merged into: replaced whole first, so the apply below adds no duplicate.
                actual = self.cluster.replace_fields(
                    plan.kind, metadata["namespace"], metadata["name"], list(plan.repairs)
                )
                self.view.wrote((plan.kind, metadata["namespace"], metadata["name"]), plan.live, actual)
                self._count_write(plan.kind, writes)
                logger.info("%s: replaced lists edited by someone else (%s)", what, _paths(plan.repairs))
            # After a repair, the apply is needed only if the repaired object still differs.
            if plan.apply and (not plan.repairs or actual is None or plan_child(plan.desired, dict(actual)).apply):
                verb = "created" if plan.live is None else "updated (spec changed or edited by hand)"
                before = actual
                actual = self.cluster.apply(plan.desired)
                self.view.wrote((plan.kind, metadata["namespace"], metadata["name"]), before, actual)
                self._count_write(plan.kind, writes)
                logger.info("%s %s", what, verb)
        except ApiException as exc:
            refused = refusal(exc, what)
            if refused is None:
                raise
            logger.warning("%s", refused.message)
            return plan.live, refused
        return actual, None

    def _count_write(self, kind: str, writes: list[str]) -> None:
        writes.append(kind)
        self.metrics.writes.labels(target=kind.lower()).inc()

    def _announce(
        self,
        obj: Mapping[str, Any],
        previous: Mapping[str, Any],
        status: Mapping[str, Any],
        storage: StorageCheck | None,
        invalid: str | None,
        announce: bool,
        refusals: tuple[Refusal, ...] = (),
    ) -> None:
        """Log and post an Event when a warning appears or changes, never on a pass where nothing changed."""
        metadata = obj.get("metadata") or {}
        who = f"{metadata.get('namespace')}/{metadata.get('name')}"

        def is_new(kind: str, reason: str, same: Callable[[Mapping[str, Any]], bool]) -> bool:
            before = condition(previous, kind) or {}
            return before.get("status") != "False" or before.get("reason") != reason or not same(before)

        storage_now = condition(status, STORAGE_READY) or {}
        if storage is not None and storage_now.get("reason") == INSUFFICIENT_STORAGE:
            # Announced again only when the need changes, not when a node's free space moves a little.
            required = (status.get("storage") or {}).get("required")
            fresh = is_new(
                STORAGE_READY,
                INSUFFICIENT_STORAGE,
                lambda _: (previous.get("storage") or {}).get("required") == required,
            )
            if fresh or announce:
                best = (
                    f"best node {storage.best_node} has {format_bytes(storage.best_node_free)} free"
                    if storage.best_node is not None and storage.best_node_free is not None
                    else "no eligible node"
                )
                logger.warning(
                    "LLMService %s needs %s of free ephemeral storage (%s + %s headroom) on a node, but %s "
                    "(%d eligible of %d nodes): its pods may stay Pending or be evicted",
                    who,
                    format_bytes(storage.need),
                    format_bytes(storage.request),
                    format_bytes(storage.headroom),
                    best,
                    storage.eligible_nodes,
                    storage.nodes_seen,
                )
            if fresh:
                self.metrics.storage_warnings.inc()
                self._post_event(obj, "Warning", INSUFFICIENT_STORAGE, str(storage_now.get("message", "")))
        elif storage is not None and (condition(previous, STORAGE_READY) or {}).get("reason") == INSUFFICIENT_STORAGE:
            logger.info("LLMService %s: storage pre-flight passes now: %s", who, storage.message)
        if invalid is not None and is_new(READY, INVALID_SPEC, lambda before: invalid in str(before.get("message"))):
            logger.warning("LLMService %s has an invalid spec: %s", who, invalid)
            self._post_event(obj, "Warning", INVALID_SPEC, invalid)
        # One Warning Event per distinct refusal (and per ReplicaFailure the status reports), not one per retry.
        degraded = condition(status, DEGRADED) or {}
        found = [(r.reason, r.message) for r in refusals]
        if not found and degraded.get("reason") in REFUSAL_REASONS:
            found = [(str(degraded["reason"]), str(degraded.get("message", "")))]
        before = condition(previous, DEGRADED) or {}
        key = (str(metadata.get("namespace")), str(metadata.get("name")))
        with self._known_lock:
            posted = self._posted.setdefault(key, set())
            fresh_refusals = [
                item for item in found if item not in posted and item[1] not in str(before.get("message", ""))
            ]
            posted.update(found)
        for reason, message in fresh_refusals:
            self._post_event(obj, "Warning", reason, message)

    def _post_event(self, obj: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        try:
            self.cluster.post_event(obj, kind, reason, message)
            self.metrics.writes.labels(target="event").inc()
        except ApiException as exc:
            # An Event is informative; failing to post one must not fail the reconcile (the condition says it).
            logger.warning("could not post the %s Event: %s %s", reason, exc.status, exc.reason)

    # The work queue ---------------------------------------------------------------------------------------

    def run_queue(self) -> None:
        """Process queued LLMServices until the queue is closed (runs in its own thread)."""
        while (key := self.queue.get()) is not None:
            with self._known_lock:
                announce = key in self._announce_keys
                self._announce_keys.discard(key)
            self.run_once(key, announce=announce)

    def run_once(self, key: Key, *, announce: bool = False) -> Result | None:
        """One pass and its retry decision (the one retry policy of the operator)."""
        try:
            result = self.converge(*key, announce=announce)
        except ApiException as exc:
            delay = self.retry.failed(key, None, retry_after=retry_after_seconds(exc))
            level = logging.INFO if is_transient(exc) else logging.WARNING
            logger.log(
                level, "LLMService %s/%s: API error %s %s; retrying in %.1fs", *key, exc.status, exc.reason, delay
            )
            self.queue.add(key, delay)
            return None
        except Exception:
            delay = self.retry.failed(key, None)
            logger.exception("LLMService %s/%s: reconcile failed; retrying in %.1fs", *key, delay)
            self.queue.add(key, delay)
            return None
        if result.refusals:
            standing = self.retry.holding(key, result.fingerprint or "") or ()
            if all(refused in standing for refused in result.refusals):
                # A pass between retries (something else changed): the retry stays due at its own time.
                self.queue.add(key, self.retry.wait(key))
            else:
                retry_after = max((r.retry_after or 0.0 for r in result.refusals), default=0.0) or None
                delay = self.retry.failed(
                    key,
                    result.fingerprint,
                    permanent=all(r.permanent for r in result.refusals),
                    retry_after=retry_after,
                    refusals=result.refusals,
                )
                self.queue.add(key, delay)
        else:
            self.retry.succeeded(key)
            if result.held is not None:
                self.queue.add(key, self.settings.storage_retry_s)
            if result.model_hold is not None:
                # The hub refused the model (not found, gated, bad token): asked again at a steady pace, since the
                # fix (a token, access granted, the repo made public) happens on the hub, not in the spec.
                self.queue.add(key, HOLD_RETRY_S)
        if result.recheck_s is not None:
            self.queue.add(key, result.recheck_s)
        return result

    # Kubelet summaries ------------------------------------------------------------------------------------

    def refresh_summaries(self, names: Iterable[str] | None = None) -> bool:
        """Read every node's kubelet summary; True when some node's free space changed visibly."""
        if self._summaries_forbidden:
            return False
        changed = False
        for name in self.nodes.names() if names is None else names:
            try:
                summary: Mapping[str, Any] | None = self.cluster.node_summary(name)
            except ApiException as exc:
                if exc.status in (401, 403):
                    logger.warning(
                        "kubelet summaries are not readable (RBAC nodes/proxy get: %s; deploy/components/"
                        "kubelet-stats grants it); counting allocatable minus pod requests only",
                        exc.status,
                    )
                    self._summaries_forbidden = True
                    return changed
                logger.debug("no kubelet summary for node %s: %s %s", name, exc.status, exc.reason)
                summary = None
            except Exception as exc:  # the kubelet behind the proxy may be down; allocatable still counts
                logger.debug("no kubelet summary for node %s: %s", name, exc)
                summary = None
            changed |= self.nodes.set_summary(name, summary)
        return changed


def pod_use(pod: Mapping[str, Any]) -> tuple[str, tuple[str, int]] | None:
    """(node, (owning LLMService "namespace/name" or "", ephemeral-storage request)) of a pod bound to a node and
    not finished, as the scheduler counts it; None for the others."""
    spec = pod.get("spec") or {}
    node = spec.get("nodeName")
    if not node or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return None
    metadata = pod.get("metadata") or {}
    owner = (metadata.get("labels") or {}).get(render.SELECTOR_LABEL)
    return str(node), (f"{metadata.get('namespace')}/{owner}" if owner else "", pod_ephemeral_request(pod))


def _paths(operations: Iterable[Mapping[str, Any]]) -> str:
    return ", ".join(str(op.get("path")) for op in operations)
