"""The operator's side of the Kubernetes API: connection, and the few calls a reconcile makes.

Synchronous (the official ``kubernetes`` client), because Kopf runs sync handlers in threads; an async handler
calling a sync client would block the event loop that Kopf (and, in tests, the API emulator) runs on.
Objects come back as plain dicts in wire shape, exactly as the API served them (``_preload_content=False`` on every
call): the reconcile compares them with the rendered manifests and patches them as JSON, and a real cluster may serve
fields that this client's typed models do not know (they would be dropped) or cannot validate (the read would fail).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import kopf
import kubernetes.client
import kubernetes.config
from kubernetes.client.exceptions import ApiException

from kubellm.timefmt import now_rfc3339
from kubellm_operator.api import GROUP, PLURAL, VERSION
from kubellm_operator.config import FIELD_MANAGER

EVENT_SOURCE = "kubellm-operator"


def load_configuration(kubeconfig: str | None) -> kubernetes.client.Configuration:
    """In-cluster service account, else the given kubeconfig, else $KUBECONFIG (read now) or ~/.kube/config."""
    config = kubernetes.client.Configuration()
    if kubeconfig is None:
        try:
            kubernetes.config.load_incluster_config(client_configuration=config)
            return config
        except kubernetes.config.ConfigException:
            kubeconfig = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=config)
    return config


def connection_info(config: kubernetes.client.Configuration) -> kopf.ConnectionInfo:
    """The same credentials for Kopf's own watches and patches."""
    header = config.get_api_key_with_prefix("BearerToken") or config.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    return kopf.ConnectionInfo(
        server=config.host,
        ca_path=config.ssl_ca_cert,
        insecure=not config.verify_ssl,
        username=config.username or None,
        password=config.password or None,
        scheme=scheme,
        token=token,
        certificate_path=config.cert_file,
        private_key_path=config.key_file,
    )


# One API answer, read whole before it is parsed. Objects are tenant-written (etcd takes up to 1.5 MiB each), so a
# list can be large; never unbounded. A page of 500 ordinary pods is a few MB.
MAX_ANSWER_BYTES = 64 << 20


class AnswerTooLarge(ValueError):
    """An API answer over its byte cap (its connection is closed, not reused)."""


def _loads(response: Any, cap: int = MAX_ANSWER_BYTES) -> dict[str, Any]:
    """The JSON of a raw (``_preload_content=False``) answer, read up to ``cap`` bytes."""
    body = response.read(cap + 1)
    if len(body) > cap:
        response.close()  # the rest is left unread: the connection must not go back to the pool
        raise AnswerTooLarge(f"the API's answer is over {cap} bytes")
    response.release_conn()
    data: dict[str, Any] = json.loads(body)
    return data


USER_AGENT = "kubellm-operator"


def retry_after_seconds(exc: ApiException) -> float | None:
    """The ``Retry-After`` of an API error in seconds (the apiserver sends whole seconds), or None."""
    headers = getattr(exc, "headers", None) or {}
    value = headers.get("Retry-After") if hasattr(headers, "get") else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def api_message(exc: ApiException) -> str:
    """The apiserver's own message of an error (its Status ``message``), else the HTTP reason."""
    try:
        body = json.loads(exc.body) if exc.body else {}
    except (TypeError, ValueError):
        body = {}
    message = body.get("message") if isinstance(body, dict) else None
    return str(message or exc.reason or f"HTTP {exc.status}")


def api_reason(exc: ApiException) -> str:
    """The apiserver's Status ``reason`` (Invalid, Forbidden, ...), else the HTTP reason."""
    try:
        body = json.loads(exc.body) if exc.body else {}
    except (TypeError, ValueError):
        body = {}
    reason = body.get("reason") if isinstance(body, dict) else None
    return str(reason or exc.reason or "")


