"""The storage pre-flight's pod count: the ephemeral-storage requests of every pod bound to a node, from a slim list
and watch of its own, outside Kopf.

The scheduler counts every pod of a node, so this watch cannot carry a label selector: on a shared cluster it sees
thousands of pods that are not kubellm's. Kopf would hold each of them as a full object with its own worker
(about 25 KB a pod: 50 MB at 2,000 pods, issue 19); this watch keeps three fields of each (node, owning
LLMService, request) and decodes one event, or one list page, at a time.

It is client-go's reflector in small: a paged list (500 a page, as client-go's pager) read at one revision, each
page within a byte cap (pods are tenant-written, up to 1.5 MiB each: a page over the cap is asked again, from the
same continue token, a tenth as long, down to one pod), then a watch from that revision with bookmarks; a watch
the server ends is reopened from the last revision seen, and a revision the server no longer has (410 Expired,
an ERROR event) starts a new list. Every failure waits a backoff
(1 s doubling to 30 s) before the next list, and :meth:`PodTally.health` says so after ``stall_s``.

One :class:`PodWatch` per scope: the whole cluster, or one namespace each with ``--namespaces`` (the operator's
RBAC then only covers those).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from kubellm.watchlines import EventLines
from kubellm_operator.cluster import MAX_ANSWER_BYTES, AnswerTooLarge
from kubellm_operator.views import pod_use

logger = logging.getLogger("kubellm.operator")

PAGE_SIZE = 500
WATCH_SERVER_TIMEOUT_S = 300  # the apiserver ends each watch after this; it is reopened from the last revision
BACKOFF_S = (1.0, 30.0)
MAX_EVENT_BYTES = 4 << 20  # one watch event: an object is at most etcd's 1.5 MiB request, JSON-quoted

Use = tuple[str, tuple[str, int]]  # (node, (owning LLMService "namespace/name" or "", ephemeral-storage request))


class PodSource(Protocol):
    """The two pod calls of a watch (``Cluster`` has them); both raise ApiException."""

    def list_pods(
        self, namespace: str | None, *, limit: int, continue_token: str | None, max_bytes: int
    ) -> dict[str, Any]: ...

    def watch_pods(self, namespace: str | None, *, resource_version: str, timeout_s: int) -> Any: ...


class Expired(Exception):
    """The watch's revision is gone from the server (410): list again."""


class PodTally:
    """What every scope's watch saw, merged: the requests of the pods bound to each node.

    ``on_change`` gets the whole node → uses index whenever one pod's use changed (bound, finished, deleted); a
    foreign pod's status update changes no use and costs a dict lookup.
    """

    def __init__(self, scopes: list[str | None], on_change: Callable[[Mapping[str, list[tuple[str, int]]]], None]):
        self._lock = threading.Lock()
        self._publish_lock = threading.Lock()
        self._on_change = on_change
        self.scopes = tuple(scopes)
        self._uses: dict[str | None, dict[str, Use]] = {scope: {} for scope in scopes}
        self._listed: set[str | None] = set()
        self._failing: dict[str | None, tuple[float, str]] = {}  # scope -> (since, last error)
        self.synced = threading.Event()

    def replace(self, scope: str | None, uses: dict[str, Use]) -> None:
        with self._lock:
            changed = uses != self._uses[scope]
            self._uses[scope] = uses
            self._listed.add(scope)
            self._failing.pop(scope, None)
            if self._listed == set(self._uses):
                self.synced.set()
        if changed:
            self._publish()

    def update(self, scope: str | None, uid: str, use: Use | None) -> None:
        with self._lock:
            uses = self._uses[scope]
            if uses.get(uid) == use:
                return
            if use is None:
                del uses[uid]
            else:
                uses[uid] = use
        self._publish()

    def failed(self, scope: str | None, error: str) -> None:
        with self._lock:
            since = self._failing.get(scope, (time.monotonic(), ""))[0]
            self._failing[scope] = (since, error)

    def recovered(self, scope: str | None) -> None:
        with self._lock:
            self._failing.pop(scope, None)

    def health(self, stall_s: float) -> str | None:
        """Why the pod count is stale, once one scope's list or watch has failed for ``stall_s``; else None."""
        now = time.monotonic()
        with self._lock:
            failing = [(scope, since, error) for scope, (since, error) in self._failing.items()]
        for scope, since, error in sorted(failing, key=lambda f: f[1]):
            if now - since > stall_s:
                where = f"namespace {scope}" if scope else "all namespaces"
                return f"the pod watch of {where} has failed for {now - since:.0f}s: {error}"
        return None

    def index(self) -> dict[str, list[tuple[str, int]]]:
        with self._lock:
            by_node: dict[str, list[tuple[str, int]]] = {}
            for uses in self._uses.values():
                for node, use in uses.values():
                    by_node.setdefault(node, []).append(use)
        return by_node

    def _publish(self) -> None:
        # One publisher at a time, each reading the index inside: with a watch per namespace, a thread that read
        # an older index can never hand it over after a newer one.
        with self._publish_lock:
            self._on_change(self.index())


