"""Execute: the writes a plan asks for (the last of observe → plan → execute), and the API's answers turned into
refusals.

Thin on purpose: what to write was decided by ``plan.py``. A child absent from the watch is created (never applied
over: a 409 means the name is someone else's, and one bounded read names who holds it); a child of this LLMService
is updated by server-side apply (field manager ``kubellm``), after a JSON patch of the lists someone else merged
into. A refused write becomes a :class:`Refusal`; a transient error (409 conflict, 429, 5xx, a timeout) is raised,
and the pass is retried by the retry policy.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from kubellm_operator.children import (
    ChildPlan,
    Refusal,
    applier_managed_fields,
    describe_owner,
    has_update_entry,
    name_conflict,
    owned_by,
    plan_child,
)
from kubellm_operator.cluster import Cluster, api_message, api_reason, retry_after_seconds
from kubellm_operator.metrics import OperatorMetrics
from kubellm_operator.plan import Event, Plan
from kubellm_operator.status import API_REFUSED, CHILD_REJECTED, FORBIDDEN, INSUFFICIENT_STORAGE, QUOTA_EXCEEDED
from kubellm_operator.views import WatchView

logger = logging.getLogger("kubellm.operator")


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


class Executor:
    """Carries out plans against the API, keeping the watch view and the metrics in step."""

    def __init__(self, cluster: Cluster, view: WatchView, metrics: OperatorMetrics) -> None:
        self.cluster, self.view, self.metrics = cluster, view, metrics

    def write_children(
        self, plan: Plan, owner_uid: str | None
    ) -> tuple[dict[str, Mapping[str, Any] | None], list[str], list[Refusal]]:
        """The child writes of ``plan``: (each written child as the API answered, what was written, refusals)."""
        written: dict[str, Mapping[str, Any] | None] = {}
        writes: list[str] = []
        refusals: list[Refusal] = []
        for child in plan.writes:
            actual, refused = self._write(child, owner_uid, writes)
            if refused is not None:
                refusals.append(refused)
            else:
                written[child.kind] = actual
        return written, writes, refusals

    def _write(
        self, plan: ChildPlan, owner_uid: str | None, writes: list[str]
    ) -> tuple[Mapping[str, Any] | None, Refusal | None]:
        """One child's plan; a refusal is returned, a transient error raised (the pass is retried)."""
        metadata = plan.desired["metadata"]
        namespace, name = metadata["namespace"], metadata["name"]
        what = f"{plan.kind} {namespace}/{name}"
        key = (plan.kind, namespace, name)
        actual: Mapping[str, Any] | None = plan.live
        try:
            if plan.create:
                if not self._owner_watched(namespace, name, owner_uid):
                    # Deleted while this pass ran (the watch delivered it since the pass observed): a child created
                    # now would only be garbage-collected again. No request: the watch says so.
                    logger.debug("%s: not created, its LLMService is being deleted", what)
                    return None, None
                if self.view.vanished(key) and not self.cluster.llmservice_exists(namespace, name, owner_uid):
                    # The garbage collector took the child after its LLMService: not created again.
                    logger.debug("%s: not re-created, its LLMService is gone", what)
                    return None, None
                try:
                    actual = self.cluster.create(plan.desired)
                except ApiException as exc:
                    if exc.status != 409:
                        raise
                    return self._taken(plan, owner_uid)
                self.view.wrote(key, None, actual)
                self._count_write(plan.kind, writes)
                logger.info("%s created", what)
                return actual, None
            if plan.repairs:
                # Lists another manager merged into: replaced whole first, so the apply below adds no duplicate.
                actual = self.cluster.replace_fields(plan.kind, namespace, name, list(plan.repairs))
                self.view.wrote(key, plan.live, actual)
                self._count_write(plan.kind, writes)
                logger.info("%s: replaced lists edited by someone else (%s)", what, _paths(plan.repairs))
            # After a repair, the apply is needed only if the repaired object still differs.
            if plan.apply and (not plan.repairs or actual is None or plan_child(plan.desired, dict(actual)).apply):
                if plan.adopt_updates or (plan.repairs and actual is not None and has_update_entry(actual)):
                    self._adopt_updates(plan, writes)
                before = actual
                actual = self.cluster.apply(plan.desired)
                self.view.wrote(key, before, actual)
                self._count_write(plan.kind, writes)
                logger.info("%s updated (spec changed or edited by hand)", what)
        except ApiException as exc:
            refused = refusal(exc, what)
            if refused is None:
                raise
            logger.warning("%s", refused.message)
            return plan.live, refused
        return actual, None

    def _adopt_updates(self, plan: ChildPlan, writes: list[str]) -> None:
        """Fold kubellm's Update entry (its create's) into its Apply entry before an apply, so the apply removes
        the fields the spec no longer renders. Once per child, on its first update: a read for the field sets
        (the watch keeps none), then a JSON patch of managedFields only, conditional on the resourceVersion read
        (a write meanwhile: 409, the pass is retried)."""
        metadata = plan.desired["metadata"]
        namespace, name = metadata["namespace"], metadata["name"]
        current = self.cluster.get_child(plan.kind, namespace, name)
        if current is None or not has_update_entry(current):
            return
        entries = list((current.get("metadata") or {}).get("managedFields") or [])
        operations = [
            {"op": "replace", "path": "/metadata/resourceVersion", "value": current["metadata"]["resourceVersion"]},
            {"op": "replace", "path": "/metadata/managedFields", "value": applier_managed_fields(entries)},
        ]
        answer = self.cluster.replace_fields(plan.kind, namespace, name, operations)
        key = (plan.kind, namespace, name)
        self.view.wrote(key, current, answer)
        self._count_write(plan.kind, writes)
        logger.info("%s: kubellm's fields set at creation now belong to its apply", f"{plan.kind} {namespace}/{name}")

    def _owner_watched(self, namespace: str, name: str, owner_uid: str | None) -> bool:
        """Whether the LLMService, as the watch holds it now, is still the one the pass planned for and not being
        deleted."""
        current = self.view.child(("LLMService", namespace, name))
        metadata = (current or {}).get("metadata") or {}
        return current is not None and metadata.get("uid") == owner_uid and not metadata.get("deletionTimestamp")

    def _taken(self, plan: ChildPlan, owner_uid: str | None) -> tuple[Mapping[str, Any] | None, Refusal | None]:
        """The create found the name taken: one read (bounded by the API timeout) says by whom. The object is
        not written either way: if it is this LLMService's (its watch event is late), the next pass plans it."""
        metadata = plan.desired["metadata"]
        namespace, name = metadata["namespace"], metadata["name"]
        try:
            existing = self.cluster.get_child(plan.kind, namespace, name)
        except ApiException as exc:
            if is_transient(exc):
                raise
            holder = f"its owner could not be read: {exc.status} {api_reason(exc)}"
        else:
            if existing is None:
                raise ApiException(status=409, reason="Conflict: created and deleted meanwhile")  # retried
            if owned_by(existing, owner_uid):
                self.view.wrote((plan.kind, namespace, name), None, existing)
                return existing, None
            holder = describe_owner(existing)
        refused = name_conflict(plan.kind, namespace, name, holder)
        logger.warning("%s", refused.message)
        return None, refused

    def finish(self, obj: Mapping[str, Any], plan: Plan, writes: list[str]) -> None:
        """The status patch, the log lines and the Events of ``plan``."""
        metadata = obj.get("metadata") or {}
        namespace, name = str(metadata.get("namespace")), str(metadata.get("name"))
        if plan.status_patch is not None:
            try:
                answer = self.cluster.patch_llmservice_status(namespace, name, plan.status_patch)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                logger.debug("LLMService %s/%s was deleted before its status was written", namespace, name)
                return
            # The pass reads the LLMService from the watch: the answer stands in until the watch delivers it.
            self.view.wrote(("LLMService", namespace, name), obj, answer)
            writes.append("status")
            self.metrics.writes.labels(target="status").inc()
        self.metrics.set_status(namespace, name, plan.status)
        for level, line in plan.logs:
            logger.log(level, "%s", line)
        for event in plan.events:
            self.post_event(obj, event)

    def post_event(self, obj: Mapping[str, Any], event: Event) -> None:
        try:
            self.cluster.post_event(obj, event.type, event.reason, event.message)
            self.metrics.writes.labels(target="event").inc()
            if event.reason == INSUFFICIENT_STORAGE:
                self.metrics.storage_warnings.inc()
        except ApiException as exc:
            # An Event is informative; failing to post one must not fail the reconcile (the condition says it).
            logger.warning("could not post the %s Event: %s %s", event.reason, exc.status, exc.reason)

    def _count_write(self, kind: str, writes: list[str]) -> None:
        writes.append(kind)
        self.metrics.writes.labels(target=kind.lower()).inc()


def _paths(operations: Iterable[Mapping[str, Any]]) -> str:
    return ", ".join(str(op.get("path")) for op in operations)
