"""`/openapi/v3` documents, enough for kubectl to detect server-side field validation and skip client-side schemas.

kubectl's default `--validate=strict` asks the OpenAPI v3 document of a group-version whether the PATCH operation of
the kind accepts the `fieldValidation` parameter; when it does, kubectl sends `fieldValidation=Strict` and leaves the
validation to the server (the emulator's admission). Strategic merge patch is advertised for no kind, so kubectl
builds its patches from the compiled-in types (built-ins) or as JSON merge patches (custom resources), as it does
against a real server. `/openapi/v2` is not served (kubectl's v2 client wants protobuf), which kubectl tolerates.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from kubellm_emulator.resources import KUBERNETES_VERSION, ResourceType

JsonObject = dict[str, Any]
_PATCH_TYPES = ("application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml")
_QUERY_PARAMS = ("dryRun", "fieldManager", "fieldValidation", "force")


def _gv_path(rtype: ResourceType) -> str:
    return f"apis/{rtype.group}/{rtype.version}" if rtype.group else f"api/{rtype.version}"


def _item_path(rtype: ResourceType) -> str:
    namespace = "/namespaces/{namespace}" if rtype.namespaced else ""
    return f"/{_gv_path(rtype)}{namespace}/{rtype.plural}/{{name}}"


def _schema_name(rtype: ResourceType) -> str:
    group = ".".join(reversed(rtype.group.split("."))) if rtype.group else "io.k8s.api.core"
    return f"{group}.{rtype.version}.{rtype.kind}"


def group_version_document(types: list[ResourceType]) -> JsonObject:
    paths: JsonObject = {}
    schemas: JsonObject = {}
    for rtype in types:
        gvk = {"group": rtype.group, "version": rtype.version, "kind": rtype.kind}
        reference = {"$ref": f"#/components/schemas/{_schema_name(rtype)}"}
        paths[_item_path(rtype)] = {
            "patch": {
                "operationId": f"patch{rtype.kind}",
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": gvk,
                "parameters": [
                    {"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
                    for name in _QUERY_PARAMS
                ],
                "requestBody": {"content": {kind: {"schema": {"type": "object"}} for kind in _PATCH_TYPES}},
                "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": reference}}}},
            }
        }
        schema: JsonObject = dict(rtype.schema) if rtype.schema else {"type": "object"}
        schema["x-kubernetes-group-version-kind"] = [gvk]
        schemas[_schema_name(rtype)] = schema
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": KUBERNETES_VERSION},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def openapi_document(store: Any, path: str, query: Any) -> JsonObject | None:
    """The document at `path` (/openapi/v3 or /openapi/v3/<api|apis/group>/<version>), None when there is none."""
    types: list[ResourceType] = store.types()
    by_gv: dict[str, list[ResourceType]] = {}
    for rtype in types:
        by_gv.setdefault(_gv_path(rtype), []).append(rtype)
    if path == "/openapi/v3":
        documents = {gv: group_version_document(members) for gv, members in sorted(by_gv.items())}
        return {
            "paths": {
                gv: {
                    "serverRelativeURL": f"/openapi/v3/{gv}?hash="
                    + hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:32].upper()
                }
                for gv, document in documents.items()
            }
        }
    prefix = "/openapi/v3/"
    if path.startswith(prefix) and path[len(prefix) :] in by_gv:
        return group_version_document(by_gv[path[len(prefix) :]])
    return None
