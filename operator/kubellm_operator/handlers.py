"""Kopf registrations: what the operator watches, and which pass each change triggers.

- LLMService create / update / resume: one level-based reconcile (:meth:`Operator.converge`); an impossible
  spec ends in ``kopf.PermanentError`` (after the InvalidSpec condition and Event), replicas held by
  ``storage.enforce`` in ``kopf.TemporaryError`` (Kopf retries; node changes re-run it sooner).
- Nodes: a ``kopf.index`` of :class:`NodeFacts`; every Node change re-evaluates every LLMService's storage
  pre-flight through the work queue, without touching any LLMService.
- Deployments, Services and Pods labelled as kubellm's: a change queues a pass over their LLMService, which
  restores a hand-edited or deleted child and recomputes the status from the workload.

All handlers are synchronous: Kopf runs them in threads, and the kubernetes client they call is synchronous.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf
import kubernetes.client
from kubernetes.client.exceptions import ApiException

from kubellm_operator.api import GROUP, PLURAL, VERSION
from kubellm_operator.cluster import connection_info
from kubellm_operator.modelplan import HOLD_RETRY_S
from kubellm_operator.reconcile import Operator, retry_delay_for
from kubellm_operator.render import SELECTOR_LABEL
from kubellm_operator.storage import NodeFacts, node_facts

logger = logging.getLogger("kubellm.operator")

LLMSERVICES = (GROUP, VERSION, PLURAL)
OWNED = {SELECTOR_LABEL: kopf.PRESENT}
PROGRESS_PREFIX = GROUP  # Kopf's bookkeeping annotations: kubellm.dev/..., not kopf.zalando.org/...


def register(registry: kopf.OperatorRegistry, op: Operator, config: kubernetes.client.Configuration) -> None:
    """Register every handler of ``op`` in ``registry``."""

    @kopf.on.startup(registry=registry, id="configure")
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # Events are posted by kubellm itself, once per change; Kopf would post one per handler log line.
        settings.posting.enabled = False
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PROGRESS_PREFIX)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=PROGRESS_PREFIX, key="last-handled-configuration"
        )
        settings.execution.max_workers = op.settings.workers
        # The resources are known up front; scanning for new CRDs would need list/watch on CRDs and namespaces.
        settings.scanning.disabled = True
        # Read the kubelet summaries before the first reconcile, so a restart computes the same status as before.
        if op.settings.summary_refresh_s > 0:
            try:
                names = op.cluster.node_names()
            except ApiException as exc:
                logger.warning(
                    "cannot list nodes (%s %s); storage pre-flight sees no nodes yet", exc.status, exc.reason
                )
            else:
                op.refresh_summaries(names)
        logger.info("kubellm operator: %s", op.settings.describe())

    @kopf.on.login(registry=registry, id="login")
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(config)

    @kopf.index("nodes", registry=registry, id="node_index")
    def node_index(name: str, body: kopf.Body, **_: Any) -> dict[str, NodeFacts]:
        return {name: node_facts(body)}

    @kopf.on.event("nodes", registry=registry, id="node_changed")
    def node_changed(**kwargs: Any) -> None:
        node_index: kopf.Index[str, NodeFacts] = kwargs["node_index"]
        op.nodes.replace(node_index)
        op.requeue_all()

    @kopf.on.event(*LLMSERVICES, registry=registry, id="llmservice_seen")
    def llmservice_seen(type: str, namespace: str | None, name: str, **_: Any) -> None:
        op.remember((namespace or "default", name), exists=type != "DELETED")

    @kopf.on.resume(*LLMSERVICES, registry=registry, id="reconcile")
    @kopf.on.create(*LLMSERVICES, registry=registry, id="reconcile")
    @kopf.on.update(*LLMSERVICES, registry=registry, id="reconcile")
    def reconcile(namespace: str | None, name: str, reason: str, **kwargs: Any) -> None:
        namespace = namespace or "default"
        op.nodes.replace(kwargs["node_index"])
        op.remember((namespace, name), exists=True)
        try:
            result = op.converge(namespace, name, announce=reason == kopf.Reason.RESUME)
        except ApiException as exc:
            delay = retry_delay_for(exc)
            if delay is None:
                raise
            raise kopf.TemporaryError(f"API answered {exc.status} {exc.reason}; retrying", delay=delay) from exc
        if result.invalid is not None:
            raise kopf.PermanentError(f"InvalidSpec: {result.invalid}")
        if result.model_hold is not None:
            raise kopf.TemporaryError(f"the hub refused the model: {result.model_hold}", delay=HOLD_RETRY_S)
        if result.held is not None:
            raise kopf.TemporaryError(
                f"InsufficientStorage: storage.enforce holds replicas at 0: {result.held.message}",
                delay=op.settings.storage_retry_s,
            )

    @kopf.on.event("apps", "v1", "deployments", labels=OWNED, registry=registry, id="child_changed")
    @kopf.on.event("", "v1", "services", labels=OWNED, registry=registry, id="child_changed")
    @kopf.on.event("", "v1", "pods", labels=OWNED, registry=registry, id="child_changed")
    def child_changed(namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
        owner = labels.get(SELECTOR_LABEL)
        if namespace and owner:
            op.queue.add((namespace, owner))
