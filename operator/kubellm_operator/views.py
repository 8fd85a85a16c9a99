"""What the watches hold, as a pass reads it: the Node book (Node facts, kubelet summaries and the storage the
pods bound to each node request) and the watch view of kubellm's children and pods.

Kopf's indexes are the source; nothing here calls the API.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from kubellm_operator import render
from kubellm_operator.storage import NodeFacts, pod_ephemeral_request, summary_available
from kubellm_operator.workqueue import Key


class NodeBook:
    """The latest Node facts (from the Kopf Node index) merged with the latest kubelet summaries."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._facts: dict[str, NodeFacts] = {}
        self._summaries: dict[str, tuple[int | None, int | None]] = {}
        self._requested: dict[str, tuple[tuple[str, int], ...]] = {}

    def replace(self, index: Mapping[str, Iterable[NodeFacts]]) -> bool:
        """The Node facts from the index; True when they changed (a heartbeat alone changes none of them)."""
        facts = {name: next(iter(store)) for name, store in index.items() if store}
        with self._lock:
            changed = facts != self._facts
            self._facts = facts
        return changed

    def replace_pods(self, index: Mapping[str, Iterable[tuple[str, int]]]) -> bool:
        """The ephemeral-storage requests of the pods bound to each node; True when they changed."""
        requested = {node: tuple(sorted(uses)) for node, uses in index.items() if uses}
        with self._lock:
            changed = requested != self._requested
            self._requested = requested
        return changed

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._facts)

    def set_summary(self, name: str, summary: Mapping[str, Any] | None) -> bool:
        """Remember a node's summary (None forgets it); True when its free space changed (whether that changes any
        LLMService's status is for :meth:`Operator.reevaluate_storage` to say: a change of a few bytes can cross
        the GiB a status shows)."""
        available = summary_available(summary) if summary is not None else (None, None)
        with self._lock:
            before = self._summaries.get(name, (None, None))
            if summary is None:
                self._summaries.pop(name, None)
            else:
                self._summaries[name] = available
        return before != available

    def facts(self) -> list[NodeFacts]:
        with self._lock:
            merged = []
            for name, facts in self._facts.items():
                fs, image_fs = self._summaries.get(name, (None, None))
                merged.append(
                    dataclasses.replace(
                        facts,
                        fs_available=fs,
                        image_fs_available=image_fs,
                        requested=self._requested.get(name, ()),
                    )
                )
            return merged


ChildKey = tuple[str, str, str]  # (kind, namespace, name) of a child


class WatchView:
    """kubellm's children and pods as the watches hold them (Kopf indexes, attached by the first handler call),
    corrected by what kubellm itself wrote and the watch has not delivered yet.

    Kopf runs no handler before every index has its initial listing, and every pass is queued by a handler, so a
    pass never sees a half-filled view. A child written by a pass comes back from the write's response: the watch
    event of that write may arrive after the next pass starts; until the watch delivers any newer state of the
    child, the response stands in for it. A child deleted by hand leaves the index, and the next pass re-creates it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._children: Mapping[str, Mapping[Key, Iterable[Mapping[str, Any]]]] | None = None
        self._pods: Mapping[Key, Iterable[Mapping[str, Any]]] | None = None
        self._written: dict[ChildKey, tuple[str | None, Mapping[str, Any]]] = {}

    def attach(
        self,
        children: Mapping[str, Mapping[Key, Iterable[Mapping[str, Any]]]],
        pods: Mapping[Key, Iterable[Mapping[str, Any]]],
    ) -> None:
        self._children, self._pods = children, pods

    @property
    def attached(self) -> bool:
        return self._children is not None and self._pods is not None

    def child(self, key: ChildKey) -> Mapping[str, Any] | None:
        """A child (or, as kind "LLMService", the LLMService itself) as the watch holds it, or as kubellm's last
        write left it while the watch has not delivered that write."""
        if self._children is None:
            raise RuntimeError("a pass ran before any Kopf handler attached the watch indexes")
        store = self._children[key[0]].get((key[1], key[2]))
        live = next(iter(store), None) if store else None
        with self._lock:
            written = self._written.get(key)
        if written is not None and not _caught_up(_resource_version(live), written[0], written[1]):
            return written[1]  # the watch has not delivered kubellm's own write yet
        return live

    def pods(self, key: Key) -> list[dict[str, Any]]:
        if self._pods is None:
            raise RuntimeError("a pass ran before any Kopf handler attached the watch indexes")
        store = self._pods.get(key)
        # Sorted by name, as the API lists them: the status is the same however the events arrived.
        return sorted((copy.deepcopy(dict(p)) for p in store or ()), key=lambda p: p["metadata"]["name"])

    def wrote(self, key: ChildKey, before: Mapping[str, Any] | None, response: Mapping[str, Any]) -> None:
        with self._lock:
            self._written[key] = (_resource_version(before), response)

    def seen(self, key: ChildKey, resource_version: str | None) -> None:
        """The watch delivered a state of the object: from kubellm's write on, the watch is the truth again."""
        with self._lock:
            written = self._written.get(key)
            if written is not None and _caught_up(resource_version, written[0], written[1]):
                del self._written[key]


def _caught_up(seen: str | None, before: str | None, written: Mapping[str, Any]) -> bool:
    """Whether a state the watch delivered (``seen``) is kubellm's write or later. A watch delivers the states of
    an object in order, and resourceVersions are etcd revisions, which increase (read as numbers when they are);
    an opaque one counts as later when it is not the one the write replaced. Another write of someone else's
    between kubellm's read and its write (Kopf's annotation patch) is then older, not newer."""
    after = _resource_version(written)
    if seen is None or after is None:
        return seen != before
    if seen == after:
        return True
    if seen.isdigit() and after.isdigit():
        return int(seen) > int(after)
    return seen != before


def _resource_version(obj: Mapping[str, Any] | None) -> str | None:
    return None if obj is None else (obj.get("metadata") or {}).get("resourceVersion")


def pod_use(pod: Mapping[str, Any]) -> tuple[str, tuple[str, int]] | None:
    """(node, (owning LLMService "namespace/name" or "", ephemeral-storage request)) of a pod bound to a node and
    not finished, as the scheduler counts it; None for the others."""
    spec = pod.get("spec") or {}
    node = spec.get("nodeName")
    if not node or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return None
    metadata = pod.get("metadata") or {}
    owner = (metadata.get("labels") or {}).get(render.SELECTOR_LABEL)
    return str(node), (f"{metadata.get('namespace')}/{owner}" if owner else "", pod_ephemeral_request(pod))
