"""The OwnerReferencesPermissionEnforcement admission plugin (plugin/pkg/admission/gc/gc_admission.go).

Off in a vanilla kube-apiserver, on in OpenShift and in many hardened clusters; kubellm's operator sets
`blockOwnerDeletion` on its children (Kopf's `adopt`), so it must hold what the plugin asks for:

- changing an object's ownerReferences on update needs `delete` on that object
  (`<resource> "x" is forbidden: cannot set an ownerRef on a resource you can't delete: <reason>, <nil>`);
- a new ownerReference with `blockOwnerDeletion: true` needs `update` on the owner's `finalizers` subresource
  (`... cannot set blockOwnerDeletion if an ownerReference refers to a resource you can't set finalizers on: ...`),
  unless the user may update every `*/finalizers`.

In-process writes (the sandbox runner's, the seeding helpers') carry no user and are not checked: they stand for the
controller-manager, whose own RBAC grants all of this.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubellm_emulator.auth import Attributes, Authorizer, Identity
from kubellm_emulator.errors import ApiError
from kubellm_emulator.resources import ResourceType

JsonObject = dict[str, Any]


def _refs(obj: Mapping[str, Any] | None) -> list[JsonObject]:
    return list(((obj or {}).get("metadata") or {}).get("ownerReferences") or [])


def _changing(new: Mapping[str, Any], old: Mapping[str, Any] | None) -> bool:
    """isChangingOwnerReference."""
    if old is None:
        return bool(_refs(new))
    return _refs(new) != _refs(old)


def _new_blocking(new: Mapping[str, Any], old: Mapping[str, Any] | None) -> list[JsonObject]:
    """newBlockingOwnerDeletionRefs: blocking refs that were not blocking (by uid) before."""
    blocking_before = {ref.get("uid") for ref in _refs(old) if ref.get("blockOwnerDeletion") is True}
    return [
        ref for ref in _refs(new) if ref.get("blockOwnerDeletion") is True and ref.get("uid") not in blocking_before
    ]


def _forbidden(rtype: ResourceType, name: str, why: str) -> ApiError:
    """admission.NewForbidden: `<resource>.<group> "name" is forbidden: <why>`."""
    details: JsonObject = {"name": name, "kind": rtype.plural}
    if rtype.group:
        details["group"] = rtype.group
    return ApiError(403, "Forbidden", f'{rtype.qualified_plural} "{name}" is forbidden: {why}', details=details)


class OwnerReferencesPermissionEnforcement:
    def __init__(self, authorizer: Authorizer, find_kind: Any) -> None:
        self._authorizer = authorizer
        self._find_kind = find_kind  # (apiVersion, kind) -> ResourceType | None: the RESTMapper

    def __call__(
        self,
        rtype: ResourceType,
        obj: JsonObject,
        old: JsonObject | None,
        user: Identity | None,
        subresource: str | None,
    ) -> None:
        if user is None or ((rtype.group, rtype.plural), subresource) == (("", "pods"), "status"):
            return  # in-process writes; the plugin's default allow-list (pods/status)
        if not _changing(obj, old):
            return
        meta = obj.get("metadata") or {}
        name, namespace = meta.get("name", ""), meta.get("namespace", "")
        if old is not None:
            delete = Attributes(
                user,
                "delete",
                True,
                api_group=rtype.group,
                api_version=rtype.version,
                namespace=namespace,
                resource=rtype.plural,
                subresource=subresource or "",
                name=name,
            )
            allowed, reason = self._authorizer.authorize(delete)
            if not allowed:
                raise _forbidden(rtype, name, f"cannot set an ownerRef on a resource you can't delete: {reason}, <nil>")
        blocking = _new_blocking(obj, old)
        if not blocking:
            return
        finalize_anything = Attributes(
            user, "update", True, api_group="*", namespace="*", resource="*", subresource="finalizers", name="*"
        )
        if self._authorizer.authorize(finalize_anything)[0]:
            return
        for ref in blocking:
            owner_type = self._find_kind(ref.get("apiVersion", ""), ref.get("kind", ""))
            if owner_type is None:
                raise _forbidden(
                    rtype,
                    name,
                    "cannot set blockOwnerDeletion in this case because cannot find RESTMapping for APIVersion "
                    f"{ref.get('apiVersion', '')} Kind {ref.get('kind', '')}: no matches for kind "
                    f'"{ref.get("kind", "")}" in version "{ref.get("apiVersion", "")}"',
                )
            record = Attributes(
                user,
                "update",
                True,
                api_group=owner_type.group,
                api_version=owner_type.version,
                namespace=namespace,
                resource=owner_type.plural,
                subresource="finalizers",
                name=ref.get("name", ""),
            )
            allowed, reason = self._authorizer.authorize(record)
            if not allowed:
                raise _forbidden(
                    rtype,
                    name,
                    "cannot set blockOwnerDeletion if an ownerReference refers to a resource you can't set "
                    f"finalizers on: {reason}, <nil>",
                )