class Cluster:
    """The API calls of a reconcile; every method returns wire-shape dicts and raises ApiException.

    Every request carries a timeout (``timeout`` seconds, connect and read): a hung connection fails the pass,
    which the retry policy retries, instead of holding a worker for ever.
    """

    def __init__(self, config: kubernetes.client.Configuration, timeout: float = 30.0) -> None:
        self.client = kubernetes.client.ApiClient(config)
        self.client.user_agent = USER_AGENT
        self.timeout = timeout
        self.apps = kubernetes.client.AppsV1Api(self.client)
        self.core = kubernetes.client.CoreV1Api(self.client)
        self.custom = kubernetes.client.CustomObjectsApi(self.client)

    def close(self) -> None:
        self.client.close()

    # Reads ------------------------------------------------------------------------------------------------

    def get_llmservice(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._absent_is_none(
            lambda: self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, _preload_content=False, _request_timeout=self.timeout
            )
        )

    def llmservice_exists(self, namespace: str, name: str, uid: str | None) -> bool:
        """Whether the LLMService with this UID still exists (a list by name: the operator reads LLMServices from
        its watch and needs no get on them)."""
        listing = _loads(
            self.custom.list_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                field_selector=f"metadata.name={name}",
                limit=1,
                _preload_content=False,
                _request_timeout=self.timeout,
            )
        )
        metadata = ((listing.get("items") or [{}])[0] or {}).get("metadata") or {}
        return metadata.get("uid") == uid and uid is not None and not metadata.get("deletionTimestamp")

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A Secret (the hub token's); None when absent. Needs get on it (docs/hub.md)."""
        return self._absent_is_none(
            lambda: self.core.read_namespaced_secret(
                name, namespace, _preload_content=False, _request_timeout=self.timeout
            )
        )

    def get_child(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A Deployment or Service as the API holds it (None when absent): read only to name who holds a name
        kubellm could not create, since the child watches see kubellm's own objects only. A list by name (one
        item at most), so the operator needs no get on every Deployment and Service of the cluster."""
        listing = _loads(
            self._child_list(kind)(
                namespace,
                field_selector=f"metadata.name={name}",
                limit=1,
                _preload_content=False,
                _request_timeout=self.timeout,
            )
        )
        items = listing.get("items") or []
        return dict(items[0]) if items else None

    def node_names(self) -> list[str]:
        listing = _loads(self.core.list_node(_preload_content=False, _request_timeout=self.timeout))
        return sorted(str(item["metadata"]["name"]) for item in listing.get("items") or [])

    def node_summary(self, name: str) -> dict[str, Any]:
        """The kubelet's ``stats/summary`` through the apiserver's node proxy (RBAC: nodes/proxy get)."""
        response = self.core.connect_get_node_proxy_with_path(
            name, "stats/summary", _preload_content=False, _request_timeout=self.timeout
        )
        return _loads(response)

    def list_pods(
        self, namespace: str | None, *, limit: int, continue_token: str | None, max_bytes: int = MAX_ANSWER_BYTES
    ) -> dict[str, Any]:
        """One page of the pods of a namespace (None: of the cluster), at the first page's revision; AnswerTooLarge
        over ``max_bytes``."""
        options: dict[str, Any] = {"limit": limit, "_preload_content": False, "_request_timeout": self.timeout}
        if continue_token:
            options["_continue"] = continue_token
        if namespace is None:
            return _loads(self.core.list_pod_for_all_namespaces(**options), max_bytes)
        return _loads(self.core.list_namespaced_pod(namespace, **options), max_bytes)

    def watch_pods(self, namespace: str | None, *, resource_version: str, timeout_s: int) -> Any:
        """A watch of pods from ``resource_version`` with bookmarks, as the raw streaming response (the server ends
        it after ``timeout_s``; the read timeout leaves it ``self.timeout`` more)."""
        options: dict[str, Any] = {
            "watch": True,
            "resource_version": resource_version,
            "allow_watch_bookmarks": True,
            "timeout_seconds": timeout_s,
            "_preload_content": False,
            "_request_timeout": (self.timeout, timeout_s + self.timeout),
        }
        if namespace is None:
            return self.core.list_pod_for_all_namespaces(**options)
        return self.core.list_namespaced_pod(namespace, **options)

    def served_resources(self, group: str, version: str) -> list[str]:
        """The resource names discovery lists for ``group/version`` (raises ApiException 404 when none)."""
        listing = _loads(
            self.custom.get_api_resources(group, version, _preload_content=False, _request_timeout=self.timeout)
        )
        return [str(r.get("name")) for r in listing.get("resources") or [] if isinstance(r, dict)]

    # Writes -----------------------------------------------------------------------------------------------

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create a child as field manager ``kubellm``; 409 AlreadyExists when the name is taken (never applied
        over: an object kubellm did not create is not kubellm's to change)."""
        _, _, create = self._child_calls(obj["kind"])
        return _loads(
            create(
                obj["metadata"]["namespace"],
                obj,
                field_manager=FIELD_MANAGER,
                _preload_content=False,
                _request_timeout=self.timeout,
            )
        )

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply as field manager ``kubellm``, forcing conflicts (kubellm owns these fields)."""
        kind = obj["kind"]
        name = obj["metadata"]["name"]
        namespace = obj["metadata"]["namespace"]
        options: dict[str, Any] = {
            "field_manager": FIELD_MANAGER,
            "force": True,
            "_content_type": "application/apply-patch+yaml",
            "_preload_content": False,
            "_request_timeout": self.timeout,
        }
        _, patch, _ = self._child_calls(kind)
        return _loads(patch(name, namespace, obj, **options))

    def replace_fields(self, kind: str, namespace: str, name: str, operations: list[dict[str, Any]]) -> dict[str, Any]:
        """A JSON patch (RFC 6902) of a child as field manager ``kubellm``: lists someone else merged into are
        replaced whole, which server-side apply cannot do for items another manager owns."""
        _, patch, _ = self._child_calls(kind)
        return _loads(
            patch(
                name,
                namespace,
                operations,
                field_manager=FIELD_MANAGER,
                _content_type="application/json-patch+json",
                _preload_content=False,
                _request_timeout=self.timeout,
            )
        )

    def patch_llmservice_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return _loads(
            self.custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                {"status": patch},
                _content_type="application/merge-patch+json",
                _preload_content=False,
                _request_timeout=self.timeout,
            )
        )

    def post_event(self, owner: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        """A core/v1 Event about ``owner`` (shown by ``kubectl describe`` and ``kubectl get events``)."""
        metadata = owner.get("metadata") or {}
        namespace = metadata.get("namespace") or "default"
        now = now_rfc3339()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{metadata.get('name', 'llmservice')}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": owner.get("apiVersion"),
                "kind": owner.get("kind"),
                "name": metadata.get("name"),
                "namespace": namespace,
                "uid": metadata.get("uid"),
                "resourceVersion": metadata.get("resourceVersion"),
            },
            "type": kind,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": EVENT_SOURCE},
            "reportingComponent": EVENT_SOURCE,
            "reportingInstance": EVENT_SOURCE,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        self.core.create_namespaced_event(
            namespace,
            event,  # type: ignore[arg-type]
            _preload_content=False,
            _request_timeout=self.timeout,
        )

    def _child_calls(self, kind: str) -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
        """The read, patch and create calls of a child kind."""
        if kind == "Deployment":
            apps = self.apps
            return apps.read_namespaced_deployment, apps.patch_namespaced_deployment, apps.create_namespaced_deployment
        if kind == "Service":
            core = self.core
            return core.read_namespaced_service, core.patch_namespaced_service, core.create_namespaced_service
        raise ValueError(f"kubellm does not manage {kind} objects")

    def _child_list(self, kind: str) -> Callable[..., Any]:
        if kind == "Deployment":
            return self.apps.list_namespaced_deployment
        if kind == "Service":
            return self.core.list_namespaced_service
        raise ValueError(f"kubellm does not manage {kind} objects")

    @staticmethod
    def _absent_is_none(call: Any) -> dict[str, Any] | None:
        try:
            return _loads(call())
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
