"""The operator: its shared state, the triggers that queue a pass, and the pass itself (observe → plan → execute).

A pass is three steps, each in a module named for it: :mod:`observe` takes one frozen snapshot (the children and
pods from the watches, the Node facts, what the background fetchers hold, the refusals still backing off, the
LLMService read from the API); :mod:`plan` decides, as one pure function, the child writes, the status, the
Events and the fetches; :mod:`execute` makes the writes and turns the API's answers into refusals. When a pass
wrote (or was refused), the plan is made once more from the answers, so the status it writes shows the objects as
written; that second plan writes no child.

Every pass runs from one work queue (:mod:`workqueue`): Kopf's create/update/resume handlers only queue the
LLMService (a spec change), and so do the watches of what kubellm depends on (its children, their pods, Nodes,
kubelet summaries, the gateways' held-requests annotations) and the answers of the background fetchers
(:mod:`fetchers`: hub resolution, the pods' ``/loadz`` and their demand for ``spec.autoscaling``, whose addresses
tenants choose, never run on a pass). One retry policy decides when a failing
LLMService is tried again.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client.exceptions import ApiException

from kubellm_operator import autoscale
from kubellm_operator.api import LLMServiceSpec
from kubellm_operator.children import CHILD_KINDS, Refusal
from kubellm_operator.cluster import Cluster, retry_after_seconds
from kubellm_operator.config import OperatorSettings
from kubellm_operator.execute import Executor, is_transient
from kubellm_operator.fetchers import DemandRequest, Fetchers, LoadzRequest
from kubellm_operator.metrics import ERROR, OperatorMetrics
from kubellm_operator.modelplan import (
    HOLD_RETRY_S,
    HubAnswer,
    HubRequest,
    demand_fetcher,
    loadz_fetcher,
    resolve_hub,
    secret_token_reader,
)
from kubellm_operator.observe import Observation, PlanConfig, Standing
from kubellm_operator.plan import CHANGED, INVALID, NOT_ALLOWED, REFUSED, UNCHANGED, WAITING, Plan, plan
from kubellm_operator.podwatch import PodTally
from kubellm_operator.resolve import ModelResolver
from kubellm_operator.status import storage_view
from kubellm_operator.storage import StorageCheck, check_storage
from kubellm_operator.views import NodeBook, WatchView
from kubellm_operator.workqueue import Key, KeyedLocks, RetryPolicy, WorkQueue

logger = logging.getLogger("kubellm.operator")


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


class Operator:
    """One running operator's state and its reconcile (see the module docstring)."""

    def __init__(self, settings: OperatorSettings, cluster: Cluster, metrics: OperatorMetrics) -> None:
        self.settings = settings
        self.cluster = cluster
        self.metrics = metrics
        self.nodes = NodeBook()
        # Every pod's ephemeral-storage request, from the slim pod watches (podwatch.py) that main.background runs.
        self.pods = PodTally([None] if settings.clusterwide else list(settings.namespaces), self._pods_changed)
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
        self.models = ModelResolver(
            timeout_s=settings.hub_deadline_s, policy=settings.hub_policy, allowed_endpoints=settings.hub_endpoints
        )
        self.fetch_loadz = loadz_fetcher(settings.pod_policy, deadline_s=settings.loadz_deadline_s)
        self.fetch_demand = demand_fetcher(settings.pod_policy)
        # spec.autoscaling's demand history per LLMService (in memory: after a restart the first scale-down window
        # holds the replicas where they are, see autoscale.decide).
        self._scaling_history: dict[Key, tuple[autoscale.Sample, ...]] = {}
        self.config = PlanConfig.from_settings(settings)
        self.view = WatchView()
        self.executor = Executor(cluster, self.view, metrics)
        self.fetchers = Fetchers(
            hub=self._resolve_hub,
            loadz=self._read_loadz,
            demand=self._read_demand,
            notify=self.trigger,
            workers=settings.fetch_workers,
            hub_deadline_s=settings.hub_deadline_s,
            loadz_deadline_s=settings.loadz_deadline_s,
        )
        # What each LLMService's last pass based its storage verdict on, and what of it reached the status:
        # a node change re-evaluates these in memory and queues only the LLMServices whose view changed.
        self._storage_basis: dict[Key, tuple[LLMServiceSpec, tuple[Any, ...]]] = {}
        self.storage_dirty = threading.Event()

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
            self.fetchers.forget(key)
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

    def _pods_changed(self, index: Mapping[str, list[tuple[str, int]]]) -> None:
        # A pod was bound, finished or deleted: node storage taken or freed may change the pre-flight of other
        # LLMServices; those whose verdict or shown figures change are queued.
        if self.nodes.replace_pods(index):
            self.nodes_changed()

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
        if watch_stall > 0 and (stale := self.pods.health(watch_stall)) is not None:
            return stale
        if watch_stall > 0 and now - self.last_watch_event > watch_stall:
            return (
                f"no watch event for {now - self.last_watch_event:.0f}s (--watch-stall-after-s {watch_stall:g}); "
                "kubelets update their Node at least every 5 minutes, so the watches are stuck"
            )
        return None

    def _resolve_hub(self, request: HubRequest) -> HubAnswer:
        """A fetcher's hub job: the token Secret (with the API timeout), then the hub."""
        return resolve_hub(request, self.models, secret_token_reader(self.cluster.get_secret, request.namespace))

    def _read_loadz(self, key: Key, request: LoadzRequest) -> Mapping[str, Any] | None:
        """A fetcher's /loadz job: the pod as the watch holds it now (gone: nothing to read)."""
        for pod in self.view.pods(key):
            if str((pod.get("metadata") or {}).get("uid")) == request.uid:
                return self.fetch_loadz(pod)
        return None

    def _read_demand(self, key: Key, request: DemandRequest) -> float | None:
        """A fetcher's demand job (spec.autoscaling): the pod's /metrics, as the watch holds the pod now."""
        for pod in self.view.pods(key):
            if str((pod.get("metadata") or {}).get("uid")) == request.uid:
                return self.fetch_demand(pod)
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

    def observe(self, key: Key, *, announce: bool = False) -> Observation:
        """The snapshot a pass plans from, all of it from the watches and from what the fetchers hold: no request.
        A child the garbage collector removed may be seen gone before its owner is: it is then created again and
        collected again (its ownerReference names the deleted LLMService); a status patch of a deleted LLMService
        finds it gone (404) and the pass ends."""
        namespace, name = key
        children = {kind: self.view.child((kind, namespace, name)) for kind in CHILD_KINDS}
        found = self.view.child(("LLMService", namespace, name))
        obj = copy.deepcopy(dict(found)) if found is not None else None
        if obj is not None and (obj.get("metadata") or {}).get("deletionTimestamp"):
            obj = None  # being deleted: ownerReferences make the children garbage
        standing = self.retry.standing(key)
        with self._known_lock:
            posted = frozenset(self._posted.get(key, ()))
            history = self._scaling_history.get(key, ())
        return Observation(
            key=key,
            llmservice=obj,
            children=children,
            pods=tuple(self.view.pods(key)),
            nodes=tuple(self.nodes.facts()),
            config=self.config,
            fetched=self.fetchers.held(key),
            fetching=self.fetchers.in_flight(key),
            standing=Standing(*standing) if standing is not None else None,
            posted=posted,
            announce=announce,
            scaling_history=history,
        )

    def _converge(self, namespace: str, name: str, *, announce: bool) -> Result:
        key = (namespace, name)
        observation = self.observe(key, announce=announce)
        obj = observation.llmservice
        previous: Mapping[str, Any] = (obj or {}).get("status") or {}
        now = datetime.datetime.now(datetime.UTC)
        decided = plan(observation, previous, now)
        if decided.gone or obj is None:
            self.metrics.set_status(namespace, name, None)
            with self._known_lock:
                self._storage_basis.pop(key, None)
            return Result(UNCHANGED)
        self.fetchers.request(key, decided.fetches)
        uid = (obj.get("metadata") or {}).get("uid")
        written, writes, refused = self.executor.write_children(decided, uid)
        if written or refused:
            # The status of a pass that wrote shows the objects as the API answered (a new generation not yet
            # rolled out), and the refusals it met; this second plan of the same pass writes no child.
            children = {**observation.children, **written}
            refusals = (*decided.refusals, *refused)
            standing = Standing(decided.fingerprint or "", refusals) if refusals else observation.standing
            observation = dataclasses.replace(observation, children=children, standing=standing, scaled=decided.scaling)
            again = plan(observation, previous, now)
            extra = [child.kind for child in again.writes if child.kind not in written]
            if extra:
                logger.debug("LLMService %s/%s: re-plan after writes still wants %s", *key, extra)
            decided = dataclasses.replace(again, refusals=tuple(_unique(refusals)))
        self.executor.finish(obj, decided, writes)
        with self._known_lock:
            if decided.storage_basis is not None:
                self._storage_basis[key] = decided.storage_basis
            elif not decided.model_pending:
                self._storage_basis.pop(key, None)  # an invalid spec: no node change makes it valid
            self._posted[key] = set(decided.posted)
        self._scaled(key, decided)
        return _result(decided, tuple(writes))

    def _scaled(self, key: Key, decided: Plan) -> None:
        """spec.autoscaling's decision recorded, in one place: the history it leaves kept, the metrics set."""
        scaling = decided.scaling
        if scaling is None:
            if not decided.model_pending:  # a pass that decided nothing leaves no stale figures behind
                self.metrics.set_autoscaling(*key, None)
            return
        with self._known_lock:
            self._scaling_history[key] = scaling.history
        decision = scaling.decision
        self.metrics.set_autoscaling(*key, (decision.desired, decision.demand, decision.signal_missing is not None))

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


def _unique(refusals: Iterable[Refusal]) -> list[Refusal]:
    return list(dict.fromkeys(refusals))


def _result(decided: Plan, writes: tuple[str, ...]) -> Result:
    """What ``run_once`` needs of a pass: its outcome and what decides the next try."""
    base = Result(UNCHANGED, writes, status=decided.status)
    if decided.invalid is not None:
        return dataclasses.replace(base, outcome=INVALID, invalid=decided.invalid)
    if decided.not_allowed is not None:
        return dataclasses.replace(base, outcome=NOT_ALLOWED)
    if decided.model_hold is not None and not decided.refusals:
        return dataclasses.replace(base, outcome=WAITING, model_hold=decided.model_hold)
    if decided.model_pending:
        return dataclasses.replace(base, outcome=WAITING)
    outcome = REFUSED if decided.refusals else WAITING if decided.held is not None else CHANGED if writes else UNCHANGED
    return dataclasses.replace(
        base,
        outcome=outcome,
        refusals=decided.refusals,
        held=decided.held if not decided.refusals else None,
        fingerprint=decided.fingerprint,
        recheck_s=decided.recheck_s,
    )
