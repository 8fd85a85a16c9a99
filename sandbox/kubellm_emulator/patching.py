"""The apiserver's patch types: JSON patch (RFC 6902), JSON merge patch (RFC 7386), strategic merge patch.

Strategic merge patch knows the built-in kinds' merge keys (the Go structs' `patchMergeKey` tags) by field name and
honours its directives (`$patch`, `$setElementOrder/…`, `$deleteFromPrimitiveList/…`, `$retainKeys`), which are never
stored.
"""

from __future__ import annotations

import copy
from typing import Any

JsonObject = dict[str, Any]


class PatchError(Exception):
    """A patch that cannot be applied; `test_failed` marks a failed JSON-patch `test` operation."""

    def __init__(self, message: str, *, test_failed: bool = False) -> None:
        super().__init__(message)
        self.test_failed = test_failed


# ---------------------------------------------------------------------------------------------------------------
# JSON patch


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _split_pointer(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PatchError(f"invalid JSON pointer {pointer!r}: must start with '/'")
    return [_unescape(token) for token in pointer[1:].split("/")]


def _resolve_parent(document: Any, tokens: list[str], pointer: str) -> Any:
    current = document
    for token in tokens[:-1]:
        current = _child(current, token, pointer)
    return current


def _child(container: Any, token: str, pointer: str) -> Any:
    if isinstance(container, dict):
        if token not in container:
            raise PatchError(f"jsonpatch: path {pointer!r} not found: missing key {token!r}")
        return container[token]
    if isinstance(container, list):
        index = _list_index(container, token, pointer, allow_end=False)
        return container[index]
    raise PatchError(f"jsonpatch: path {pointer!r} crosses a non-container value")


def _list_index(container: list[Any], token: str, pointer: str, *, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return len(container)
    if not token.isdigit():
        raise PatchError(f"jsonpatch: invalid array index {token!r} in {pointer!r}")
    index = int(token)
    limit = len(container) if allow_end else len(container) - 1
    if index > limit:
        raise PatchError(f"jsonpatch: array index {index} out of bounds in {pointer!r}")
    return index


def _get(document: Any, pointer: str) -> Any:
    current = document
    for token in _split_pointer(pointer):
        current = _child(current, token, pointer)
    return current


def _add(document: Any, pointer: str, value: Any) -> Any:
    tokens = _split_pointer(pointer)
    if not tokens:
        return value
    parent = _resolve_parent(document, tokens, pointer)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_list_index(parent, last, pointer, allow_end=True), value)
    else:
        raise PatchError(f"jsonpatch: cannot add at {pointer!r}: the parent is not a container")
    return document


def _remove(document: Any, pointer: str) -> Any:
    tokens = _split_pointer(pointer)
    if not tokens:
        raise PatchError("jsonpatch: cannot remove the whole document")
    parent = _resolve_parent(document, tokens, pointer)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"jsonpatch: remove: path {pointer!r} not found")
        del parent[last]
    elif isinstance(parent, list):
        del parent[_list_index(parent, last, pointer, allow_end=False)]
    else:
        raise PatchError(f"jsonpatch: cannot remove at {pointer!r}: the parent is not a container")
    return document


def apply_json_patch(document: JsonObject, operations: Any) -> JsonObject:
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a list of operations")
    result: Any = copy.deepcopy(document)
    for operation in operations:
        if not isinstance(operation, dict) or "op" not in operation or "path" not in operation:
            raise PatchError(f"jsonpatch: malformed operation {operation!r}")
        op, path = operation["op"], operation["path"]
        if op == "add":
            result = _add(result, path, copy.deepcopy(operation.get("value")))
        elif op == "remove":
            result = _remove(result, path)
        elif op == "replace":
            _get(result, path)  # replace requires the target to exist
            result = _add(_remove(result, path), path, copy.deepcopy(operation.get("value")))
        elif op == "move":
            value = _get(result, operation["from"])
            result = _add(_remove(result, operation["from"]), path, value)
        elif op == "copy":
            result = _add(result, path, copy.deepcopy(_get(result, operation["from"])))
        elif op == "test":
            try:
                actual = _get(result, path)
            except PatchError as error:
                raise PatchError(f"testing value {path} failed: {error}", test_failed=True) from None
            if actual != operation.get("value"):
                raise PatchError(f"testing value {path} failed: test failed", test_failed=True)
        else:
            raise PatchError(f"jsonpatch: unknown operation {op!r}")
    if not isinstance(result, dict):
        raise PatchError("jsonpatch: the patched document is not an object")
    return result


# ---------------------------------------------------------------------------------------------------------------
# JSON merge patch


def apply_merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


# ---------------------------------------------------------------------------------------------------------------
# Strategic merge patch

