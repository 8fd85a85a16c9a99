"""kubellm's children (the Deployment and the Service of an LLMService): is the rendered child already there,
which lists someone else merged into, whose child is it, and how each child is written this pass.

Pure functions of the rendered child and the live one; the plan (``plan.py``) calls them and the executor
(``execute.py``) carries out what they decide.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kubellm.quantity import parse_quantity
from kubellm_operator.config import FIELD_MANAGER

# On each child: the hash of what kubellm last applied. Comparing desired fields with the live object catches
# edits; the hash catches fields kubellm stopped setting (a removed env var), which a subset check cannot see.
APPLIED_HASH_ANNOTATION = "kubellm.dev/applied-hash"
_QUANTITY_PARENTS = frozenset({"requests", "limits", "capacity", "allocatable"})
_QUANTITY_KEYS = frozenset({"sizeLimit"})
CHILD_KINDS = ("Deployment", "Service")  # what render.render() returns, in that order


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


def controller_of(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The controller ownerReference of ``obj`` (the one with ``controller: true``), or None."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if isinstance(ref, Mapping) and ref.get("controller") is True:
            return ref
    return None


def owned_by(obj: Mapping[str, Any], uid: str | None) -> bool:
    """Whether ``obj`` carries the LLMService with ``uid`` as its controller: the only children kubellm updates."""
    ref = controller_of(obj)
    return uid is not None and ref is not None and ref.get("uid") == uid


def describe_owner(obj: Mapping[str, Any]) -> str:
    """Who holds ``obj``, for a NameConflict message: its controller (kind/name), else its first owner, else "no
    owner"."""
    refs = [r for r in (obj.get("metadata") or {}).get("ownerReferences") or [] if isinstance(r, Mapping)]
    ref = controller_of(obj) or (refs[0] if refs else None)
    if ref is None:
        return "no owner"
    return f"owner {ref.get('kind')} {ref.get('name')} (uid {ref.get('uid')})"


@dataclass(frozen=True)
class Refusal:
    """A write the API refused with a 4xx that waiting alone will not fix, or a child kubellm may not touch:
    what the status and the Event say."""

    reason: str  # a status.py refusal reason: ChildRejected, Forbidden, QuotaExceeded, ApiRefused, NameConflict
    message: str  # names the object and carries the apiserver's own message (which names the field)
    permanent: bool  # the same write will be refused again until the spec changes (400/422)
    retry_after: float | None = None
    kind: str = ""  # the child refused (Deployment, Service)


@dataclass(frozen=True)
class ChildPlan:
    """How one child is written this pass: created (absent), not at all, by server-side apply, and/or a JSON
    patch of lists; or not touched because it is not this LLMService's (``conflict``)."""

    kind: str
    desired: dict[str, Any]  # rendered, adopted and hash-stamped
    live: dict[str, Any] | None
    repairs: tuple[dict[str, Any], ...] = ()  # JSON-patch operations replacing lists with foreign items
    apply: bool = False
    create: bool = False  # absent from the watch: created, never applied over (a 409 means someone else's)
    conflict: Refusal | None = None  # the live object is not ours: nothing is written
    # kubellm's own Update entry in managedFields (its create's, or a list repair's): handed to its Apply entry
    # before the apply, else a field the spec dropped would stay owned by that entry and never be removed.
    adopt_updates: bool = False

    @property
    def writes(self) -> bool:
        return self.create or self.apply or bool(self.repairs)


def name_conflict(kind: str, namespace: str, name: str, holder: str) -> Refusal:
    """The refusal for a child whose name another object holds (``holder``: describe_owner's words)."""
    return Refusal(
        "NameConflict",
        f"{kind} {namespace}/{name} already exists and is not this LLMService's ({holder}); kubellm leaves it "
        "untouched: rename the LLMService or remove that object",
        permanent=False,
        kind=kind,
    )


def plan_child(desired: dict[str, Any], live: dict[str, Any] | None, owner_uid: str | None = None) -> ChildPlan:
    """How to write ``desired`` over ``live`` (None: absent); ``owner_uid`` is the LLMService's (None: do not
    check who controls the live object)."""
    kind = desired["kind"]
    if live is None:
        return ChildPlan(kind, desired, live, create=True)
    if owner_uid is not None and not owned_by(live, owner_uid):
        metadata = desired["metadata"]
        conflict = name_conflict(kind, metadata["namespace"], metadata["name"], describe_owner(live))
        return ChildPlan(kind, desired, live, conflict=conflict)
    repairs = tuple(list_repairs(kind, desired, live))
    annotations = (live.get("metadata") or {}).get("annotations") or {}
    stamped = annotations.get(APPLIED_HASH_ANNOTATION) == desired["metadata"]["annotations"][APPLIED_HASH_ANNOTATION]
    apply = not (stamped and is_applied(desired, live)) or bool(repairs)
    return ChildPlan(kind, desired, live, repairs, apply=apply, adopt_updates=apply and has_update_entry(live))


def has_update_entry(live: Mapping[str, Any]) -> bool:
    """Whether kubellm's field manager holds an Update entry in the object's managedFields."""
    entries = (live.get("metadata") or {}).get("managedFields") or []
    return any(_is_entry(entry, "Update") for entry in entries)


def applier_managed_fields(entries: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``managedFields`` with kubellm's Update entries folded into its Apply entry (their field sets united; the
    Apply entry made when there is none): server-side apply removes a field kubellm no longer applies only when
    no other entry owns it, and kubellm's create (a POST: an Update entry) owns every field it set."""
    kept: list[dict[str, Any]] = []
    applied: dict[str, Any] | None = None
    fields: dict[str, Any] = {}
    for entry in entries:
        if _is_entry(entry, "Update") or _is_entry(entry, "Apply"):
            fields = _union(fields, entry.get("fieldsV1") or {})
            if _is_entry(entry, "Apply") or applied is None:
                applied = dict(entry)
            continue
        kept.append(dict(entry))
    if applied is None:
        return kept
    applied.update(operation="Apply", fieldsType="FieldsV1", fieldsV1=fields)
    applied.pop("subresource", None)
    return [*kept, applied]


def _is_entry(entry: Any, operation: str) -> bool:
    return (
        isinstance(entry, Mapping)
        and entry.get("manager") == FIELD_MANAGER
        and entry.get("operation") == operation
        and not entry.get("subresource")
    )


def _union(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Two FieldsV1 trees united (a tree's keys are field, item and value segments; ``{}`` is a leaf)."""
    merged = {key: copy.deepcopy(value) for key, value in a.items()}
    for key, value in b.items():
        merged[key] = _union(merged[key], value) if key in merged else copy.deepcopy(value)
    return merged


def fingerprint(children: Iterable[Mapping[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(list(children), sort_keys=True).encode()).hexdigest()[:16]
