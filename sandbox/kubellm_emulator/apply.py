"""Server-side apply: merge an applied configuration and drop the fields its manager applied before but no longer.

Field ownership is tracked per manager as a set of field paths, stored in `managedFields[].fieldsV1` in the
apiserver's format (`f:spec`, `k:{"name":"main"}`, `v:"x"`, `.`). Lists merge by their keys: the built-in kinds'
merge keys (as strategic merge patch), and a CRD's `x-kubernetes-list-type: map|set`; other lists are atomic.
Conflicts between managers are not emulated (every apply behaves as `force=true`), and fields that another manager
took over with an update are not protected from removal.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable
from typing import Any

from kubellm_emulator.patching import merge_key_for

JsonObject = dict[str, Any]
FieldPath = tuple[str, ...]
ATOMIC = object()
# How a list field merges: its key field names (a map list), () for a set of primitives, or ATOMIC.
ListRule = Callable[[FieldPath, str], Any]

# Metadata fields an applied configuration can own; the others are identity or server-set.
_OWNED_METADATA = ("labels", "annotations", "finalizers", "ownerReferences")


def builtin_list_rule(path: FieldPath, field: str) -> Any:
    parent = path[-1][2:] if path and path[-1].startswith("f:") else ""
    if path and path[-1].startswith("k:"):
        parent = path[-2][2:] if len(path) > 1 else ""
    key = merge_key_for(parent, field)
    if key is None:
        return ()
    if isinstance(key, str):
        return (key,)
    return ATOMIC


def schema_list_rule(schema: JsonObject | None) -> ListRule:
    """List rules from a CRD's structural schema (`x-kubernetes-list-type`, `x-kubernetes-list-map-keys`)."""

    def node(path: FieldPath) -> JsonObject | None:
        current = schema
        for segment in path:
            if current is None:
                return None
            if segment.startswith("f:"):
                properties = current.get("properties") or {}
                additional = current.get("additionalProperties")
                current = properties.get(segment[2:]) or (additional if isinstance(additional, dict) else None)
            elif segment.startswith(("k:", "v:")):
                current = current.get("items")
        return current

    def rule(path: FieldPath, field: str) -> Any:
        target = node((*path, f"f:{field}"))
        list_type = (target or {}).get("x-kubernetes-list-type")
        if list_type == "map":
            return tuple((target or {}).get("x-kubernetes-list-map-keys") or ())
        if list_type == "set":
            return ()
        return ATOMIC

    return rule


def _item_segment(item: Any, keys: tuple[str, ...]) -> str:
    if keys and isinstance(item, dict):
        return "k:" + json.dumps({key: item.get(key) for key in keys}, separators=(",", ":"), sort_keys=True)
    return "v:" + json.dumps(item, separators=(",", ":"), sort_keys=True)


def field_paths(config: JsonObject, rule: ListRule) -> set[FieldPath]:
    """The leaf field paths an applied configuration sets."""
    paths: set[FieldPath] = set()

    def walk(value: Any, path: FieldPath) -> None:
        if isinstance(value, dict) and value:
            for key, child in value.items():
                walk(child, (*path, f"f:{key}"))
            return
        if isinstance(value, list) and path and path[-1].startswith("f:"):
            how = rule(path[:-1], path[-1][2:])
            if how is not ATOMIC:
                for item in value:
                    item_path = (*path, _item_segment(item, how))
                    paths.add((*item_path, "."))
                    if how and isinstance(item, dict):
                        walk(item, item_path)
                return
        paths.add(path)

    for key, value in config.items():
        if key == "metadata" and isinstance(value, dict):
            for field in _OWNED_METADATA:
                if field in value:
                    walk(value[field], ("f:metadata", f"f:{field}"))
        elif key not in ("apiVersion", "kind", "status"):
            walk(value, (f"f:{key}",))
    return paths


def encode_fields(paths: Iterable[FieldPath]) -> JsonObject:
    tree: JsonObject = {}
    for path in sorted(paths):
        node = tree
        for segment in path:
            node = node.setdefault(segment, {})
    return tree


def decode_fields(tree: JsonObject) -> set[FieldPath]:
    paths: set[FieldPath] = set()

    def walk(node: JsonObject, path: FieldPath) -> None:
        if not node:
            if path:
                paths.add(path)
            return
        for segment, child in node.items():
            walk(child, (*path, segment))

    walk(tree, ())
    return paths


def _remove(obj: Any, path: FieldPath) -> None:
    """Removes what `path` names from `obj`, if it is there."""
    container: Any = obj
    for index, segment in enumerate(path):
        last = index == len(path) - 1
        if segment.startswith("f:"):
            if not isinstance(container, dict) or segment[2:] not in container:
                return
            if last:
                del container[segment[2:]]
                return
            container = container[segment[2:]]
        elif segment.startswith(("k:", "v:")):
            if not isinstance(container, list):
                return
            if segment.startswith("k:"):
                wanted = json.loads(segment[2:])
                matches = [
                    i
                    for i, item in enumerate(container)
                    if isinstance(item, dict) and all(item.get(k) == v for k, v in wanted.items())
                ]
            else:
                value = json.loads(segment[2:])
                matches = [i for i, item in enumerate(container) if item == value]
            if not matches:
                return
            if last or path[index + 1] == ".":
                del container[matches[0]]
                return
            container = container[matches[0]]
        else:
            return


def _merge(current: Any, applied: Any, rule: ListRule, path: FieldPath) -> Any:
    if isinstance(applied, dict) and isinstance(current, dict):
        merged = copy.deepcopy(current)
        for key, value in applied.items():
            merged[key] = _merge(current.get(key), value, rule, (*path, f"f:{key}"))
        return merged
    if isinstance(applied, list) and isinstance(current, list) and path and path[-1].startswith("f:"):
        how = rule(path[:-1], path[-1][2:])
        if how is ATOMIC:
            return copy.deepcopy(applied)
        merged_list = copy.deepcopy(current)
        for item in applied:
            segment = _item_segment(item, how)
            index = next((i for i, old in enumerate(merged_list) if _item_segment(old, how) == segment), None)
            if index is None:
                merged_list.append(copy.deepcopy(item))
            elif how and isinstance(item, dict):
                merged_list[index] = _merge(merged_list[index], item, rule, (*path, segment))
        return merged_list
    return copy.deepcopy(applied)


def server_side_apply(
    current: JsonObject, applied: JsonObject, previously_owned: set[FieldPath], rule: ListRule
) -> tuple[JsonObject, set[FieldPath]]:
    """`current` with `applied` merged in and the manager's dropped fields removed; and its new field set."""
    owned = field_paths(applied, rule)
    kept_prefixes = {path[:length] for path in owned for length in range(1, len(path) + 1)}
    result = copy.deepcopy(current)
    for path in sorted(previously_owned - owned, key=len):
        # Remove at the highest level the new configuration no longer mentions (a whole dropped list item).
        # Metadata itself is never removed, only the owned fields in it (labels, annotations, ...).
        shortest = 2 if path[0] == "f:metadata" else 1
        cut = next(
            (path[:length] for length in range(shortest, len(path) + 1) if path[:length] not in kept_prefixes), None
        )
        if cut is not None:
            _remove(result, cut[:-1] if cut[-1] == "." else cut)
    merged = _merge(result, {k: v for k, v in applied.items() if k != "status"}, rule, ())
    return merged, owned
