"""The HTTP face of the emulator: a kmock `KubernetesEmulator` subclass that routes Kubernetes API requests.

kmock 0.8 provides the aiohttp server, request parsing and its DSL of test-defined reactions (which still take
precedence: `emulator["get /api/v1/pods"] << 500`); everything a real apiserver decides is implemented here and in
`store.py`, because kmock's own fallbacks store objects as plain merged dicts.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import pathlib
from collections.abc import Callable, Collection, Mapping
from types import TracebackType
from typing import Any, Self

import aiohttp.web
import attrs
import kmock
import yaml
from kmock._internal import rendering

from kubellm_emulator import errors, protobuf
from kubellm_emulator.admission import unknown_fields
from kubellm_emulator.auth import (
    ADMIN_TOKEN,
    REVIEW_KINDS,
    Authenticator,
    Authorizer,
    Identity,
    bootstrap_policy,
    forbidden,
    impersonate,
    request_attributes,
    review,
)
from kubellm_emulator.errors import ApiError
from kubellm_emulator.faults import FaultInjector
from kubellm_emulator.nodes import node_manifest, stats_summary
from kubellm_emulator.openapi import openapi_document
from kubellm_emulator.ownerrefs import OwnerReferencesPermissionEnforcement
from kubellm_emulator.paging import list_page
from kubellm_emulator.resources import KUBERNETES_VERSION, ResourceType, storage_key
from kubellm_emulator.selectors import label_matcher, parse_field_selector
from kubellm_emulator.store import PATCH_APPLY, ObjectStore, WriteOptions
from kubellm_emulator.tables import render_table
from kubellm_emulator.tls import serving_certificate

JsonObject = dict[str, Any]
logger = logging.getLogger("kubellm_emulator")
SERVER_VERSION = {
    "major": KUBERNETES_VERSION[1:].split(".")[0],
    "minor": KUBERNETES_VERSION.split(".")[1],
    "gitVersion": KUBERNETES_VERSION,
    "gitCommit": "kubellm-emulator",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.23.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}


WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclasses.dataclass(frozen=True)
class RecordedRequest:
    """One request the emulator received, as `Emulator.requests()` returns it."""

    serial: int  # the request's place among every request since the start (dropped ones too): see `request_marker`
    method: str  # upper case: "GET", "PATCH", ...
    path: str  # without the query
    query: Mapping[str, str]
    body: bytes
    user: str = ""  # who it was authenticated (or impersonated) as; "" when authentication refused it

    @property
    def is_write(self) -> bool:
        return self.method in WRITE_METHODS


@dataclasses.dataclass(frozen=True)
class Route:
    """A parsed Kubernetes API path."""

    group: str
    version: str
    plural: str | None = None
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None


def parse_api_path(path: str, find_type: Callable[[str, str, str], ResourceType | None]) -> Route | None:
    parts = [part for part in path.split("/") if part]
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    # /api/v1/namespaces/{ns}/{plural}/... is namespaced content unless {plural} names no namespaced resource,
    # in which case it is the namespace object's own subresource (/api/v1/namespaces/{ns}/status).
    if len(rest) >= 3 and rest[0] == "namespaces":
        candidate = find_type(group, version, rest[2])
        if candidate is not None and candidate.namespaced:
            namespace, rest = rest[1], rest[2:]
    if not rest:
        return Route(group, version)
    return Route(
        group,
        version,
        plural=rest[0],
        namespace=namespace,
        name=rest[1] if len(rest) > 1 else None,
        subresource="/".join(rest[2:]) or None,
    )


def call_in_loop(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    """Runs `callback` in `loop`: at once when called from that loop, else scheduled from this other thread (store
    writes come from any thread, e.g. a sync client's or a test's); nothing when the loop is closed."""
    if loop.is_closed():
        return
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        callback()
    else:
        loop.call_soon_threadsafe(callback)


def _bool_param(params: Any, name: str) -> bool:
    return str(params.get(name, "")).lower() in ("true", "1")


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    """An in-memory Kubernetes API server. `async with Emulator() as emulator:` serves it on 127.0.0.1."""

    host: str = "127.0.0.1"
    requested_port: int | None = None  # None or 0: a free port
    bookmark_interval: float = 5.0
    default_watch_timeout: float = 1800.0
    max_recorded_requests: int | None = 10_000  # the request log `requests()` reads; None keeps all
    store: ObjectStore = attrs.field(factory=ObjectStore)
    faults: FaultInjector = attrs.field(factory=FaultInjector)
    node_stats: dict[str, JsonObject] = attrs.field(factory=dict)  # node name -> kubelet stats/summary body

    tls: bool = True  # also serve HTTPS (`secure_url`), where the kubeconfigs point: see tls.py
    # kube-apiserver --enable-admission-plugins=OwnerReferencesPermissionEnforcement: off in a vanilla apiserver
    # and in kind, on in OpenShift and many hardened clusters. On here by default (the stricter answer); a test
    # may switch it at any time, as a cluster's operator would choose it at the apiserver's start.
    owner_references_permission_enforcement: bool = True
    _server: kmock.Server | None = attrs.field(default=None, init=False)
    _secure_site: aiohttp.web.TCPSite | None = attrs.field(default=None, init=False)
    _secure_port: int | None = attrs.field(default=None, init=False)
    _loop: asyncio.AbstractEventLoop | None = attrs.field(default=None, init=False)
    _changed: asyncio.Event | None = attrs.field(default=None, init=False)
    _watch_epoch: int = attrs.field(default=0, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    _open_watches: int = attrs.field(default=0, init=False)
    _request_serial: int = attrs.field(default=0, init=False)
    _request_users: dict[int, str] = attrs.field(factory=dict, init=False)
    authenticator: Authenticator = attrs.field(init=False)
    authorizer: Authorizer = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        # kmock's fallbacks (plain-dict storage) are replaced by `_answer_api`; test-defined reactions still apply.
        self.store.add_listener(self._on_change)
        self.authenticator = Authenticator(self.store)
        self.authorizer = Authorizer(self.store)
        enforcement = OwnerReferencesPermissionEnforcement(self.authorizer, self.store.type_for_kind)

        def owner_references(*args: Any) -> None:
            if self.owner_references_permission_enforcement:
                enforcement(*args)

        self.store.user_admission.append(owner_references)
        for manifest in bootstrap_policy():  # what the apiserver's RBAC bootstrap creates at its first start
            self.apply_manifest(manifest, field_manager="kube-apiserver")

    # -- lifecycle ------------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._closing = False
        self._server = kmock.Server(self, host=self.host, port=self.requested_port or None)
        await self._server.__aenter__()
        certificate = serving_certificate() if self.tls else None
        runner = getattr(self._server.server, "runner", None)
        if certificate is not None and runner is not None:
            # The same handler on a second, TLS listener of the same runner.
            self._secure_site = aiohttp.web.TCPSite(runner, self.host, 0, ssl_context=certificate.server_context())
            await self._secure_site.start()
            sockets = getattr(getattr(self._secure_site, "_server", None), "sockets", None) or []
            self._secure_port = sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._closing = True
        self._wake()
        # Let open watch streams see the closing flag and end cleanly before the server shuts down.
        for _ in range(100):
            if not self._open_watches:
                break
            await asyncio.sleep(0.01)
        if self._secure_site is not None:
            await self._secure_site.stop()
            self._secure_site, self._secure_port = None, None
        if self._server is not None:
            await self._server.__aexit__(exc_type, exc_value, traceback)
            self._server = None
        await super().__aexit__(exc_type, exc_value, traceback)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the emulator is not serving; use it as `async with Emulator() as emulator:`")
        return self._server.port

    @property
    def api_url(self) -> str:
        """The server URL for clients, e.g. http://127.0.0.1:41234 (no trailing slash)."""
        return f"http://{self.host}:{self.port}"

    @property
    def secure_url(self) -> str | None:
        """The HTTPS URL (e.g. https://127.0.0.1:41235), where kubeconfigs point; None without TLS."""
        return f"https://{self.host}:{self._secure_port}" if self._secure_port else None

    def service_account_token(self, namespace: str, name: str) -> str:
        """A bearer token for the ServiceAccount `namespace/name`, valid while that ServiceAccount exists."""
        return self.authenticator.mint_service_account_token(namespace, name)

    def kubeconfig(self, context: str = "kubellm-emulator", *, token: str = ADMIN_TOKEN) -> JsonObject:
        """A kubeconfig for this server; the admin's token (system:masters) unless another is given."""
        certificate = serving_certificate() if self.secure_url else None
        cluster: JsonObject = {"server": self.api_url}
        if certificate is not None and self.secure_url:
            cluster = {
                "server": self.secure_url,
                "certificate-authority-data": base64.b64encode(certificate.pem).decode(),
            }
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": cluster}],
            "users": [{"name": context, "user": {"token": token}}],
            "contexts": [{"name": context, "context": {"cluster": context, "user": context, "namespace": "default"}}],
            "current-context": context,
            "preferences": {},
        }

    def write_kubeconfig(
        self,
        path: str | pathlib.Path,
        context: str = "kubellm-emulator",
        *,
        service_account: tuple[str, str] | None = None,
    ) -> pathlib.Path:
        """Writes a kubeconfig: the admin's, or with `service_account=(namespace, name)` one that authenticates as
        that ServiceAccount (a freshly minted token), so a client runs with only the RBAC bound to it."""
        token = self.service_account_token(*service_account) if service_account else ADMIN_TOKEN
        target = pathlib.Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump(self.kubeconfig(context, token=token), sort_keys=False))
        return target

    def apply_manifest(self, manifest: JsonObject, *, field_manager: str = "kubellm-emulator") -> JsonObject:
        """Creates or updates one object in-process (server-side-apply semantics), e.g. a CRD or a seeded Node."""
        api_version, kind = manifest.get("apiVersion", ""), manifest.get("kind", "")
        rtype = self.store.type_for_kind(api_version, kind)
        if rtype is None:
            raise ValueError(f"the emulator serves no {kind!r} in {api_version!r}")
        metadata = manifest.get("metadata") or {}
        namespace = (metadata.get("namespace") or "default") if rtype.namespaced else None
        return self.store.patch(
            rtype,
            namespace,
            metadata.get("name", ""),
            PATCH_APPLY,
            manifest,
            options=WriteOptions(field_manager=field_manager),
        )

    def apply_manifests(self, path: str | pathlib.Path) -> list[JsonObject]:
        """Applies every document of a YAML file (e.g. crds/kubellm.dev_llmservices.yaml)."""
        documents = yaml.safe_load_all(pathlib.Path(path).read_text())
        return [self.apply_manifest(document) for document in documents if document]

    def seed_node(self, name: str, **fields: Any) -> JsonObject:
        """Creates or updates a Node (see `nodes.node_manifest` for the fields), status included."""
        manifest = node_manifest(name, **fields)
        rtype = self.store.type_for("", "v1", "nodes")
        with self.store.lock:
            try:
                self.store.get(rtype, None, name)
            except ApiError:
                return self.store.create(rtype, None, manifest, WriteOptions(field_manager="kubellm-emulator"))
            self.apply_manifest(manifest)
            return self.store.patch(
                rtype,
                None,
                name,
                "application/merge-patch+json",
                {"status": manifest["status"]},
                subresource="status",
                options=WriteOptions(field_manager="kubellm-emulator"),
            )

    def seed_node_stats(self, name: str, **fields: Any) -> JsonObject:
        """Sets what the node's kubelet summary endpoint answers (see `nodes.stats_summary` for the fields)."""
        self.node_stats[name] = stats_summary(name, **fields)
        return self.node_stats[name]

    def request_marker(self) -> int:
        """The serial the next request will get: `requests(since=marker)` then returns only later requests."""
        return self._request_serial

    def requests(
        self,
        method: str | Collection[str] | None = None,
        path_prefix: str | None = None,
        *,
        since: int = 0,
    ) -> list[RecordedRequest]:
        """The requests received so far, oldest first (at most `max_recorded_requests` of the latest).

        `method` is one method or several (`WRITE_METHODS`), `path_prefix` matches the start of the URL path, and
        `since` is a `request_marker()` taken earlier.
        """
        methods = {method} if isinstance(method, str) else set(method) if method else None
        recorded = (
            RecordedRequest(
                serial=request.id,
                method=str(request.method.value).upper(),
                path=request.url.path,
                query=dict(request.params),
                body=request.body,
                user=self._request_users.get(request.id, ""),
            )
            for request in list(self._requests)  # a copy: the serving loop may append meanwhile
            if request.id >= since
        )
        return [
            request
            for request in recorded
            if (methods is None or request.method in {m.upper() for m in methods})
            and (path_prefix is None or request.path.startswith(path_prefix))
        ]

    def close_idle_connections(self) -> None:
        """Closes kept-alive client connections once their current request is done.

        Kopf, when it stops, waits 5 s for every task started after it, which includes the server's tasks of
        keep-alive connections from the kubernetes client's pool; closing them lets Kopf stop at once.
        """
        if self._server is None:
            return
        runner = getattr(self._server.server, "runner", None)
        low_level = getattr(runner, "server", None)
        for connection in list(getattr(low_level, "connections", [])):
            connection.close()

    def cut_watches(self) -> None:
        """Ends every open watch stream now, as a dropped connection or an apiserver restart would."""
        self._watch_epoch += 1
        self._on_change()

    def _on_change(self) -> None:
        if self._loop is not None:
            call_in_loop(self._loop, self._wake)

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
        self._changed = asyncio.Event()

    # -- request entry --------------------------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        body = await raw_request.read()
        serial, self._request_serial = self._request_serial, self._request_serial + 1
        try:
            request = await rendering.Request._parse(raw_request, id=serial)
        except ValueError:  # kmock 0.8 cannot parse some paths, e.g. /api/v1/namespaces (the namespaces' list)
            request = rendering.Request(
                id=serial,
                raw_request=raw_request,
                url=raw_request.url,
                method=raw_request.method,
                params=dict(raw_request.query),
                headers=dict(raw_request.headers),
                body=body,
                text=body.decode(errors="replace"),
            )
        self._requests.append(request)
        if self.max_recorded_requests is not None and len(self._requests) > self.max_recorded_requests:
            # kmock records every request for assertions; a long-running sandbox keeps only the recent ones.
            del self._requests[: len(self._requests) - self.max_recorded_requests]
            oldest = self._requests[0].id
            while self._request_users and next(iter(self._request_users)) < oldest:  # serials arrive in order
                del self._request_users[next(iter(self._request_users))]
        try:
            return await self._handle(request)
        except rendering.StreamingError as error:  # a test-defined kmock stream failed after it started
            response: aiohttp.web.StreamResponse = error.args[0]
            return response
        except Exception as error:
            # An emulator bug: answer 500 with the traceback, and keep the error for the test to see.
            if self._errors:
                self._errors[-1].append(error)
            return await self._render_error(error)

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        raw = request._raw_request
        assert raw is not None
        try:
            identity = self._authorize(raw, request.id)
            fault = self.faults.take(raw.method, raw.path)
            if fault is not None:
                raise fault
            try:
                # Test-defined kmock reactions first; with none matching, kmock raises NotImplementedError.
                return await kmock.RawHandler._handle(self, request)
            except NotImplementedError:
                pass
            return await self._answer_api(raw, request.body, identity)
        except ApiError as error:
            logger.info("%s %s -> %d %s", raw.method, raw.path_qs, error.code, error.message)
            return aiohttp.web.json_response(error.status(), status=error.code)

    def _authorize(self, raw: aiohttp.web.BaseRequest, serial: int) -> Identity:
        """Authentication, impersonation and authorization, in the apiserver's filter order; raises 401 or 403."""
        identity = self.authenticator.authenticate(raw.headers.get("Authorization"))
        identity = impersonate(identity, raw.headers, raw.headers.getall("Impersonate-Group", []), self.authorizer)
        self._request_users[serial] = identity.user
        attributes = request_attributes(identity, raw.method, raw.path, raw.query)
        allowed, reason = self.authorizer.authorize(attributes)
        if not allowed:
            raise forbidden(attributes, reason)
        return identity

    async def _answer_api(
        self, raw: aiohttp.web.BaseRequest, body: bytes, identity: Identity
    ) -> aiohttp.web.StreamResponse:
        path = raw.path.rstrip("/") or "/"
        method = raw.method.upper()
        if method == "GET":
            static = self._static_document(path)
            if static is not None:
                return _json(static)
            if path in ("/healthz", "/livez", "/readyz"):
                return aiohttp.web.Response(text="ok")
            if path.startswith("/openapi/"):
                document = openapi_document(self.store, path, raw.query)
                if document is None:
                    raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
                return _json(document)
        route = parse_api_path(path, self.store.find_type)
        if route is None:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        if (route.group, route.plural) in REVIEW_KINDS and route.name is None and route.version == "v1":
            if method != "POST":
                raise errors.method_not_allowed()
            answer = review(route.group, route.plural or "", _decode(body, raw.content_type), identity, self.authorizer)
            return _json(answer, status=201)
        if route.plural is None:
            if method != "GET":
                raise errors.method_not_allowed()
            return _json(self._discovery_version(route.group, route.version))
        rtype = self.store.find_type(route.group, route.version, route.plural)
        if rtype is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if (
            route.subresource
            and route.subresource not in rtype.subresources()
            and not (route.subresource.startswith("proxy/") and "proxy" in rtype.subresources())
        ):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if not rtype.namespaced and route.namespace:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return await self._answer_resource(raw, body, rtype, route, identity)

    async def _answer_resource(
        self, raw: aiohttp.web.BaseRequest, body: bytes, rtype: ResourceType, route: Route, identity: Identity
    ) -> aiohttp.web.StreamResponse:
        method, params = raw.method.upper(), raw.query
        options = WriteOptions(
            dry_run="All" in params.getall("dryRun", []),
            field_manager=params.get("fieldManager") or _manager_from_agent(raw.headers.get("User-Agent", "")),
            force=_bool_param(params, "force"),
            user=identity,
        )
        strict = params.get("fieldValidation", "") == "Strict"
        store = self.store
        ns, name, sub = route.namespace, route.name, route.subresource
        if name is None:
            if method == "GET" and _bool_param(params, "watch"):
                return await self._answer_watch(raw, rtype, ns, None)
            if method == "GET":
                return self._answer_list(raw, rtype, ns)
            if method == "POST":
                obj = _decode(body, raw.content_type)
                _check_strict(rtype, obj, strict)
                created = store.create(rtype, ns, obj, options)
                return _json(created, status=201)
            if method == "DELETE":
                items, _ = store.list_objects(rtype, ns, self._matcher(params))
                deleted = [store.delete(rtype, ns, item["metadata"]["name"], options=options) for item in items]
                return _json(
                    {"kind": rtype.list_kind, "apiVersion": rtype.api_version, "metadata": {}, "items": deleted}
                )
            raise errors.method_not_allowed()
        if sub is not None and sub.startswith("proxy/"):
            return self._answer_node_proxy(rtype, name, sub)
        if method == "GET" and _bool_param(params, "watch"):
            return await self._answer_watch(raw, rtype, ns, name)
        if sub == "scale":
            return self._answer_scale(raw, body, rtype, ns, name, options)
        if method == "GET":
            obj = store.get(rtype, ns, name)
            if _wants_table(raw):
                return _json(
                    render_table(
                        rtype,
                        [obj],
                        list_metadata={"resourceVersion": obj["metadata"]["resourceVersion"]},
                        include_object=raw.query.get("includeObject", "Metadata"),
                    )
                )
            return _json(obj)
        if method == "PUT":
            obj = _decode(body, raw.content_type)
            _check_strict(rtype, obj, strict)
            return _json(store.replace(rtype, ns, name, obj, subresource=sub, options=options))
        if method == "PATCH":
            patch_type = raw.content_type
            if patch_type == PATCH_APPLY and not params.get("fieldManager"):
                raise errors.bad_request("PATCH /apply requires fieldManager")  # no user-agent default for apply
            patch = _decode(body, patch_type)
            if patch_type == PATCH_APPLY or strict:
                _check_strict(rtype, patch, strict and patch_type != "application/json-patch+json")
            return _json(store.patch(rtype, ns, name, patch_type, patch, subresource=sub, options=options))
        if method == "DELETE":
            delete_options = _decode(body, raw.content_type) if body.strip() else {}
            if not isinstance(delete_options, dict):
                delete_options = {}
            if "All" in (delete_options.get("dryRun") or []):
                options.dry_run = True
            result = store.delete(
                rtype,
                ns,
                name,
                propagation=params.get("propagationPolicy") or delete_options.get("propagationPolicy"),
                preconditions=delete_options.get("preconditions"),
                options=options,
            )
            if rtype.delete_returns_object or result["metadata"].get("deletionTimestamp"):
                return _json(result)  # as the apiserver: the object while it is being deleted, or for these kinds
            return _json(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": {
                        "name": name,
                        "kind": rtype.plural,
                        "uid": result["metadata"]["uid"],
                        **({"group": rtype.group} if rtype.group else {}),
                    },
                }
            )
        raise errors.method_not_allowed()

    def _matcher(self, params: Any, name: str | None = None) -> Callable[[JsonObject], bool]:
        labels = label_matcher(params.get("labelSelector"))
        fields = parse_field_selector(params.get("fieldSelector"))

        def matches(obj: JsonObject) -> bool:
            if name is not None and obj["metadata"].get("name") != name:
                return False
            return labels(obj) and fields(obj)

        return matches

    def _answer_list(
        self, raw: aiohttp.web.BaseRequest, rtype: ResourceType, namespace: str | None
    ) -> aiohttp.web.Response:
        page = list_page(self.store, rtype, namespace, raw.query, self._matcher(raw.query))
        if _wants_table(raw):
            return _json(
                render_table(
                    rtype,
                    page.items,
                    list_metadata=page.metadata,
                    include_object=raw.query.get("includeObject", "Metadata"),
                )
            )
        return _json(
            {"kind": rtype.list_kind, "apiVersion": rtype.api_version, "metadata": page.metadata, "items": page.items}
        )

    def _answer_scale(
        self,
        raw: aiohttp.web.BaseRequest,
        body: bytes,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        options: WriteOptions,
    ) -> aiohttp.web.Response:
        method = raw.method.upper()
        current = self.store.get(rtype, namespace, name)
        scale = self.store.scale_of(rtype, current)
        if method == "GET":
            return _json(scale)
        if method == "PUT":
            wanted = _decode(body, raw.content_type)
        elif method == "PATCH":
            patch_type = raw.content_type
            if patch_type == "application/strategic-merge-patch+json":
                patch_type = "application/merge-patch+json"  # a Scale has no lists: both merge alike
            scale_type = dataclasses.replace(rtype, custom=True)
            wanted = self.store.patched(scale_type, scale, patch_type, _decode(body, raw.content_type))
        else:
            raise errors.method_not_allowed()
        if not isinstance(wanted, dict):
            raise errors.bad_request("a Scale must be a JSON object")
        return _json(self.store.write_scale(rtype, namespace, name, wanted, options))

    def _answer_node_proxy(self, rtype: ResourceType, name: str, sub: str) -> aiohttp.web.Response:
        if (rtype.group, rtype.plural) != ("", "nodes") or sub != "proxy/stats/summary":
            raise ApiError(404, "NotFound", f"the emulator does not proxy {sub!r} to kubelets")
        self.store.get(rtype, None, name)
        stats = self.node_stats.get(name)
        if stats is None:
            raise ApiError(503, "ServiceUnavailable", f'no kubelet stats are seeded for node "{name}"')
        return _json(stats)

    # -- watch ----------------------------------------------------------------------------------------------

    async def _answer_watch(
        self, raw: aiohttp.web.BaseRequest, rtype: ResourceType, namespace: str | None, name: str | None
    ) -> aiohttp.web.StreamResponse:
        params = raw.query
        matches = self._matcher(params, name)
        send_initial = _bool_param(params, "sendInitialEvents")
        bookmarks = _bool_param(params, "allowWatchBookmarks")
        timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else self.default_watch_timeout
        since = params.get("resourceVersion", "")
        storage = storage_key(rtype.group, rtype.plural)
        if since not in ("", "0") and not since.isdigit():
            raise errors.bad_request(f"invalid resource version {since!r}")
        response = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(raw)
        self._open_watches += 1
        epoch = self._watch_epoch
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        next_bookmark = loop.time() + self.bookmark_interval

        as_table = _wants_table(raw)
        include_object = params.get("includeObject", "Metadata")

        async def send(event_type: str, obj: JsonObject) -> None:
            if as_table and event_type in ("ADDED", "MODIFIED", "DELETED"):
                obj = render_table(
                    rtype,
                    [obj],
                    list_metadata={"resourceVersion": obj["metadata"].get("resourceVersion", "")},
                    include_object=include_object,
                )
            await response.write(json.dumps({"type": event_type, "object": obj}).encode() + b"\n")

        def bookmark(resource_version: int, *, initial_end: bool = False) -> JsonObject:
            metadata: JsonObject = {"resourceVersion": str(resource_version)}
            if initial_end:
                metadata["annotations"] = {"k8s.io/initial-events-end": "true"}
            return {"kind": rtype.kind, "apiVersion": rtype.api_version, "metadata": metadata}

        try:
            if since in ("", "0") or send_initial:
                items, last = self.store.list_objects(rtype, namespace, matches)
                for item in items:
                    await send("ADDED", item)
                if send_initial and bookmarks:
                    await send("BOOKMARK", bookmark(last, initial_end=True))
            else:
                last = int(since)
            while not self._closing and epoch == self._watch_epoch:
                changed = self._changed
                assert changed is not None
                try:
                    events, current = self._events_after(last, storage)
                except ApiError as error:
                    await send("ERROR", error.status())
                    break
                for event in events:
                    await self._send_event(send, rtype, namespace, matches, event)
                last = current
                now = loop.time()
                if now >= deadline:
                    break
                if bookmarks and now >= next_bookmark:
                    await send("BOOKMARK", bookmark(last))
                    next_bookmark = now + self.bookmark_interval
                wait = min(deadline, next_bookmark if bookmarks else deadline) - now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout=max(wait, 0.001))
            await response.write_eof()
        except ConnectionResetError:  # the client went away; asyncio.CancelledError propagates
            pass
        finally:
            self._open_watches -= 1
        return response

    def _events_after(self, last: int, storage: tuple[str, str]) -> tuple[list[Any], int]:
        return self.store.events_since(last, storage)

    async def _send_event(
        self,
        send: Callable[[str, JsonObject], Any],
        rtype: ResourceType,
        namespace: str | None,
        matches: Callable[[JsonObject], bool],
        event: Any,
    ) -> None:
        obj = self.store.present(rtype, event.object)
        if namespace and obj["metadata"].get("namespace") != namespace:
            return
        now_matches = matches(obj)
        if event.type == "MODIFIED" and event.previous is not None:
            before = matches(self.store.present(rtype, event.previous))
            # Selector transitions look like additions and deletions to the watcher, as on a real apiserver.
            if before and not now_matches:
                await send("DELETED", obj)
            elif now_matches and not before:
                await send("ADDED", obj)
            elif now_matches:
                await send("MODIFIED", obj)
        elif now_matches:
            await send(event.type, obj)

    # -- discovery ------------------------------------------------------------------------------------------

    def _static_document(self, path: str) -> JsonObject | None:
        if path == "/version":
            return SERVER_VERSION
        if path == "/api":
            return {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}
                ],
            }
        if path == "/apis":
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": list(self._groups().values())}
        parts = path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "apis":
            group = self._groups().get(parts[1])
            if group is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return {"kind": "APIGroup", "apiVersion": "v1", **group}
        if path == "/":
            return {
                "paths": sorted(
                    {"/api", "/api/v1", "/apis", "/version", "/openapi/v2", "/openapi/v3"}
                    | {f"/apis/{g}" for g in self._groups()}
                )
            }
        return None

    def _groups(self) -> dict[str, JsonObject]:
        versions: dict[str, list[str]] = {}
        preferred: dict[str, str] = {}
        for rtype in self.store.types():
            if not rtype.group:
                continue
            if rtype.version not in versions.setdefault(rtype.group, []):
                versions[rtype.group].append(rtype.version)
        for crd in self.store.list_objects(
            self.store.type_for("apiextensions.k8s.io", "v1", "customresourcedefinitions"), None
        )[0]:
            spec = crd.get("spec") or {}
            storage = [v["name"] for v in spec.get("versions") or [] if v.get("storage")]
            if storage:
                preferred[spec.get("group", "")] = storage[0]
        groups: dict[str, JsonObject] = {}
        for group, names in sorted(versions.items()):
            entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in names]
            best = preferred.get(group, names[0])
            groups[group] = {
                "name": group,
                "versions": entries,
                "preferredVersion": {"groupVersion": f"{group}/{best}", "version": best},
            }
        return groups

    def _discovery_version(self, group: str, version: str) -> JsonObject:
        rtypes = [rtype for rtype in self.store.types() if (rtype.group, rtype.version) == (group, version)]
        if not rtypes:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": [entry for rtype in sorted(rtypes, key=lambda r: r.plural) for entry in rtype.discovery()],
        }


