"""The emulator's state: objects, one resourceVersion counter, the event log that watches read, and the write rules.

Every write goes through `ObjectStore`: it sets server-side metadata, enforces optimistic concurrency, the status and
scale subresource rules, finalizers, garbage collection of dependents, namespace termination and CRD registration.
All methods are synchronous and serialised by one lock, so the HTTP layer and in-process helpers can share them.
"""

from __future__ import annotations

import copy
import dataclasses
import random
import threading
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from kubellm.timefmt import now_rfc3339
from kubellm_emulator import errors
from kubellm_emulator.admission import admit_custom_resource
from kubellm_emulator.apply import (
    FieldPath,
    builtin_list_rule,
    decode_fields,
    encode_fields,
    field_paths,
    schema_list_rule,
    server_side_apply,
)
from kubellm_emulator.errors import ApiError, FieldError
from kubellm_emulator.limitranges import admit_pod as admit_pod_limits
from kubellm_emulator.patching import (
    PatchError,
    apply_json_patch,
    apply_merge_patch,
    apply_strategic_merge_patch,
)
from kubellm_emulator.quota import admit_pod, usage_of
from kubellm_emulator.resources import BUILTIN_TYPES, ResourceType, storage_key, types_from_crd
from kubellm_emulator.selectors import selector_from_match_labels
from kubellm_emulator.validation import (
    NODE_PORT_RANGE,
    drop_type_dependent_fields,
    name_errors,
    node_port_errors,
    validate,
)

JsonObject = dict[str, Any]
ObjectKey = tuple[str, str, str, str]  # (storage group, storage plural, namespace or "", name)

CONDITIONAL_UPDATES = frozenset({("coordination.k8s.io", "leases")})
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
CRD_GROUP = "apiextensions.k8s.io"
PATCH_JSON = "application/json-patch+json"
PATCH_MERGE = "application/merge-patch+json"
PATCH_STRATEGIC = "application/strategic-merge-patch+json"
PATCH_APPLY = "application/apply-patch+yaml"
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # apimachinery's generateName alphabet


@dataclasses.dataclass(frozen=True)
class WatchEvent:
    """One change in the log: `previous` is the object before a MODIFIED (for selector transitions)."""

    resource_version: int
    storage: tuple[str, str]
    type: str
    object: JsonObject
    previous: JsonObject | None = None


@dataclasses.dataclass
class WriteOptions:
    dry_run: bool = False
    field_manager: str | None = None
    force: bool = False
    user: Any = None  # the requester's auth.Identity over HTTP; None for in-process writes (trusted, as etcd is)


Admission = Callable[[ResourceType, JsonObject, JsonObject | None], JsonObject]
# A validating admission plugin that needs the requester: (type, object, old object or None, user, subresource).
UserAdmission = Callable[[ResourceType, JsonObject, JsonObject | None, Any, str | None], None]


