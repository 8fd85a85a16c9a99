"""The resource types the emulator serves: built-in kinds and those that CustomResourceDefinitions declare."""

from __future__ import annotations

import dataclasses
from typing import Any

KUBERNETES_VERSION = "v1.32.0"  # the version the emulator reports (/version, /openapi, its Nodes' kubelets)
ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclasses.dataclass(frozen=True)
class ScaleSubresource:
    """Where `/scale` reads and writes replicas (JSON paths in the CRD's `.spec.subresources.scale` form)."""

    spec_replicas_path: str = ".spec.replicas"
    status_replicas_path: str = ".status.replicas"
    label_selector_path: str | None = None


@dataclasses.dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    status_subresource: bool = False
    scale: ScaleSubresource | None = None
    printer_columns: tuple[dict[str, Any], ...] = ()
    schema: dict[str, Any] | None = None  # a CRD version's openAPIV3Schema; None for built-in kinds
    custom: bool = False
    extra_subresources: tuple[str, ...] = ()  # served only for discovery (e.g. pods/log is not emulated)
    # A DELETE that removes the object answers it rather than a Status: the apiserver's registries with
    # `ReturnDeletedObject` (what the kubernetes client's delete_* methods declare they return); not custom resources.
    delete_returns_object: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version(self) -> str:
        return self.api_version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def singular_name(self) -> str:
        return self.singular or self.kind.lower()

    @property
    def qualified_plural(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def subresources(self) -> list[str]:
        names = list(self.extra_subresources)
        if self.status_subresource:
            names.append("status")
        if self.scale is not None:
            names.append("scale")
        return names

    def discovery(self) -> list[dict[str, Any]]:
        """The APIResourceList entries for this type and its subresources."""
        entries: list[dict[str, Any]] = [
            {
                "name": self.plural,
                "singularName": self.singular_name,
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": list(ALL_VERBS),
                **({"shortNames": list(self.short_names)} if self.short_names else {}),
                **({"categories": list(self.categories)} if self.categories else {}),
            }
        ]
        for sub in self.subresources():
            sub_kind = "Scale" if sub == "scale" else self.kind
            entry: dict[str, Any] = {
                "name": f"{self.plural}/{sub}",
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": sub_kind,
                "verbs": ["get", "patch", "update"] if sub in ("status", "scale") else ["get"],
            }
            if sub == "scale":
                entry["group"] = "autoscaling"
                entry["version"] = "v1"
            entries.append(entry)
        return entries


def _core(plural: str, kind: str, namespaced: bool = True, **extra: Any) -> ResourceType:
    return ResourceType(group="", version="v1", plural=plural, kind=kind, namespaced=namespaced, **extra)


def _apps(plural: str, kind: str, short_name: str) -> ResourceType:
    """An apps/v1 workload: status, and a `/scale` subresource over its replicas and selector."""
    return ResourceType(
        group="apps",
        version="v1",
        plural=plural,
        kind=kind,
        namespaced=True,
        short_names=(short_name,),
        categories=("all",),
        status_subresource=True,
        scale=ScaleSubresource(".spec.replicas", ".status.replicas", ".status.selector"),
    )


BUILTIN_TYPES: tuple[ResourceType, ...] = (
    _core("namespaces", "Namespace", namespaced=False, short_names=("ns",), status_subresource=True),
    _core(
        "nodes", "Node", namespaced=False, short_names=("no",), status_subresource=True, extra_subresources=("proxy",)
    ),
    _core(
        "pods",
        "Pod",
        short_names=("po",),
        categories=("all",),
        status_subresource=True,
        extra_subresources=("log",),
        delete_returns_object=True,
    ),
    _core(
        "services",
        "Service",
        short_names=("svc",),
        categories=("all",),
        status_subresource=True,
        delete_returns_object=True,
    ),
    _core("events", "Event", short_names=("ev",)),
    _core("secrets", "Secret"),
    _core("configmaps", "ConfigMap", short_names=("cm",)),
    _core("serviceaccounts", "ServiceAccount", short_names=("sa",), delete_returns_object=True),
    _core(
        "persistentvolumeclaims",
        "PersistentVolumeClaim",
        short_names=("pvc",),
        status_subresource=True,
        delete_returns_object=True,
    ),
    _core(
        "persistentvolumes",
        "PersistentVolume",
        namespaced=False,
        short_names=("pv",),
        status_subresource=True,
        delete_returns_object=True,
    ),
    _core("endpoints", "Endpoints", short_names=("ep",)),
    _core("resourcequotas", "ResourceQuota", short_names=("quota",), status_subresource=True),
    _core("limitranges", "LimitRange", short_names=("limits",)),
    _apps("deployments", "Deployment", "deploy"),
    _apps("replicasets", "ReplicaSet", "rs"),
    _apps("statefulsets", "StatefulSet", "sts"),
    ResourceType(
        group="events.k8s.io", version="v1", plural="events", kind="Event", namespaced=True, short_names=("ev",)
    ),
    ResourceType(group="coordination.k8s.io", version="v1", plural="leases", kind="Lease", namespaced=True),
    ResourceType(
        group="apiextensions.k8s.io",
        version="v1",
        plural="customresourcedefinitions",
        kind="CustomResourceDefinition",
        namespaced=False,
        short_names=("crd", "crds"),
        categories=("api-extensions",),
        status_subresource=True,
    ),
    ResourceType(group="rbac.authorization.k8s.io", version="v1", plural="roles", kind="Role", namespaced=True),
    ResourceType(
        group="rbac.authorization.k8s.io", version="v1", plural="rolebindings", kind="RoleBinding", namespaced=True
    ),
    ResourceType(
        group="rbac.authorization.k8s.io", version="v1", plural="clusterroles", kind="ClusterRole", namespaced=False
    ),
    ResourceType(
        group="rbac.authorization.k8s.io",
        version="v1",
        plural="clusterrolebindings",
        kind="ClusterRoleBinding",
        namespaced=False,
    ),
    ResourceType(
        group="policy",
        version="v1",
        plural="poddisruptionbudgets",
        kind="PodDisruptionBudget",
        namespaced=True,
        short_names=("pdb",),
        status_subresource=True,
    ),
)

# Events live in two API groups but are one resource: both endpoints read and write the same objects.
STORAGE_ALIASES: dict[tuple[str, str], tuple[str, str]] = {("events.k8s.io", "events"): ("", "events")}


def storage_key(group: str, plural: str) -> tuple[str, str]:
    return STORAGE_ALIASES.get((group, plural), (group, plural))


def types_from_crd(crd: dict[str, Any]) -> list[ResourceType]:
    """The served versions of a CustomResourceDefinition (apiextensions.k8s.io/v1) as resource types."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group = spec.get("group", "")
    namespaced = spec.get("scope", "Namespaced") == "Namespaced"
    types: list[ResourceType] = []
    for version in spec.get("versions") or []:
        if not version.get("served", True):
            continue
        subresources = version.get("subresources") or {}
        scale_spec = subresources.get("scale")
        scale = (
            ScaleSubresource(
                scale_spec.get("specReplicasPath", ".spec.replicas"),
                scale_spec.get("statusReplicasPath", ".status.replicas"),
                scale_spec.get("labelSelectorPath"),
            )
            if isinstance(scale_spec, dict)
            else None
        )
        types.append(
            ResourceType(
                group=group,
                version=version["name"],
                plural=names.get("plural", ""),
                kind=names.get("kind", ""),
                namespaced=namespaced,
                singular=names.get("singular", "") or names.get("kind", "").lower(),
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                status_subresource="status" in subresources,
                scale=scale,
                printer_columns=tuple(version.get("additionalPrinterColumns") or ()),
                schema=(version.get("schema") or {}).get("openAPIV3Schema"),
                custom=True,
            )
        )
    return types