def _json(body: Any, status: int = 200) -> aiohttp.web.Response:
    return aiohttp.web.Response(body=json.dumps(body).encode(), status=status, content_type="application/json")


def _decode(body: bytes, content_type: str) -> Any:
    if content_type == protobuf.CONTENT_TYPE:
        return protobuf.decode(body)
    if not body.strip():
        raise errors.bad_request("the request body is empty")
    try:
        if "yaml" in content_type:
            return yaml.safe_load(body)
        return json.loads(body)
    except (ValueError, yaml.YAMLError) as error:
        raise errors.bad_request(
            f"the request body is not valid {'YAML' if 'yaml' in content_type else 'JSON'}: {error}"
        ) from None


def _manager_from_agent(user_agent: str) -> str | None:
    """The apiserver names an unnamed field manager after the client's user agent (`kubectl-client-side-apply`)."""
    return user_agent.split("/", 1)[0] or None if user_agent else None


def _wants_table(raw: aiohttp.web.BaseRequest) -> bool:
    accept = raw.headers.get("Accept", "")
    return "as=Table" in accept.split(",")[0].replace(" ", "")


def _check_strict(rtype: ResourceType, obj: Any, strict: bool) -> None:
    """`fieldValidation=Strict` rejects unknown fields of custom resources (admission prunes them otherwise)."""
    if not strict or not rtype.custom or rtype.schema is None or not isinstance(obj, dict):
        return
    unknown = unknown_fields(rtype.schema, obj)
    if unknown:
        raise errors.bad_request("; ".join(f'strict decoding error: unknown field "{field}"' for field in unknown))