class ObjectStore:
    """The in-memory etcd plus the apiserver's registry logic."""

    def __init__(self, *, event_log_limit: int = 20_000) -> None:
        self._lock = threading.RLock()
        self._objects: dict[ObjectKey, JsonObject] = {}
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        self._resource_version = 0
        self._log: list[WatchEvent] = []
        self._log_limit = event_log_limit
        self._compacted = 0  # revisions before this one are gone (compact())
        self._listeners: list[Callable[[], None]] = []
        # Schema admission of custom resources and the built-in validation of every kind (None switches both off).
        self.admission: Admission | None = self._admit
        self.user_admission: list[UserAdmission] = []  # e.g. OwnerReferencesPermissionEnforcement (server.py)
        for rtype in BUILTIN_TYPES:
            self._types[(rtype.group, rtype.version, rtype.plural)] = rtype
        for namespace in DEFAULT_NAMESPACES:
            self.create(self.type_for("", "v1", "namespaces"), None, {"metadata": {"name": namespace}})

    # -- registry -------------------------------------------------------------------------------------------

    def types(self) -> list[ResourceType]:
        with self._lock:
            return list(self._types.values())

    def find_type(self, group: str, version: str, plural: str) -> ResourceType | None:
        with self._lock:
            return self._types.get((group, version, plural))

    def type_for(self, group: str, version: str, plural: str) -> ResourceType:
        rtype = self.find_type(group, version, plural)
        if rtype is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return rtype

    def type_for_kind(self, api_version: str, kind: str) -> ResourceType | None:
        group, _, version = api_version.rpartition("/")
        with self._lock:
            for rtype in self._types.values():
                if rtype.group == group and rtype.version == version and rtype.kind == kind:
                    return rtype
        return None

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._resource_version

    @property
    def lock(self) -> threading.RLock:
        """Held by every store operation; hold it to make several operations one atomic step."""
        return self._lock

    def events_since(self, resource_version: int, storage: tuple[str, str]) -> tuple[list[WatchEvent], int]:
        """The events of one resource after `resource_version`, and the resourceVersion they bring a watcher to."""
        with self._lock:
            return self.events_after(resource_version, storage), self._resource_version

    def compact(self) -> None:
        """etcd's compaction at the current revision (the apiserver asks for one every 5 minutes): a watch or a
        paged list from any older revision is 410 Expired from now on, and the client must list again."""
        with self._lock:
            self._log.clear()
            self._compacted = self._resource_version

    def _oldest_revision(self) -> int:
        """The oldest revision a watch may start from (its events are all still in the log)."""
        from_log = self._log[0].resource_version - 1 if self._log else 0
        return max(from_log, self._compacted)

    def add_listener(self, listener: Callable[[], None]) -> None:
        """`listener` is called (under the lock, from the writing thread) after every committed change."""
        self._listeners.append(listener)

    # -- reading --------------------------------------------------------------------------------------------

    def _key(self, rtype: ResourceType, namespace: str | None, name: str) -> ObjectKey:
        group, plural = storage_key(rtype.group, rtype.plural)
        return (group, plural, namespace or "" if rtype.namespaced else "", name)

    def present(self, rtype: ResourceType, obj: JsonObject) -> JsonObject:
        """A stored object as the requested version serves it (apiVersion/kind, events.k8s.io field names)."""
        served = copy.deepcopy(obj)
        if rtype.group == "events.k8s.io":
            served = _core_event_to_events_v1(served)
        served.pop("apiVersion", None)
        served.pop("kind", None)
        return {"apiVersion": rtype.api_version, "kind": rtype.kind, **served}

    def get(self, rtype: ResourceType, namespace: str | None, name: str) -> JsonObject:
        with self._lock:
            obj = self._objects.get(self._key(rtype, namespace, name))
            if obj is None:
                raise errors.not_found(rtype.plural, rtype.group, name)
            return self.present(rtype, obj)

    def list_objects(
        self,
        rtype: ResourceType,
        namespace: str | None,
        matches: Callable[[JsonObject], bool] = lambda obj: True,
    ) -> tuple[list[JsonObject], int]:
        with self._lock:
            group, plural = storage_key(rtype.group, rtype.plural)
            selected = [
                (key, obj)
                for key, obj in self._objects.items()
                if key[0] == group and key[1] == plural and (not namespace or key[2] == namespace)
            ]
            items = [self.present(rtype, obj) for _, obj in sorted(selected, key=lambda pair: pair[0])]
            return [item for item in items if matches(item)], self._resource_version

    def snapshot(
        self, rtype: ResourceType, namespace: str | None, resource_version: int
    ) -> list[tuple[tuple[str, str], JsonObject]]:
        """The objects of one resource as they were at `resource_version`, with their (namespace, name) keys, in
        key order: what etcd serves for a list at an exact revision (paging's consistent snapshot). The current
        objects rolled back through the event log; 410 Expired when the log no longer reaches back that far (etcd's
        compaction), 504 when the revision is in the future."""
        with self._lock:
            if resource_version > self._resource_version:
                raise ApiError(
                    504,
                    "Timeout",
                    f"Too large resource version: {resource_version}, current: {self._resource_version}",
                    details={
                        "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                        "retryAfterSeconds": 1,
                    },
                )
            oldest = self._oldest_revision()
            if resource_version < oldest:
                raise errors.gone(f"too old resource version: {resource_version} ({oldest})")
            storage = storage_key(rtype.group, rtype.plural)
            state = {(key[2], key[3]): obj for key, obj in self._objects.items() if key[:2] == storage}
            for event in reversed(self._log):
                if event.resource_version <= resource_version:
                    break
                if event.storage != storage:
                    continue
                meta = event.object.get("metadata") or {}
                key = (meta.get("namespace") or "", meta.get("name") or "")
                if event.type == "ADDED":
                    state.pop(key, None)
                elif event.previous is not None:
                    state[key] = event.previous
            return [
                (key, self.present(rtype, obj))
                for key, obj in sorted(state.items())
                if not namespace or key[0] == namespace
            ]

    def events_after(self, resource_version: int, storage: tuple[str, str]) -> list[WatchEvent]:
        with self._lock:
            oldest = self._oldest_revision()
            if resource_version < oldest:
                raise errors.gone(f"too old resource version: {resource_version} ({oldest + 1})")
            # The log is ordered by resourceVersion: bisect instead of a scan for long runs.
            low, high = 0, len(self._log)
            while low < high:
                middle = (low + high) // 2
                if self._log[middle].resource_version <= resource_version:
                    low = middle + 1
                else:
                    high = middle
            return [event for event in self._log[low:] if event.storage == storage]

    # -- writing --------------------------------------------------------------------------------------------

    def _next_resource_version(self) -> str:
        self._resource_version += 1
        return str(self._resource_version)

    def _record(self, rtype: ResourceType, event_type: str, obj: JsonObject, previous: JsonObject | None) -> None:
        self._log.append(
            WatchEvent(
                self._resource_version,
                storage_key(rtype.group, rtype.plural),
                event_type,
                copy.deepcopy(obj),
                copy.deepcopy(previous) if previous is not None else None,
            )
        )
        if len(self._log) > self._log_limit:
            del self._log[: len(self._log) - self._log_limit]
        for listener in self._listeners:
            listener()

    def _validate_name(self, rtype: ResourceType, name: Any) -> None:
        if not isinstance(name, str) or not name:
            raise errors.invalid(
                rtype.kind,
                rtype.group,
                "",
                [FieldError("metadata.name", "Required value", "name or generateName is required")],
            )
        problems = name_errors(rtype, name)
        if problems:
            raise errors.invalid(rtype.kind, rtype.group, name, problems)

    def _admit(self, rtype: ResourceType, obj: JsonObject, old: JsonObject | None) -> JsonObject:
        """What the apiserver does between decoding and storing: a custom resource's schema (pruning, defaulting,
        validation), then the built-in validation of the kind and, for Services, the node-port allocator."""
        admitted = admit_custom_resource(rtype, obj, old) if rtype.custom else obj
        if (rtype.group, rtype.plural) == ("", "services"):
            drop_type_dependent_fields(admitted, old)
        validate(rtype, admitted, old)
        if (rtype.group, rtype.plural) == ("", "services"):
            self._allocate_node_ports(admitted, old)
        return admitted

    def _namespace_objects(self, plural: str, namespace: str) -> list[JsonObject]:
        return [obj for key, obj in self._objects.items() if key[:3] == ("", plural, namespace)]

    def _admit_pod_quota(self, namespace: str, pod: JsonObject) -> None:
        """The LimitRanger and then the ResourceQuota admission plugins, for pods (limitranges.py, quota.py)."""
        admit_pod_limits(pod, self._namespace_objects("limitranges", namespace))
        quotas = self._namespace_objects("resourcequotas", namespace)
        if quotas:
            admit_pod(pod, quotas, self._namespace_objects("pods", namespace))

    def _after_quota_relevant_change(self, rtype: ResourceType, namespace: str | None) -> None:
        """The quota controller: each ResourceQuota's `status` (hard, used) follows the namespace's pods."""
        if not namespace or (rtype.group, rtype.plural) not in (("", "pods"), ("", "resourcequotas")):
            return
        pods = self._namespace_objects("pods", namespace)
        quota_type = self.type_for("", "v1", "resourcequotas")
        for quota in self._namespace_objects("resourcequotas", namespace):
            hard = dict((quota.get("spec") or {}).get("hard") or {})
            try:
                status = {"hard": hard, "used": usage_of(pods, hard)}
            except ApiError:
                continue  # a malformed quantity was refused where it was written; nothing to count here
            if quota.get("status") == status:
                continue
            previous = copy.deepcopy(quota)
            quota["status"] = status
            quota["metadata"]["resourceVersion"] = self._next_resource_version()
            self._record(quota_type, "MODIFIED", quota, previous)

    def _allocate_node_ports(self, service: JsonObject, old: JsonObject | None) -> None:
        """NodePort and LoadBalancer Services get a node port per port (kept from the stored Service on update, as
        the registry's patchAllocatedValues does); a requested one must be in range and free cluster-wide."""
        spec = service.get("spec") or {}
        meta = service["metadata"]
        own = (meta.get("namespace"), meta.get("name"))
        taken: dict[int, str] = {}
        for key, other in self._objects.items():
            if key[:2] != ("", "services") or (key[2], key[3]) == own:
                continue
            for port in (other.get("spec") or {}).get("ports") or []:
                if port.get("nodePort"):
                    taken[port["nodePort"]] = f"{key[2]}/{key[3]}"
        problems = node_port_errors(service, taken)
        if problems:
            raise errors.invalid("Service", "", meta.get("name", ""), problems)
        if spec.get("type") not in ("NodePort", "LoadBalancer"):
            return
        previous = {
            (port.get("port"), port.get("protocol", "TCP")): port.get("nodePort")
            for port in ((old or {}).get("spec") or {}).get("ports") or []
        }
        in_use = set(taken) | {port.get("nodePort") for port in spec.get("ports") or [] if port.get("nodePort")}
        low, high = NODE_PORT_RANGE
        for port in spec.get("ports") or []:
            if port.get("nodePort"):
                continue
            kept = previous.get((port.get("port"), port.get("protocol", "TCP")))
            if kept:
                port["nodePort"] = kept
                continue
            free = next((candidate for candidate in range(low, high + 1) if candidate not in in_use), None)
            if free is None:
                raise ApiError(500, "InternalError", "range is full: no node port is left to allocate")
            port["nodePort"] = free
            in_use.add(free)

    def _check_namespace(self, rtype: ResourceType, namespace: str | None, name: str) -> None:
        if not rtype.namespaced:
            return
        if not namespace:
            raise errors.bad_request("the namespace of the object must be set for a namespaced resource")
        ns = self._objects.get(("", "namespaces", "", namespace))
        if ns is None:
            raise errors.not_found("namespaces", "", namespace)
        if (ns.get("metadata") or {}).get("deletionTimestamp"):
            raise ApiError(
                403,
                "Forbidden",
                f'{rtype.qualified_plural} "{name}" is forbidden: unable to create new content in namespace '
                f"{namespace} because it is being terminated",
            )

    def create(
        self, rtype: ResourceType, namespace: str | None, body: Any, options: WriteOptions | None = None
    ) -> JsonObject:
        options = options or WriteOptions()
        if not isinstance(body, dict):
            raise errors.bad_request("the request body must be a JSON object")
        with self._lock:
            obj = copy.deepcopy(body)
            metadata = obj.setdefault("metadata", {})
            if not isinstance(metadata, dict):
                raise errors.bad_request("metadata must be an object")
            body_namespace = metadata.get("namespace")
            if rtype.namespaced:
                if namespace and body_namespace and body_namespace != namespace:
                    raise errors.bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request"
                    )
                namespace = namespace or body_namespace
                metadata["namespace"] = namespace
            else:
                metadata.pop("namespace", None)
                namespace = None
            if not metadata.get("name") and metadata.get("generateName"):
                for _ in range(100):
                    candidate = metadata["generateName"] + "".join(random.choices(_GENERATE_ALPHABET, k=5))
                    if self._key(rtype, namespace, candidate) not in self._objects:
                        metadata["name"] = candidate
                        break
            name = metadata.get("name")
            self._validate_name(rtype, name)
            assert isinstance(name, str)
            self._check_namespace(rtype, namespace, name)
            key = self._key(rtype, namespace, name)
            if key in self._objects:
                raise errors.already_exists(rtype.plural, rtype.group, name)
            obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
            for server_field in ("uid", "resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
                metadata.pop(server_field, None)
            metadata["uid"] = str(uuid.uuid4())
            metadata["creationTimestamp"] = now_rfc3339()
            metadata["generation"] = 1
            if rtype.status_subresource and (rtype.custom or rtype.group in ("apps",)):
                obj.pop("status", None)
            obj = _builtin_defaults(rtype, obj)
            if self.admission is not None:
                obj = self.admission(rtype, obj, None)
            if (rtype.group, rtype.plural) == (CRD_GROUP, "customresourcedefinitions"):
                obj = self._admit_crd(obj)
            metadata = obj["metadata"]  # admission returns a new object
            for plugin in self.user_admission:
                plugin(rtype, obj, None, options.user, None)
            if (rtype.group, rtype.plural) == ("", "pods"):
                self._admit_pod_quota(namespace or "", obj)
            # The creating manager owns every field the request set (fieldmanager's Update from an empty object).
            rule = schema_list_rule(rtype.schema) if rtype.custom else builtin_list_rule
            _record_manager(
                metadata, options.field_manager, "Update", rtype.api_version, fields=field_paths(body, rule)
            )
            if options.dry_run:
                return self.present(rtype, obj)
            metadata["resourceVersion"] = self._next_resource_version()
            obj = _storage_form(rtype, obj)
            self._objects[key] = obj
            self._record(rtype, "ADDED", obj, None)
            self._after_quota_relevant_change(rtype, namespace)
            if (rtype.group, rtype.plural) == (CRD_GROUP, "customresourcedefinitions"):
                self._register_crd(obj)
            created = self.present(rtype, obj)
            if metadata.get("ownerReferences"):
                self._drop_absent_owners(key)  # created after its owner was deleted: the GC deletes it
            return created

    def replace(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        subresource: str | None = None,
        options: WriteOptions | None = None,
    ) -> JsonObject:
        if not isinstance(body, dict):
            raise errors.bad_request("the request body must be a JSON object")
        metadata = body.get("metadata") or {}
        if metadata.get("name") not in (None, name):
            raise errors.bad_request(
                f"the name of the object ({metadata.get('name')}) does not match the name on the URL ({name})"
            )
        with self._lock:
            current = self.get(rtype, namespace, name)
            wanted = metadata.get("resourceVersion")
            if wanted and wanted != current["metadata"]["resourceVersion"]:
                raise errors.stale(rtype.plural, rtype.group, name)
            # An update must name the resourceVersion it read where the kind's strategy refuses unconditional
            # updates: custom resources, and Leases (leaseStrategy.AllowUnconditionalUpdate is false, so two
            # candidates of a leader election can never both win a write).
            conditional = rtype.custom or (rtype.group, rtype.plural) in CONDITIONAL_UPDATES
            if conditional and not wanted and subresource is None:
                raise errors.invalid(
                    rtype.kind,
                    rtype.group,
                    name,
                    [
                        # rest.BeforeUpdate: field.Invalid(..., newVersion uint64, ...), which %#v prints as 0x0.
                        FieldError(
                            "metadata.resourceVersion",
                            "Invalid value",
                            "must be specified for an update",
                            errors.GoLiteral("0x0"),
                        )
                    ],
                )
            candidate = copy.deepcopy(body)
            candidate.setdefault("metadata", {})
            return self._commit_update(
                rtype, namespace, name, current, candidate, subresource, options or WriteOptions()
            )

    def patch(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        patch_type: str,
        patch: Any,
        *,
        subresource: str | None = None,
        options: WriteOptions | None = None,
    ) -> JsonObject:
        options = options or WriteOptions()
        with self._lock:
            key = self._key(rtype, namespace, name)
            if key not in self._objects:
                if patch_type == PATCH_APPLY and subresource is None:
                    if not options.field_manager:
                        raise errors.bad_request("PATCH /apply requires fieldManager")
                    body = copy.deepcopy(patch) if isinstance(patch, dict) else {}
                    body.setdefault("metadata", {})["name"] = name
                    created = self.create(rtype, namespace, body, options)
                    if not options.dry_run and key in self._objects:  # not collected as an orphan at once
                        rule = schema_list_rule(rtype.schema) if rtype.custom else builtin_list_rule
                        _record_manager(
                            self._objects[key]["metadata"],
                            options.field_manager,
                            "Apply",
                            rtype.api_version,
                            replace=True,
                            fields=field_paths(body, rule),
                        )
                        created = self.present(rtype, self._objects[key])
                    return created
                raise errors.not_found(rtype.plural, rtype.group, name)
            current = self.present(rtype, self._objects[key])
            owned: set[FieldPath] | None = None
            if patch_type == PATCH_APPLY:
                if not options.field_manager:
                    raise errors.bad_request("PATCH /apply requires fieldManager")
                candidate, owned = self._applied(rtype, current, patch, options.field_manager)
            else:
                candidate = self.patched(rtype, current, patch_type, patch)
            wanted = (candidate.get("metadata") or {}).get("resourceVersion")
            if wanted and wanted != current["metadata"]["resourceVersion"]:
                raise errors.stale(rtype.plural, rtype.group, name)
            operation = "Apply" if patch_type == PATCH_APPLY else "Update"
            return self._commit_update(
                rtype, namespace, name, current, candidate, subresource, options, operation, owned_fields=owned
            )

    def _applied(
        self, rtype: ResourceType, current: JsonObject, config: Any, manager: str
    ) -> tuple[JsonObject, set[FieldPath]]:
        """Server-side apply of `config` by `manager` onto `current`: the result and the fields it now owns."""
        if not isinstance(config, dict):
            raise errors.bad_request("an applied configuration must be an object")
        for field in ("apiVersion", "kind"):
            if config.get(field) not in (None, current.get(field)):
                raise errors.bad_request(
                    f"{field} of the applied configuration ({config.get(field)}) does not match the object's "
                    f"({current.get(field)})"
                )
        previous = next(
            (
                decode_fields(entry.get("fieldsV1") or {})
                for entry in current["metadata"].get("managedFields") or []
                if (entry.get("manager"), entry.get("operation")) == (manager, "Apply")
            ),
            set(),
        )
        rule = schema_list_rule(rtype.schema) if rtype.custom else builtin_list_rule
        return server_side_apply(current, config, previous, rule)

    def patched(self, rtype: ResourceType, current: JsonObject, patch_type: str, patch: Any) -> JsonObject:
        """`current` with a patch applied, by the patch type's rules (nothing stored)."""
        try:
            if patch_type == PATCH_JSON:
                return apply_json_patch(current, patch)
            if not isinstance(patch, dict):
                raise errors.bad_request(f"the patch of type {patch_type} must be a JSON object")
            if patch_type == PATCH_MERGE:
                result = apply_merge_patch(current, patch)
                assert isinstance(result, dict)
                return result
            if patch_type == PATCH_STRATEGIC:
                if rtype.custom:
                    raise errors.unsupported_media_type(patch_type, [PATCH_JSON, PATCH_MERGE, PATCH_APPLY])
                return apply_strategic_merge_patch(current, patch)
            if patch_type == PATCH_APPLY:
                return self._applied(rtype, current, patch, "")[0]
        except PatchError as error:
            if error.test_failed:
                raise ApiError(422, "Invalid", str(error)) from None
            raise errors.bad_request(str(error)) from None
        accepted = [PATCH_JSON, PATCH_MERGE, PATCH_APPLY] + ([] if rtype.custom else [PATCH_STRATEGIC])
        raise errors.unsupported_media_type(patch_type, accepted)

    def _commit_update(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        current: JsonObject,
        candidate: JsonObject,
        subresource: str | None,
        options: WriteOptions,
        operation: str = "Update",
        *,
        owned_fields: set[FieldPath] | None = None,
    ) -> JsonObject:
        old_meta = current["metadata"]
        if subresource == "status":
            # /status writes only the status stanza (metadata's labels and annotations too, as for built-ins).
            updated = copy.deepcopy(current)
            if "status" in candidate:
                updated["status"] = copy.deepcopy(candidate["status"])
            else:
                updated.pop("status", None)
        else:
            updated = copy.deepcopy(candidate)
            if rtype.status_subresource:
                if "status" in current:
                    updated["status"] = copy.deepcopy(current["status"])
                else:
                    updated.pop("status", None)
        meta = updated.setdefault("metadata", {})
        if subresource == "status":
            meta.clear()
            meta.update(copy.deepcopy(old_meta))
        for immutable in ("uid", "creationTimestamp", "name", "namespace", "deletionTimestamp", "generation"):
            if immutable in old_meta:
                meta[immutable] = copy.deepcopy(old_meta[immutable])
            else:
                meta.pop(immutable, None)
        if "deletionGracePeriodSeconds" in old_meta:
            meta["deletionGracePeriodSeconds"] = old_meta["deletionGracePeriodSeconds"]
        # managedFields the request sets (valid and not empty) replace the stored ones: the apiserver lets a client
        # edit them directly (fieldmanager.FieldManager.Update decodes the new object's managedFields first, "to
        # allow directly updating managed fields"), e.g. to hand fields from an Update entry to an Apply one.
        supplied = (candidate.get("metadata") or {}).get("managedFields")
        kept = supplied if subresource is None and _valid_managed_fields(supplied) else old_meta.get("managedFields")
        meta["managedFields"] = copy.deepcopy(kept or [])
        if not meta["managedFields"]:
            del meta["managedFields"]
        meta["resourceVersion"] = old_meta["resourceVersion"]
        updated["apiVersion"], updated["kind"] = rtype.api_version, rtype.kind
        if old_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                raise errors.invalid(
                    rtype.kind,
                    rtype.group,
                    name,
                    [
                        FieldError(
                            "metadata.finalizers",
                            "Forbidden",
                            f"no new finalizers can be added if the object is being deleted, found new finalizers "
                            f"{sorted(added)!r}",
                        )
                    ],
                )
        if _spec_of(updated) != _spec_of(current):
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        if self.admission is not None:
            updated = self.admission(rtype, updated, current)
            meta = updated["metadata"]
        for plugin in self.user_admission:
            plugin(rtype, updated, current, options.user, subresource)
        if (rtype.group, rtype.plural) == (CRD_GROUP, "customresourcedefinitions"):
            updated = self._admit_crd(updated, current)
            meta = updated["metadata"]
        if owned_fields is not None:
            _record_manager(meta, options.field_manager, operation, rtype.api_version, fields=owned_fields)
        if _comparable(updated, with_managed_fields=True) == _comparable(current, with_managed_fields=True):
            return current  # a no-op write changes nothing, not even the resourceVersion
        if owned_fields is None and _comparable(updated, with_managed_fields=False) != _comparable(
            current, with_managed_fields=False
        ):
            # A write that set no field but managedFields gives its manager no entry (it took no field).
            _record_manager(meta, options.field_manager, operation, rtype.api_version)
        if options.dry_run:
            return self.present(rtype, updated)
        key = self._key(rtype, namespace, name)
        meta["resourceVersion"] = self._next_resource_version()
        stored = _storage_form(rtype, updated)
        self._objects[key] = stored
        self._record(rtype, "MODIFIED", stored, _storage_form(rtype, current))
        self._after_quota_relevant_change(rtype, namespace)
        if (rtype.group, rtype.plural) == (CRD_GROUP, "customresourcedefinitions"):
            self._register_crd(stored)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._remove(rtype, key)
        elif meta.get("ownerReferences") != old_meta.get("ownerReferences"):
            self._drop_absent_owners(key)
        return self.present(rtype, stored)

    def delete(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        *,
        propagation: str | None = None,
        preconditions: JsonObject | None = None,
        options: WriteOptions | None = None,
    ) -> JsonObject:
        options = options or WriteOptions()
        with self._lock:
            key = self._key(rtype, namespace, name)
            obj = self._objects.get(key)
            if obj is None:
                raise errors.not_found(rtype.plural, rtype.group, name)
            meta = obj["metadata"]
            for field, value in (preconditions or {}).items():
                if value and meta.get(field) != value:
                    raise errors.conflict(
                        rtype.plural,
                        rtype.group,
                        name,
                        f"Precondition failed: {field.upper() if field == 'uid' else field} in precondition: {value}, "
                        f"{field.upper() if field == 'uid' else field} in object meta: {meta.get(field)}",
                    )
            if options.dry_run:
                return self.present(rtype, obj)
            if propagation == "Orphan":
                self._orphan_dependents(meta["uid"])
            is_namespace = (rtype.group, rtype.plural) == ("", "namespaces")
            if meta.get("finalizers") or is_namespace:
                if not meta.get("deletionTimestamp"):
                    previous = copy.deepcopy(obj)
                    meta["deletionTimestamp"] = now_rfc3339()
                    meta["deletionGracePeriodSeconds"] = 0
                    if is_namespace:
                        obj.setdefault("status", {})["phase"] = "Terminating"
                    meta["resourceVersion"] = self._next_resource_version()
                    self._record(rtype, "MODIFIED", obj, previous)
                if is_namespace:
                    self._terminate_namespace(name)
                if key in self._objects:
                    return self.present(rtype, self._objects[key])
                return self.present(rtype, obj)
            return self._remove(rtype, key)

    def _remove(self, rtype: ResourceType, key: ObjectKey) -> JsonObject:
        obj = self._objects.pop(key)
        previous = copy.deepcopy(obj)  # what a list at an earlier resourceVersion shows (`snapshot`)
        obj["metadata"]["resourceVersion"] = self._next_resource_version()
        self._record(rtype, "DELETED", obj, previous)
        if (rtype.group, rtype.plural) == (CRD_GROUP, "customresourcedefinitions"):
            self._unregister_crd(obj)
        self._collect_dependents(obj["metadata"]["uid"])
        namespace = obj["metadata"].get("namespace")
        self._after_quota_relevant_change(rtype, namespace)
        if namespace:
            self._finish_namespace_if_empty(namespace)
        return self.present(rtype, obj)

    def _type_of_key(self, key: ObjectKey) -> ResourceType:
        obj = self._objects[key]
        rtype = self.type_for_kind(obj.get("apiVersion", ""), obj.get("kind", ""))
        if rtype is not None:
            return rtype
        for candidate in self._types.values():
            if (candidate.group, candidate.plural) == key[:2]:
                return candidate
        raise AssertionError(f"no type for stored object {key}")

    def _collect_dependents(self, owner_uid: str) -> None:
        """Background cascading deletion: dependents whose every owner is gone are deleted too."""
        for key, obj in list(self._objects.items()):
            if key in self._objects and any(
                ref.get("uid") == owner_uid for ref in obj["metadata"].get("ownerReferences") or []
            ):
                self._drop_absent_owners(key)

    def _drop_absent_owners(self, key: ObjectKey) -> None:
        """The garbage collector's verdict on one object: ownerReferences whose uid names no existing object are
        removed, and an object left with none of its owners is deleted (whenever it was created or updated)."""
        obj = self._objects[key]
        refs = obj["metadata"].get("ownerReferences") or []
        live_uids = {other["metadata"]["uid"] for other in self._objects.values()}
        remaining = [ref for ref in refs if ref.get("uid") in live_uids]
        if len(remaining) == len(refs):
            return
        rtype = self._type_of_key(key)
        if remaining:
            previous = copy.deepcopy(obj)
            obj["metadata"]["ownerReferences"] = remaining
            obj["metadata"]["resourceVersion"] = self._next_resource_version()
            self._record(rtype, "MODIFIED", obj, previous)
        else:
            self.delete(rtype, key[2] or None, key[3])

    def _orphan_dependents(self, owner_uid: str) -> None:
        for key, obj in list(self._objects.items()):
            refs = obj["metadata"].get("ownerReferences") or []
            if any(ref.get("uid") == owner_uid for ref in refs):
                previous = copy.deepcopy(obj)
                kept = [ref for ref in refs if ref.get("uid") != owner_uid]
                if kept:
                    obj["metadata"]["ownerReferences"] = kept
                else:
                    obj["metadata"].pop("ownerReferences", None)
                obj["metadata"]["resourceVersion"] = self._next_resource_version()
                self._record(self._type_of_key(key), "MODIFIED", obj, previous)

    def _terminate_namespace(self, namespace: str) -> None:
        for key in [key for key in self._objects if key[2] == namespace]:
            if key in self._objects:
                self.delete(self._type_of_key(key), namespace, key[3])
        self._finish_namespace_if_empty(namespace)

    def _finish_namespace_if_empty(self, namespace: str) -> None:
        ns_key: ObjectKey = ("", "namespaces", "", namespace)
        ns = self._objects.get(ns_key)
        if ns is None or not ns["metadata"].get("deletionTimestamp"):
            return
        if any(key[2] == namespace for key in self._objects):
            return
        self._remove(self.type_for("", "v1", "namespaces"), ns_key)

    # -- CRDs -----------------------------------------------------------------------------------------------

    def _admit_crd(self, crd: JsonObject, previous: JsonObject | None = None) -> JsonObject:
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        name = crd["metadata"].get("name", "")
        problems: list[FieldError] = []
        if not spec.get("group"):
            problems.append(FieldError("spec.group", "Required value", ""))
        for field in ("plural", "kind"):
            if not names.get(field):
                problems.append(FieldError(f"spec.names.{field}", "Required value", ""))
        if names.get("plural") and spec.get("group") and name != f"{names['plural']}.{spec['group']}":
            problems.append(
                FieldError("metadata.name", "Invalid value", 'must be spec.names.plural+"."+spec.group', name)
            )
        if not spec.get("versions"):
            problems.append(
                FieldError("spec.versions", "Required value", "must have exactly one version marked as storage version")
            )
        if problems:
            raise errors.invalid("CustomResourceDefinition", CRD_GROUP, name, problems)
        now = now_rfc3339()
        storage_versions = [v["name"] for v in spec["versions"] if v.get("storage")]
        crd = copy.deepcopy(crd)
        # Condition times change only when a condition's status flips: keep those of the stored CRD.
        since = {
            c.get("type"): c.get("lastTransitionTime")
            for c in (previous or {}).get("status", {}).get("conditions") or []
        }
        accepted = {
            key: value
            for key, value in names.items()
            if key in ("plural", "singular", "kind", "shortNames", "categories")
        }
        accepted["listKind"] = names.get("listKind") or f"{names['kind']}List"
        accepted["singular"] = names.get("singular") or names["kind"].lower()
        crd["status"] = {
            "acceptedNames": accepted,
            "conditions": [
                {
                    "type": "NamesAccepted",
                    "status": "True",
                    "reason": "NoConflicts",
                    "message": "no conflicts found",
                    "lastTransitionTime": since.get("NamesAccepted") or now,
                },
                {
                    "type": "Established",
                    "status": "True",
                    "reason": "InitialNamesAccepted",
                    "message": "the initial names have been accepted",
                    "lastTransitionTime": since.get("Established") or now,
                },
            ],
            "storedVersions": storage_versions,
        }
        return crd

    def _register_crd(self, crd: JsonObject) -> None:
        group = (crd.get("spec") or {}).get("group", "")
        plural = ((crd.get("spec") or {}).get("names") or {}).get("plural", "")
        for key in [
            key for key, rtype in self._types.items() if rtype.custom and (rtype.group, rtype.plural) == (group, plural)
        ]:
            del self._types[key]
        for rtype in types_from_crd(crd):
            self._types[(rtype.group, rtype.version, rtype.plural)] = rtype

    def _unregister_crd(self, crd: JsonObject) -> None:
        spec = crd.get("spec") or {}
        group, plural = spec.get("group", ""), (spec.get("names") or {}).get("plural", "")
        rtypes = [
            rtype for rtype in self._types.values() if rtype.custom and (rtype.group, rtype.plural) == (group, plural)
        ]
        for key in [key for key in self._objects if key[:2] == (group, plural)]:
            obj = self._objects.pop(key)
            obj["metadata"]["resourceVersion"] = self._next_resource_version()
            if rtypes:
                self._record(rtypes[0], "DELETED", obj, None)
        for rtype in rtypes:
            del self._types[(rtype.group, rtype.version, rtype.plural)]

    # -- scale ----------------------------------------------------------------------------------------------

    def scale_of(self, rtype: ResourceType, obj: JsonObject) -> JsonObject:
        assert rtype.scale is not None
        meta = obj["metadata"]
        selector = get_path(obj, rtype.scale.label_selector_path) if rtype.scale.label_selector_path else None
        if isinstance(selector, dict):
            selector = selector_from_match_labels(selector)
        if selector is None and rtype.group == "apps":
            selector = selector_from_match_labels(get_path(obj, ".spec.selector"))
        status: JsonObject = {"replicas": get_path(obj, rtype.scale.status_replicas_path) or 0}
        if selector:
            status["selector"] = selector
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                key: meta[key]
                for key in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                if key in meta
            },
            "spec": {"replicas": get_path(obj, rtype.scale.spec_replicas_path) or 0},
            "status": status,
        }

    def write_scale(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        scale: JsonObject,
        options: WriteOptions | None = None,
    ) -> JsonObject:
        assert rtype.scale is not None
        with self._lock:
            current = self.get(rtype, namespace, name)
            wanted = (scale.get("metadata") or {}).get("resourceVersion")
            if wanted and wanted != current["metadata"]["resourceVersion"]:
                raise errors.stale(rtype.plural, rtype.group, name)
            replicas = (scale.get("spec") or {}).get("replicas")
            if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
                raise errors.invalid(
                    "Scale",
                    "autoscaling",
                    name,
                    [FieldError("spec.replicas", "Invalid value", "must be greater than or equal to 0", replicas)],
                )
            candidate = copy.deepcopy(current)
            set_path(candidate, rtype.scale.spec_replicas_path, replicas)
            updated = self._commit_update(rtype, namespace, name, current, candidate, None, options or WriteOptions())
            return self.scale_of(rtype, updated)

    # -- direct access for in-process helpers ---------------------------------------------------------------

    def all_objects(self) -> Iterable[tuple[ObjectKey, JsonObject]]:
        with self._lock:
            return [(key, copy.deepcopy(obj)) for key, obj in self._objects.items()]