# Merge keys of the built-in kinds' lists, by (parent field, field); "*" matches any parent.
# A field listed with None is a primitive list merged as a set (patchStrategy:"merge" without a key).
_MERGE_KEYS: dict[tuple[str, str], str | None] = {
    ("*", "containers"): "name",
    ("*", "initContainers"): "name",
    ("*", "ephemeralContainers"): "name",
    ("*", "env"): "name",
    ("*", "volumes"): "name",
    ("*", "volumeMounts"): "mountPath",
    ("*", "volumeDevices"): "devicePath",
    ("*", "imagePullSecrets"): "name",
    ("*", "hostAliases"): "ip",
    ("*", "topologySpreadConstraints"): "topologyKey",
    ("*", "resourceClaims"): "name",
    ("*", "conditions"): "type",
    ("*", "ownerReferences"): "uid",
    ("*", "finalizers"): None,
    ("*", "ports"): "containerPort",
    ("spec", "ports"): "port",  # Service.spec.ports; containers' ports sit under a container, not under spec
    ("*", "taints"): "key",
}
_NO_KEY = object()


def merge_key_for(parent: str, field: str) -> Any:
    """The merge key of a list field, None for a merged primitive list, `_NO_KEY` for a replaced (atomic) list."""
    if (parent, field) in _MERGE_KEYS:
        return _MERGE_KEYS[(parent, field)]
    return _MERGE_KEYS.get(("*", field), _NO_KEY)


def apply_strategic_merge_patch(target: JsonObject, patch: JsonObject) -> JsonObject:
    if not isinstance(patch, dict):
        raise PatchError("a strategic merge patch must be a JSON object")
    result = _smp_map(copy.deepcopy(target), patch, parent="")
    return strip_directives(result)


def _smp_map(original: Any, patch: JsonObject, parent: str) -> Any:
    original = original if isinstance(original, dict) else {}
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return None
    retain_keys = patch.get("$retainKeys")
    if isinstance(retain_keys, list):
        original = {k: v for k, v in original.items() if k in retain_keys}
    for key, value in patch.items():
        if key.startswith("$setElementOrder/") or key in ("$patch", "$retainKeys"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(original.get(field), list) and isinstance(value, list):
                original[field] = [item for item in original[field] if item not in value]
            continue
        if value is None:
            original.pop(key, None)
        elif isinstance(value, dict):
            merged = _smp_map(original.get(key), value, parent=key)
            if merged is None:
                original.pop(key, None)
            else:
                original[key] = merged
        elif isinstance(value, list):
            original[key] = _smp_list(original.get(key), value, parent=parent, field=key)
        else:
            original[key] = copy.deepcopy(value)
    for key, order in patch.items():
        if key.startswith("$setElementOrder/") and isinstance(order, list):
            field = key.split("/", 1)[1]
            if isinstance(original.get(field), list):
                original[field] = _reorder(original[field], order, merge_key_for(parent, field))
    return original


def _smp_list(original: Any, patch: list[Any], parent: str, field: str) -> list[Any]:
    original = original if isinstance(original, list) else []
    key = merge_key_for(parent, field)
    if any(isinstance(item, dict) and item.get("$patch") == "replace" for item in patch):
        return [copy.deepcopy(item) for item in patch if not (isinstance(item, dict) and "$patch" in item)]
    if key is _NO_KEY:
        return copy.deepcopy(patch)
    if key is None:  # a primitive list merged as a set
        merged = list(original)
        for item in patch:
            if item not in merged:
                merged.append(copy.deepcopy(item))
        return merged
    merged = [copy.deepcopy(item) for item in original]
    for item in patch:
        if not isinstance(item, dict):
            merged.append(copy.deepcopy(item))
            continue
        index = next(
            (
                i
                for i, existing in enumerate(merged)
                if isinstance(existing, dict) and existing.get(key) == item.get(key)
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                del merged[index]
            continue
        if index is None:
            merged.append(_smp_map({}, item, parent=field))
        else:
            merged[index] = _smp_map(merged[index], item, parent=field)
    return merged


def _reorder(items: list[Any], order: list[Any], key: Any) -> list[Any]:
    def identity(item: Any) -> Any:
        return item.get(key) if isinstance(item, dict) and isinstance(key, str) else item

    wanted = [identity(entry) for entry in order]
    ordered = [item for ident in wanted for item in items if identity(item) == ident]
    rest = [item for item in items if identity(item) not in wanted]
    return ordered + rest


def strip_directives(value: Any) -> Any:
    """Removes strategic-merge directives so that they are never stored."""
    if isinstance(value, dict):
        return {
            k: strip_directives(v)
            for k, v in value.items()
            if not (k.startswith("$setElementOrder/") or k.startswith("$deleteFromPrimitiveList/"))
            and k not in ("$patch", "$retainKeys")
        }
    if isinstance(value, list):
        return [strip_directives(item) for item in value]
    return value
