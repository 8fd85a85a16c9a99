"""The level-based reconcile of one LLMService, and the machinery that re-runs it when the world changes.

:func:`converge` reads the LLMService, renders its children (``render.py``), applies those that differ from
what the API holds (server-side apply, field manager ``kubellm``), reads the Deployment's pods, runs the
storage pre-flight against the Node snapshot, computes the status and writes it only when it changed. It is
the only function that writes, and it is idempotent: a pass over a converged LLMService makes reads only.

It runs from two places: Kopf's create/update/resume handlers (``handlers.py``), and a small work queue fed by
the watches of what kubellm does not own but depends on (its children, their pods, Nodes, kubelet summaries).
The queue coalesces bursts (one pass per LLMService however many pods changed) and retries transient API
errors with backoff.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
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
from kubellm_operator import render
from kubellm_operator.api import GIB, LLMService
from kubellm_operator.cluster import Cluster
from kubellm_operator.config import OperatorSettings
from kubellm_operator.metrics import CHANGED, ERROR, INVALID, UNCHANGED, WAITING, OperatorMetrics
from kubellm_operator.modelplan import (
    LOADING_REFRESH_S,
    ModelPlan,
    fetch_loadz,
    loading_status,
    plan_model,
    pods_loading,
    secret_token_reader,
)
from kubellm_operator.resolve import ModelResolver
from kubellm_operator.status import (
    INSUFFICIENT_STORAGE,
    INVALID_SPEC,
    READY,
    STORAGE_READY,
    Observed,
    compute_status,
    condition,
    status_patch,
)
from kubellm_operator.storage import NodeFacts, StorageCheck, check_storage, summary_available

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
            return all(
                item["name"] in by_name and is_applied(item, by_name[item["name"]], (*path, str(item["name"])))
                for item in desired
            )
        return len(desired) == len(actual) and all(
            is_applied(d, a, (*path, str(i))) for i, (d, a) in enumerate(zip(desired, actual, strict=True))
        )
    return _same_scalar(desired, actual, path)


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

    def replace(self, index: Mapping[str, Iterable[NodeFacts]]) -> None:
        facts = {name: next(iter(store)) for name, store in index.items() if store}
        with self._lock:
            self._facts = facts

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._facts)

    def set_summary(self, name: str, summary: Mapping[str, Any] | None) -> bool:
        """Remember a node's summary (None forgets it); True when its free space changed visibly."""
        available = summary_available(summary) if summary is not None else (None, None)
        with self._lock:
            before = self._summaries.get(name, (None, None))
            if summary is None:
                self._summaries.pop(name, None)
            else:
                self._summaries[name] = available

        def shown(pair: tuple[int | None, int | None]) -> tuple[float | None, ...]:
            # Messages show free space to 0.1Gi: smaller changes would only churn re-evaluations.
            return tuple(round(v / GIB, 1) if v is not None else None for v in pair)

        return shown(before) != shown(available)

    def facts(self) -> list[NodeFacts]:
        with self._lock:
            merged = []
            for name, facts in self._facts.items():
                fs, image_fs = self._summaries.get(name, (None, None))
                merged.append(dataclasses.replace(facts, fs_available=fs, image_fs_available=image_fs))
            return merged


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
        with self._cond:
            due = time.monotonic() + delay
            self._due[key] = min(self._due.get(key, due), due)
            self._cond.notify()

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
# The reconcile
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    outcome: str
    writes: tuple[str, ...] = ()
    invalid: str | None = None
    held: StorageCheck | None = None  # set when storage.enforce holds the replicas at 0
    model_hold: str | None = None  # set when the hub refused the model (kubellm_operator.modelplan)
    status: Mapping[str, Any] = field(default_factory=dict)