def _spec_of(obj: JsonObject) -> JsonObject:
    """What `metadata.generation` tracks: everything but metadata and status."""
    return {key: value for key, value in obj.items() if key not in ("metadata", "status", "apiVersion", "kind")}


def _comparable(obj: JsonObject, *, with_managed_fields: bool) -> JsonObject:
    """What decides whether a write changed anything: not the resourceVersion, nor managedFields' timestamps (nor
    managedFields at all without ``with_managed_fields``)."""
    comparable = copy.deepcopy(obj)
    meta = comparable.get("metadata") or {}
    meta.pop("resourceVersion", None)
    entries = meta.pop("managedFields", None) or []
    if with_managed_fields:
        meta["managedFields"] = [{k: v for k, v in entry.items() if k != "time"} for entry in entries]
    return comparable


def _valid_managed_fields(value: Any) -> bool:
    """Whether a request's managedFields decode (fieldmanager.DecodeManagedFields): entries with a manager, an
    operation of Apply or Update, and FieldsV1 as an object; no manager and operation twice."""
    if not isinstance(value, list) or not value:
        return False
    seen = set()
    for entry in value:
        if not isinstance(entry, dict) or not isinstance(entry.get("manager"), str):
            return False
        if entry.get("operation") not in ("Apply", "Update") or not isinstance(entry.get("fieldsV1", {}), dict):
            return False
        identity = (entry["manager"], entry["operation"], entry.get("subresource", ""))
        if identity in seen:
            return False
        seen.add(identity)
    return True


