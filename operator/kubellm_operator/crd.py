"""The LLMService CustomResourceDefinition and its field reference, both generated from the pydantic models.

pydantic writes JSON Schema (``$ref``/``$defs``, ``anyOf`` with null, ``additionalProperties: false``); an
apiserver wants a *structural* OpenAPI v3 schema. :func:`structural` translates one into the other:
references inlined, optional fields ``nullable``, quantities ``x-kubernetes-int-or-string``, no titles.
``kubellm crd`` prints :func:`crd_yaml`; ``crds/kubellm.dev_llmservices.yaml`` is that output, committed,
and a test fails when they differ. ``docs/api.md`` is :func:`api_reference`, kept current the same way.
"""

from __future__ import annotations

from typing import Any

import yaml

from kubellm_operator.api import (
    DNS_1035_LABEL,
    GROUP,
    KIND,
    PATTERN_MEANINGS,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    LLMService,
    LLMServiceSpec,
    LLMServiceStatus,
)
from kubellm_operator.status import CONDITION_MEANINGS

CRD_NAME = f"{PLURAL}.{GROUP}"
CRD_FILE = f"{GROUP}_{PLURAL}.yaml"  # the name under crds/, as controller-gen would spell it
CATEGORIES = ["kubellm"]

# JSON Schema keywords that structural OpenAPI v3 either forbids or kubellm does not need in the CRD.
_DROPPED = {"title", "$defs", "$schema"}


class SchemaError(ValueError):
    """The models produced a schema shape this translator does not know how to make structural."""


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline a ``$ref`` (and pydantic's ``allOf: [$ref]`` wrapper); the referring node's keys win."""
    if "allOf" in node:
        if len(node["allOf"]) != 1:
            raise SchemaError(f"allOf with {len(node['allOf'])} members cannot be made structural")
        node = {**node["allOf"][0], **{k: v for k, v in node.items() if k != "allOf"}}
    if "$ref" not in node:
        return node
    target = defs[node["$ref"].rsplit("/", 1)[-1]]
    return {**target, **{k: v for k, v in node.items() if k != "$ref"}}


def structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """One pydantic JSON-schema node (and everything below it) as a structural OpenAPI v3 schema node."""
    node = _resolve(node, defs)
    nullable = False
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        members = [m for m in node["anyOf"] if m.get("type") != "null"]
        if len(members) != 1:
            raise SchemaError(f"anyOf with {len(members)} non-null members cannot be made structural")
        nullable = len(members) < len(node["anyOf"])
        outer = {k: v for k, v in node.items() if k != "anyOf"}
        node = {**_resolve(members[0], defs), **outer}
    out: dict[str, Any] = {}
    if node.get("x-kubernetes-int-or-string"):
        # The apiserver's one allowed spelling: no type, anyOf integer/string (as controller-gen writes it).
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    elif "enum" in node or "const" in node:
        values = node["enum"] if "enum" in node else [node["const"]]
        out["type"] = node.get("type") or _json_type(values[0])
        out["enum"] = values
        if out["type"] == "string":
            # Bounds the apiserver's CEL cost estimate for rules that compare this field.
            out["maxLength"] = max(len(value) for value in values)
    elif "type" in node:
        out["type"] = node["type"]
    elif node.get("x-kubernetes-preserve-unknown-fields"):
        out["type"] = "object"
    else:
        raise SchemaError(f"schema node without a type: {sorted(node)}")
    if "description" in node:
        out["description"] = node["description"]
    if nullable:
        out["nullable"] = True
    for key, value in node.items():
        if key in out or key in _DROPPED or key in ("anyOf", "enum", "const", "type", "x-kubernetes-int-or-string"):
            continue
        if key == "default":
            if value is not None:
                out["default"] = value
        elif key == "properties":
            out["properties"] = {name: structural(child, defs) for name, child in value.items()}
        elif key == "items":
            out["items"] = structural(value, defs)
        elif key == "patternProperties":
            # Not structural: the values' schema becomes additionalProperties, the key pattern a CEL rule.
            if len(value) != 1:
                raise SchemaError("patternProperties with several patterns cannot be made structural")
            ((pattern, values),) = value.items()
            out["additionalProperties"] = structural(values, defs)
            out.setdefault("x-kubernetes-validations", []).append(
                {
                    "rule": f"self.all(k, k.matches({_cel_string(pattern)}))",
                    "message": f"every key must be {PATTERN_MEANINGS.get(pattern, 'matched by ' + pattern)}",
                }
            )
        elif key == "propertyNames":
            if "maxLength" in value:
                out.setdefault("x-kubernetes-validations", []).append(
                    {
                        "rule": f"self.all(k, size(k) <= {value['maxLength']})",
                        "message": f"keys must be at most {value['maxLength']} characters",
                    }
                )
        elif key == "additionalProperties":
            # `false` beside properties is not structural (the apiserver prunes or, with strict field validation,
            # rejects unknown fields instead); `true` is spelled x-kubernetes-preserve-unknown-fields.
            if isinstance(value, dict):
                out["additionalProperties"] = structural(value, defs)
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            # JSON Schema 2020 writes the bound itself; OpenAPI v3.0 a boolean beside minimum/maximum.
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out["x-kubernetes-int-or-string"] = True
    return out


def _cel_string(text: str) -> str:
    """A CEL string literal: a raw single-quoted string unless the text holds a quote."""
    if "'" in text:
        raise SchemaError(f"cannot quote {text!r} for CEL")
    return f"r'{text}'"


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "string"


def _model_schema(model: type[LLMServiceSpec] | type[LLMServiceStatus]) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return structural(schema, schema.get("$defs", {}))


def open_api_schema() -> dict[str, Any]:
    """The version's ``openAPIV3Schema``."""
    description = (LLMService.__doc__ or "").strip()
    return {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            # Only name and generateName may be constrained; the name becomes the Deployment's and Service's.
            "metadata": {
                "type": "object",
                "properties": {"name": {"type": "string", "maxLength": 63, "pattern": DNS_1035_LABEL}},
            },
            "spec": _model_schema(LLMServiceSpec),
            "status": _model_schema(LLMServiceStatus),
        },
    }


PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Model", "type": "string", "jsonPath": ".spec.model.name"},
    {"name": "Ready", "type": "string", "jsonPath": ".status.ready", "description": "ready/desired replicas"},
    {
        "name": "Desired",
        "type": "integer",
        "jsonPath": ".status.autoscaling.desiredReplicas",
        "description": "replicas the autoscaler asks for (spec.autoscaling)",
        # -o wide only: empty for LLMServices without autoscaling, which most are.
        "priority": 1,
    },
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Reason", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].reason'},
    {"name": "Progress", "type": "string", "jsonPath": ".status.loading.message", "description": "model download"},
    {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition object."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {
                        "status": {},
                        # `kubectl scale` and an HPA change spec.replicas; the operator reports the pods' count
                        # and selector in status.
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": open_api_schema()},
                }
            ],
        },
    }


class _PlainDumper(yaml.SafeDumper):
    """Writes shared sub-objects out in full: kubectl reads anchors, but people and diff tools read text."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(documents: list[dict[str, Any]]) -> str:
    """Multi-document YAML in the order the dicts were built (stable for the same input)."""
    return yaml.dump_all(documents, Dumper=_PlainDumper, sort_keys=False, default_flow_style=False, width=120)


def crd_yaml() -> str:
    return "# Generated by `kubellm crd` from kubellm_operator.api; do not edit.\n" + dump_yaml([crd()])


# ---------------------------------------------------------------------------------------------------------
# docs/api.md
# ---------------------------------------------------------------------------------------------------------


def _type_of(node: dict[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "quantity"
    if "enum" in node:
        return " \\| ".join(f"`{value}`" for value in node["enum"])
    kind = str(node.get("type", "object"))
    if kind == "array":
        return f"list of {_type_of(node['items'])}"
    if kind == "object" and "additionalProperties" in node:
        return f"map of {_type_of(node['additionalProperties'])}"
    return kind


def _constraints(node: dict[str, Any]) -> str:
    parts = []
    if "minimum" in node:
        parts.append(f"≥ {node['minimum']}")
    if "maximum" in node:
        parts.append(f"≤ {node['maximum']}")
    if "maxLength" in node and "enum" not in node:
        parts.append(f"≤ {node['maxLength']} chars")
    if "maxItems" in node:
        parts.append(f"≤ {node['maxItems']} items")
    return ", ".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _sections(path: str, node: dict[str, Any], out: list[str]) -> None:
    if node.get("type") == "array" and "properties" in node.get("items", {}):
        _sections(path + "[]", node["items"], out)
        return
    properties = node.get("properties")
    if not properties:
        return
    required = set(node.get("required", []))
    out.append(f"\n### `{path}`\n")
    if node.get("description"):
        out.append(_cell(node["description"]) + "\n")
    out.append("| Field | Type | Default | Description |")
    out.append("|---|---|---|---|")
    for name, child in properties.items():
        default = f"`{child['default']}`" if "default" in child else ("required" if name in required else "")
        limits = _constraints(child)
        notes = child.get("description", "") + (f" ({limits})" if limits else "")
        out.append(f"| `{name}` | {_type_of(child)} | {default} | {_cell(notes)} |")
    rules = node.get("x-kubernetes-validations", [])
    for child_name, child in properties.items():
        rules = rules + [{**rule, "on": child_name} for rule in child.get("x-kubernetes-validations", [])]
    if rules:
        out.append("\nChecked by the apiserver (CEL) and by the model:\n")
        out.extend(f"- {_cell(rule['message'])}" + (f" (`{rule['on']}`)" if "on" in rule else "") for rule in rules)
    for name, child in properties.items():
        _sections(f"{path}.{name}", child, out)


def api_reference() -> str:
    """docs/api.md: every LLMService field, generated from the CRD schema (itself generated from the models)."""
    schema = open_api_schema()
    lines = [
        "# LLMService API reference",
        "",
        "<!-- Generated by kubellm_operator.crd.api_reference() from kubellm_operator/api.py; do not edit. -->",
        "",
        f"`apiVersion: {GROUP}/{VERSION}`, `kind: {KIND}` (plural `{PLURAL}`, short name `{SHORT_NAMES[0]}`, "
        "namespaced). Quantities are Kubernetes quantities (`30Gi`, `500m`, `2`); write them as strings or "
        "integers, never as floats. Unknown fields are rejected. The `/scale` subresource maps to "
        "`spec.replicas`, so `kubectl scale llms NAME --replicas=N` and an HPA work (except with `spec.autoscaling`, "
        "where the operator sets the count from load).",
        "",
        "## Spec",
    ]
    _sections("spec", schema["properties"]["spec"], lines)
    lines += ["", "## Status", "", "Written by the operator; read it with `kubectl get llms -o yaml`."]
    _sections("status", schema["properties"]["status"], lines)
    lines += [
        "",
        "### Condition types",
        "",
        "Every status carries each of them (docs/operator.md lists the reasons).",
        "",
    ]
    lines += ["| Type | Meaning |", "|---|---|"]
    lines += [f"| `{kind}` | {_cell(meaning)} |" for kind, meaning in CONDITION_MEANINGS.items()]
    return "\n".join(lines) + "\n"