class PodWatch:
    """List, then watch, the pods of one scope into a :class:`PodTally`, until ``stop`` is set."""

    def __init__(
        self,
        source: PodSource,
        tally: PodTally,
        scope: str | None,
        *,
        watched: Callable[[], None],
        max_page_bytes: int = MAX_ANSWER_BYTES,
    ):
        self._source = source
        self._max_page_bytes = max_page_bytes
        self._tally = tally
        self._scope = scope
        self._watched = watched
        self._response: Any = None
        self._response_lock = threading.Lock()

    def run(self, stop: threading.Event) -> None:
        failures = 0
        while not stop.is_set():
            try:
                revision = self._list()
                failures = 0
                while not stop.is_set():
                    revision = self._watch(revision, stop)
            except Expired:
                continue  # list again at once, as a reflector does
            except (ApiException, HTTPError, OSError, ValueError) as exc:
                if stop.is_set():
                    return
                error = _describe(exc)
                self._tally.failed(self._scope, error)
                delay = min(BACKOFF_S[0] * 2**failures, BACKOFF_S[1])
                failures += 1
                level = logging.INFO if failures == 1 else logging.WARNING
                logger.log(level, "pod watch (%s): %s; listing again in %.0fs", self._where, error, delay)
                stop.wait(delay)

    def close(self) -> None:
        """Unblock a watch read (the thread's ``stop`` is set first)."""
        with self._response_lock:
            response = self._response
        if response is not None:
            response.shutdown()

    @property
    def _where(self) -> str:
        return f"namespace {self._scope}" if self._scope else "all namespaces"

    def _list(self) -> str:
        uses: dict[str, Use] = {}
        token: str | None = None
        limit = PAGE_SIZE
        while True:
            try:
                page = self._source.list_pods(
                    self._scope, limit=limit, continue_token=token, max_bytes=self._max_page_bytes
                )
            except AnswerTooLarge:
                if limit == 1:
                    raise
                limit = max(1, limit // 10)
                logger.info(
                    "pod watch (%s): a page over %d bytes; asking %d a page", self._where, self._max_page_bytes, limit
                )
                continue
            for pod in page.get("items") or []:
                _keep(uses, pod)
            metadata = page.get("metadata") or {}
            token = metadata.get("continue") or None
            if token is None:
                break
        self._tally.replace(self._scope, uses)
        self._watched()
        return str(metadata.get("resourceVersion") or "")

    def _watch(self, revision: str, stop: threading.Event) -> str:
        """One watch request from ``revision``; the last revision it delivered."""
        response = self._source.watch_pods(self._scope, resource_version=revision, timeout_s=WATCH_SERVER_TIMEOUT_S)
        with self._response_lock:
            self._response = response
        try:
            if stop.is_set():  # stopped while it opened: close() found no response to shut
                return revision
            self._tally.recovered(self._scope)
            for line in _lines(response):
                if stop.is_set():
                    break
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Expired(obj.get("message"))
                    raise ValueError(f"watch error {obj.get('code')} {obj.get('reason')}: {obj.get('message')}")
                metadata = obj.get("metadata") or {}
                revision = str(metadata.get("resourceVersion") or revision)
                self._watched()
                if kind == "BOOKMARK":
                    continue
                uid = str(metadata.get("uid") or "")
                self._tally.update(self._scope, uid, None if kind == "DELETED" else pod_use(obj))
        finally:
            with self._response_lock:
                self._response = None
            response.release_conn()
        return revision


def _keep(uses: dict[str, Use], pod: Mapping[str, Any]) -> None:
    use = pod_use(pod)
    if use is not None:
        uses[str((pod.get("metadata") or {}).get("uid") or "")] = use


def _lines(response: Any) -> Iterator[bytes]:
    """The newline-delimited events of a watch response, each at most MAX_EVENT_BYTES."""
    lines = EventLines(MAX_EVENT_BYTES)
    for chunk in response.stream(64 << 10, decode_content=True):
        yield from lines.feed(chunk)


def _describe(exc: Exception) -> str:
    if isinstance(exc, ApiException):
        return f"API error {exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"