def _storage_form(rtype: ResourceType, obj: JsonObject) -> JsonObject:
    stored = copy.deepcopy(obj)
    if rtype.group == "events.k8s.io":
        stored = _events_v1_to_core_event(stored)
        stored["apiVersion"], stored["kind"] = "v1", "Event"
    return stored


def _record_manager(
    metadata: JsonObject,
    manager: str | None,
    operation: str,
    api_version: str,
    *,
    replace: bool = False,
    fields: set[FieldPath] | None = None,
) -> None:
    if not manager:
        return
    entries = (
        []
        if replace
        else [
            e
            for e in metadata.get("managedFields") or []
            if (e.get("manager"), e.get("operation")) != (manager, operation)
        ]
    )
    entries.append(
        {
            "manager": manager,
            "operation": operation,
            "apiVersion": api_version,
            "time": now_rfc3339(),
            "fieldsType": "FieldsV1",
            "fieldsV1": encode_fields(fields or set()),
        }
    )
    metadata["managedFields"] = entries


def get_path(obj: Any, path: str | None) -> Any:
    """Reads a simple `.a.b.c` path (the CRD scale subresource's form)."""
    current = obj
    for part in (path or "").strip(".").split("."):
        if not part:
            continue
        if not isinstance(current, dict):
            return None
        current = current.get(part)
    return current


