"""Kopf registrations: what the operator watches, and which pass each change queues.

Every pass runs from the operator's work queue, under its one retry policy (``workqueue.py``); no handler here
reconciles or raises for Kopf to retry.

- LLMService create / update / resume: a spec change; the LLMService's backoff starts over and a pass is queued.
  The LLMServices are a ``kopf.index`` too: a pass reads its LLMService from there, never from the API.
- Nodes: a ``kopf.index`` of :class:`NodeFacts`; a Node change that changes its facts (not a heartbeat) re-runs
  every LLMService's storage pre-flight in memory and queues only those whose verdict or shown figures changed.
- Deployments, Services and Pods labelled as kubellm's: a change queues a pass over their LLMService, which
  restores a hand-edited or deleted child and recomputes the status from the workload. The three watches carry a
  server-side label selector (kubellm's objects only).
- Every pod's ephemeral-storage request (the pre-flight counts free space as the scheduler does, so that watch
  cannot be filtered) comes from the slim pod watches of :mod:`podwatch`, outside Kopf; ``configure`` holds Kopf
  back until their first listing is in.

Every watch event also tells the health endpoint that the watches make progress.
All handlers are synchronous: Kopf runs them in threads, and the kubernetes client they call is synchronous.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

import kopf
import kubernetes.client
from kubernetes.client.exceptions import ApiException

from kubellm_operator.api import GROUP, PLURAL, VERSION
from kubellm_operator.autoscale import HELD_ANNOTATION_PREFIX
from kubellm_operator.cluster import connection_info
from kubellm_operator.reconcile import Operator
from kubellm_operator.render import SELECTOR_LABEL
from kubellm_operator.storage import NodeFacts, node_facts
from kubellm_operator.workqueue import Key

logger = logging.getLogger("kubellm.operator")

LLMSERVICES = (GROUP, VERSION, PLURAL)
OWNED = {SELECTOR_LABEL: kopf.PRESENT}
CHILD_RESOURCES = (("apps", "v1", "deployments"), ("", "v1", "services"))
POD_RESOURCE = ("", "v1", "pods")
POD_LIST_WAIT_S = 30.0  # configure's wait for the first pod listing, before Kopf retries it
PROGRESS_PREFIX = GROUP  # Kopf's bookkeeping annotations: kubellm.dev/..., not kopf.zalando.org/...
WATCH_SERVER_TIMEOUT_S = 300  # the apiserver ends each watch request after this; Kopf re-opens it


def held(body: kopf.Body) -> dict[str, Any]:
    """What the operator keeps of a watched child or LLMService: a copy whose ``metadata.managedFields`` (server-side
    apply's bookkeeping, often the larger part of the object) keeps only who manages it and how, not the field
    sets: the plan reads whether kubellm holds an Update entry (children.has_update_entry), nothing more."""
    kept = copy.deepcopy(dict(body))
    metadata = dict(kept.get("metadata") or {})
    managers = [
        {k: entry[k] for k in ("manager", "operation", "subresource") if k in entry}
        for entry in metadata.pop("managedFields", None) or []
        if isinstance(entry, dict)
    ]
    kept["metadata"] = {**metadata, **({"managedFields": managers} if managers else {})}
    return kept


_POD_METADATA = ("name", "namespace", "uid", "labels", "annotations", "resourceVersion", "deletionTimestamp")
_CONTAINER_FIELDS = ("name", "ports", "startupProbe")


def held_pod(body: kopf.Body) -> dict[str, Any]:
    """What the operator keeps of one of kubellm's pods: what the status and the /loadz read use (the containers'
    names, ports and startup probes, the grace period, the whole status), not the rendered template again."""
    metadata = body.get("metadata") or {}
    spec = body.get("spec") or {}
    kept_spec: dict[str, Any] = {
        key: [{k: copy.deepcopy(c[k]) for k in _CONTAINER_FIELDS if k in c} for c in spec.get(key) or []]
        for key in ("containers", "initContainers")
        if spec.get(key)
    }
    for key in ("nodeName", "terminationGracePeriodSeconds"):
        if key in spec:
            kept_spec[key] = spec[key]
    return {
        "metadata": {k: copy.deepcopy(metadata[k]) for k in _POD_METADATA if k in metadata},
        "spec": kept_spec,
        "status": copy.deepcopy(dict(body.get("status") or {})),
    }


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
        # Every request of Kopf's has a timeout too; a watch is ended by the server after a while and re-opened.
        timeout = op.settings.api_timeout_s
        settings.networking.request_timeout = timeout
        settings.networking.connect_timeout = min(timeout, 10.0)
        settings.watching.connect_timeout = min(timeout, 10.0)
        settings.watching.server_timeout = WATCH_SERVER_TIMEOUT_S
        settings.watching.client_timeout = WATCH_SERVER_TIMEOUT_S + timeout
        # Honour the apiserver's Retry-After on Kopf's own requests (its annotation patches).
        settings.networking.enforce_retry_after = True
        # The resources are known up front; scanning for new CRDs would need list/watch on CRDs and namespaces.
        settings.scanning.disabled = True
        # Deployments, Services and Pods: kubellm's own only, filtered by the apiserver (a handler's labels=
        # filters on the client, after every object of the cluster was listed and streamed). The storage count of
        # every pod is podwatch's, which holds three fields of a pod where Kopf would hold the whole object.
        for resource in (*CHILD_RESOURCES, POD_RESOURCE):
            settings.watching.label_selectors[resource] = SELECTOR_LABEL
        # No pass before the storage count has every pod: Kopf starts no watch (so queues no pass) before the
        # startup handlers are done.
        if not op.pods.synced.wait(POD_LIST_WAIT_S):
            raise kopf.TemporaryError(
                f"the pods are not listed yet ({op.pods.health(0) or 'listing'}); waiting", delay=1
            )
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

    # kubellm's children and pods as the watches hold them: a pass reads these, not the API (issue 13).
    @kopf.index(*CHILD_RESOURCES[0], labels=OWNED, registry=registry, id="deployment_index")
    @kopf.index(*CHILD_RESOURCES[1], labels=OWNED, registry=registry, id="service_index")
    def child_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
        return {(namespace or "default", name): held(body)}

    # The LLMServices themselves: a pass reads its LLMService here, not from the API (issue 19: a request fewer per
    # pass); the response of kubellm's own status patch stands in until the watch delivers it.
    @kopf.index(*LLMSERVICES, registry=registry, id="llmservice_index")
    def llmservice_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
        return {(namespace or "default", name): held(body)}

    @kopf.index(*POD_RESOURCE, labels=OWNED, registry=registry, id="llmservice_pods")
    def llmservice_pods(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, Any]:
        return {(namespace or "default", str(labels[SELECTOR_LABEL])): held_pod(body)}

    def attach(kwargs: Mapping[str, Any]) -> None:
        # Kopf calls no handler before every index has its initial listing: the first handler of any kind hands the
        # full indexes over, so the first pass it queues (a child's event can come before the LLMService's resume)
        # sees every node and pod, never an empty node book ("no nodes are visible").
        if not op.view.attached:
            op.nodes.replace(kwargs["node_index"])
            children = {
                "Deployment": kwargs["deployment_index"],
                "Service": kwargs["service_index"],
                "LLMService": kwargs["llmservice_index"],
            }
            op.view.attach(children, kwargs["llmservice_pods"])

    @kopf.on.event("nodes", registry=registry, id="node_changed")
    def node_changed(**kwargs: Any) -> None:
        op.watched()
        attach(kwargs)
        node_index: kopf.Index[str, NodeFacts] = kwargs["node_index"]
        # A heartbeat changes no NodeFacts: nothing to re-evaluate (issue 13: an idle cluster queues no pass).
        if op.nodes.replace(node_index):
            op.nodes_changed()

    held_seen: dict[Key, tuple[tuple[str, str], ...]] = {}

    @kopf.on.event(*LLMSERVICES, registry=registry, id="llmservice_seen")
    def llmservice_seen(type: str, namespace: str | None, name: str, body: kopf.Body, **kwargs: Any) -> None:
        op.watched()
        attach(kwargs)
        key = (namespace or "default", name)
        op.view.seen(("LLMService", *key), body.metadata.get("resourceVersion"))
        op.remember(key, exists=type != "DELETED")
        # A gateway published the requests it holds (spec.autoscaling): a pass now, so an LLMService at zero wakes
        # within a second. Only a change of those annotations queues one, not the operator's own status writes.
        annotations = body.metadata.annotations
        held = tuple(sorted((k, str(v)) for k, v in annotations.items() if k.startswith(HELD_ANNOTATION_PREFIX)))
        if type == "DELETED":
            held_seen.pop(key, None)
        elif held_seen.get(key, ()) != held:
            held_seen[key] = held
            op.trigger(key)

    @kopf.on.resume(*LLMSERVICES, registry=registry, id="reconcile")
    @kopf.on.create(*LLMSERVICES, registry=registry, id="reconcile")
    @kopf.on.update(*LLMSERVICES, registry=registry, id="reconcile")
    def reconcile(namespace: str | None, name: str, reason: str, **kwargs: Any) -> None:
        attach(kwargs)
        op.nodes.replace(kwargs["node_index"])
        op.spec_changed((namespace or "default", name), announce=reason == kopf.Reason.RESUME)

    def child_event(kind: str, namespace: str | None, name: str, body: kopf.Body, kwargs: Mapping[str, Any]) -> None:
        op.watched()
        attach(kwargs)
        op.view.seen(
            (kind, namespace or "default", name),
            body.metadata.get("resourceVersion"),
            deleted=kwargs.get("type") == "DELETED",
        )
        owner = body.metadata.labels.get(SELECTOR_LABEL)
        if namespace and owner:
            op.trigger((namespace, owner))

    @kopf.on.event(*CHILD_RESOURCES[0], labels=OWNED, registry=registry, id="child_changed")
    def deployment_changed(namespace: str | None, name: str, body: kopf.Body, **kwargs: Any) -> None:
        child_event("Deployment", namespace, name, body, kwargs)

    @kopf.on.event(*CHILD_RESOURCES[1], labels=OWNED, registry=registry, id="child_changed")
    def service_changed(namespace: str | None, name: str, body: kopf.Body, **kwargs: Any) -> None:
        child_event("Service", namespace, name, body, kwargs)

    @kopf.on.event(*POD_RESOURCE, labels=OWNED, registry=registry, id="pod_changed")
    def pod_changed(namespace: str | None, labels: kopf.Labels, **kwargs: Any) -> None:
        op.watched()
        attach(kwargs)
        owner = labels.get(SELECTOR_LABEL)
        if namespace and owner:
            op.trigger((namespace, owner))