def _describe_validation(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        parts.append(f"{where}: {error['msg']}" if where else error["msg"])
    return "; ".join(parts)


def _is_transient(exc: ApiException) -> bool:
    return exc.status in (409, 429) or (exc.status or 0) >= 500 or exc.status == 0


class Operator:
    """One running operator's state and its reconcile (see the module docstring)."""

    def __init__(self, settings: OperatorSettings, cluster: Cluster, metrics: OperatorMetrics) -> None:
        self.settings = settings
        self.cluster = cluster
        self.metrics = metrics
        self.nodes = NodeBook()
        self.locks = KeyedLocks()
        self.queue = WorkQueue()
        self._known: set[Key] = set()
        self._known_lock = threading.Lock()
        self._failures: dict[Key, int] = {}
        self._summaries_forbidden = False
        self.models = ModelResolver()
        self.fetch_loadz = fetch_loadz

    # Which LLMServices exist (fed by the LLMService watch) --------------------------------------------------

    def remember(self, key: Key, exists: bool) -> None:
        with self._known_lock:
            if exists:
                self._known.add(key)
            else:
                self._known.discard(key)
        if not exists:
            self.metrics.set_phase(*key, None)

    def requeue_all(self) -> None:
        with self._known_lock:
            keys = sorted(self._known)
        for key in keys:
            self.queue.add(key)

    # The pass ---------------------------------------------------------------------------------------------

    def converge(self, namespace: str, name: str, *, announce: bool = False) -> Result:
        """One level-based pass over the LLMService; ``announce`` re-logs a standing storage warning (resume)."""
        with self.metrics.timed(), self.locks.hold((namespace, name)):
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
        self.metrics.reconciles.labels(outcome=result.outcome).inc()
        return result

    def _converge(self, namespace: str, name: str, *, announce: bool) -> Result:
        # The children are read before their owner: a child missing because the garbage collector removed it
        # then comes with a 404 for the owner, never with an owner that looks alive (and would be re-created).
        live = {kind: self.cluster.get_child(kind, namespace, name) for kind in CHILD_KINDS}
        obj = self.cluster.get_llmservice(namespace, name)
        if obj is None or (obj.get("metadata") or {}).get("deletionTimestamp"):
            # Deleted: ownerReferences make the children garbage.
            self.metrics.set_phase(namespace, name, None)
            return Result(UNCHANGED)
        metadata = obj.get("metadata") or {}
        generation = metadata.get("generation")
        previous: Mapping[str, Any] = obj.get("status") or {}
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

        storage = check_storage(llms.spec, self.nodes.facts(), self.settings.headroom_bytes) if llms else None
        # storage.enforce holds the replicas at 0 only when the check knows some nodes and none fits.
        enforced = llms is not None and llms.spec.storage.enforce
        held = storage if enforced and storage is not None and storage.nodes_seen and not storage.ok else None
        writes: list[str] = []
        deployment: dict[str, Any] | None
        model_hold = model_plan.hold if model_plan is not None else None
        if llms is not None and invalid is None and model_hold is None:
            children = render.render(
                llms, image_default=self.settings.inference_image, replicas=0 if held is not None else None
            )
            kopf.adopt(children, owner=obj)  # type: ignore[arg-type]
            deployment = None
            for child in (with_applied_hash(c) for c in children):
                kind = child["kind"]
                actual = live[kind]
                if not self._applied(child, actual):
                    verb = "created" if actual is None else "updated (spec changed or edited by hand)"
                    actual = self.cluster.apply(child)
                    writes.append(kind)
                    self.metrics.writes.labels(target=kind.lower()).inc()
                    logger.info("LLMService %s/%s: %s %s", namespace, name, kind, verb)
                if kind == "Deployment":
                    deployment = actual
        else:
            deployment = live["Deployment"]
        pods = self.cluster.list_pods(namespace, render.selector_string(name))
        raw_replicas = (obj.get("spec") or {}).get("replicas", 1)
        seen = Observed(
            generation=generation,
            desired=llms.spec.replicas if llms is not None else raw_replicas if isinstance(raw_replicas, int) else 0,
            deployment=deployment,
            pods=pods,
            storage=storage,
            selector=render.selector_string(name),
            endpoint=render.endpoint(llms) if llms is not None else None,
            held_for_storage=held is not None,
            invalid=invalid,
            model=model_plan.status if model_plan is not None else None,
            model_hold=(model_hold[0].value, model_hold[1]) if model_hold is not None else None,
            loading=loading_status(pods, self.fetch_loadz) if invalid is None and model_hold is None else None,
        )
        status = compute_status(seen, previous, now_rfc3339())
        patch = status_patch(previous, status)
        if patch is not None:
            self.cluster.patch_llmservice_status(namespace, name, patch)
            writes.append("status")
            self.metrics.writes.labels(target="status").inc()
        self.metrics.set_phase(namespace, name, status.get("phase"))
        if invalid is None and model_hold is None and pods_loading(pods):
            # No pod event marks a download's progress: read the pods again soon while they load.
            self.queue.add((namespace, name), delay=LOADING_REFRESH_S)
        self._announce(obj, previous, status, storage, invalid, announce)
        if invalid is not None:
            return Result(INVALID, tuple(writes), invalid=invalid, status=status)
        if model_hold is not None:
            return Result(WAITING, tuple(writes), model_hold=model_hold[1], status=status)
        if held is not None:
            return Result(WAITING, tuple(writes), held=held, status=status)
        return Result(CHANGED if writes else UNCHANGED, tuple(writes), status=status)

    def _applied(self, child: Mapping[str, Any], actual: Mapping[str, Any] | None) -> bool:
        if actual is None:
            return False
        annotations = (actual.get("metadata") or {}).get("annotations") or {}
        wanted = child["metadata"]["annotations"][APPLIED_HASH_ANNOTATION]
        return annotations.get(APPLIED_HASH_ANNOTATION) == wanted and is_applied(child, actual)

    def _announce(
        self,
        obj: Mapping[str, Any],
        previous: Mapping[str, Any],
        status: Mapping[str, Any],
        storage: StorageCheck | None,
        invalid: str | None,
        announce: bool,
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
            try:
                self.converge(*key)
                self._failures.pop(key, None)
            except ApiException as exc:
                failures = self._failures[key] = self._failures.get(key, 0) + 1
                delay = min(0.5 * 2 ** (failures - 1), 30.0)
                level = logging.INFO if _is_transient(exc) else logging.WARNING
                logger.log(
                    level, "LLMService %s/%s: API error %s %s; retrying in %.1fs", *key, exc.status, exc.reason, delay
                )
                self.queue.add(key, delay)
            except Exception:
                failures = self._failures[key] = self._failures.get(key, 0) + 1
                logger.exception("LLMService %s/%s: reconcile failed; retrying", *key)
                self.queue.add(key, min(0.5 * 2 ** (failures - 1), 30.0))

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
                        "kubelet summaries are not readable (RBAC nodes/proxy get: %s); using allocatable "
                        "ephemeral-storage only",
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


def retry_delay_for(exc: ApiException) -> float | None:
    """Kopf retry delay for an API error in a handler: short for transient ones, None for the rest."""
    return 1.0 if _is_transient(exc) else None