def set_path(obj: JsonObject, path: str, value: Any) -> None:
    parts = [part for part in path.strip(".").split(".") if part]
    current = obj
    for part in parts[:-1]:
        current = current.setdefault(part, {})
    current[parts[-1]] = value


_service_ip_counter = iter(range(1, 65_000))


def _builtin_defaults(rtype: ResourceType, obj: JsonObject) -> JsonObject:
    """The few defaults of built-in kinds that clients read back (the apiserver sets many more)."""
    kind = (rtype.group, rtype.plural)
    if kind == ("", "namespaces"):
        obj.setdefault("status", {}).setdefault("phase", "Active")
        obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
    elif kind == ("", "pods"):
        obj.setdefault("status", {}).setdefault("phase", "Pending")
        spec = obj.setdefault("spec", {})
        # SetDefaults_Pod: a container's limit is its request where it declares none (what quota then counts).
        for container in (spec.get("initContainers") or []) + (spec.get("containers") or []):
            resources = container.get("resources") if isinstance(container, dict) else None
            if isinstance(resources, dict) and isinstance(resources.get("limits"), dict):
                requests = resources.setdefault("requests", {})
                for name, value in resources["limits"].items():
                    requests.setdefault(name, value)
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("schedulerName", "default-scheduler")
    elif kind == ("", "services"):
        spec = obj.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        if spec.get("clusterIP") != "None":
            number = next(_service_ip_counter)
            spec.setdefault("clusterIP", f"10.96.{number // 250}.{number % 250 + 1}")
        for port in spec.get("ports") or []:
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))
    elif kind in (("apps", "deployments"), ("apps", "replicasets"), ("apps", "statefulsets")):
        spec = obj.setdefault("spec", {})
        spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        if kind == ("apps", "deployments"):
            spec.setdefault("progressDeadlineSeconds", 600)
            spec.setdefault(
                "strategy", {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}
            )
    elif kind == ("", "events"):
        obj.setdefault("count", 1)
        obj.setdefault("type", "Normal")
    return obj


def _core_event_to_events_v1(event: JsonObject) -> JsonObject:
    converted = {
        key: value
        for key, value in event.items()
        if key not in ("involvedObject", "message", "source", "count", "firstTimestamp", "lastTimestamp")
    }
    if "involvedObject" in event:
        converted["regarding"] = event["involvedObject"]
    if "message" in event:
        converted["note"] = event["message"]
    source = event.get("source") or {}
    if source.get("component") and "reportingController" not in converted:
        converted["reportingController"] = source["component"]
    if event.get("count", 1) > 1:
        converted["deprecatedCount"] = event["count"]
    for field in ("firstTimestamp", "lastTimestamp"):
        if event.get(field):
            converted[f"deprecated{field[0].upper()}{field[1:]}"] = event[field]
    return converted


def _events_v1_to_core_event(event: JsonObject) -> JsonObject:
    converted = {
        key: value
        for key, value in event.items()
        if key not in ("regarding", "note", "deprecatedCount", "deprecatedFirstTimestamp", "deprecatedLastTimestamp")
    }
    if "regarding" in event:
        converted["involvedObject"] = event["regarding"]
    if "note" in event:
        converted["message"] = event["note"]
    if event.get("reportingController"):
        converted.setdefault("source", {"component": event["reportingController"]})
    converted["count"] = event.get("deprecatedCount", 1)
    for field in ("FirstTimestamp", "LastTimestamp"):
        if event.get(f"deprecated{field}"):
            converted[field[0].lower() + field[1:]] = event[f"deprecated{field}"]
    return converted
