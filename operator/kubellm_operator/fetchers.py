"""Background fetchers: every call whose address or answer a tenant controls runs here, never on a pass.

Hub resolution (with the token Secret read before it), the pods' ``/loadz`` reads and, for ``spec.autoscaling``,
the pods' demand (their ``/metrics``) run in a small, bounded pool
of worker threads. For each LLMService at most one fetch is in flight; each call has a wall-clock deadline, after
which the worker stops waiting for it (the call itself is left to end on its own socket timeouts, and that
LLMService gets no second call of the same kind until it has). What comes back is kept in a bounded cache
(least recently used out first) and queues a pass of its LLMService, like a watch event does, when it differs
from what was held. The pass only reads what is held (``observe.py``); the plan names what it still needs
(``Plan.fetches``) and the executor hands that here.

So a hub that trickles a byte a second, or never answers, delays only the LLMService that points at it: its
status says the hub did not answer within the deadline, and every other LLMService's passes go on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from kubellm.modelfiles import HubFailure
from kubellm_operator.modelplan import HubAnswer, HubRequest, LoadzAnswer, parse_loadz
from kubellm_operator.resolve import Resolution
from kubellm_operator.workqueue import Key

logger = logging.getLogger("kubellm.operator")


@dataclass(frozen=True)
class LoadzRequest:
    """One pod's ``/loadz``: the pod (its uid: a pod re-created under the same name is another one)."""

    pod: str  # namespace/name
    uid: str


@dataclass(frozen=True)
class DemandRequest:
    """One pod's demand for the autoscaler (in flight + queued, from its ``/metrics``): the pod, by uid."""

    pod: str  # namespace/name
    uid: str


@dataclass(frozen=True)
class DemandAnswer:
    """In flight + queued on the pod; None: its metrics did not say (no answer, past the deadline, malformed)."""

    demand: float | None


Request = HubRequest | LoadzRequest | DemandRequest
Answer = HubAnswer | LoadzAnswer | DemandAnswer | None


@dataclass(frozen=True)
class Held:
    """One answer held for an LLMService, and how old it is (seconds, at the time of the observation)."""

    answer: Answer
    age_s: float


@dataclass
class _Slot:
    """One LLMService's fetching: the requests waiting and whether a worker (or a call it gave up on) runs."""

    waiting: dict[Request, None]
    running: bool = False
    abandoned: dict[type, threading.Thread] | None = None  # calls past their deadline, still alive, by kind


class Fetchers:
    """The pool, the per-LLMService slots and the bounded answer cache (see the module docstring)."""

    def __init__(
        self,
        *,
        hub: Callable[[HubRequest], HubAnswer],
        loadz: Callable[[Key, LoadzRequest], Mapping[str, Any] | None],
        notify: Callable[[Key], None],
        demand: Callable[[Key, DemandRequest], float | None] | None = None,
        workers: int = 4,
        hub_deadline_s: float = 30.0,
        loadz_deadline_s: float = 2.0,
        demand_deadline_s: float = 1.0,
        max_answers: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._hub, self._loadz, self._notify, self._clock = hub, loadz, notify, clock
        self._demand = demand
        self.hub_deadline_s, self.loadz_deadline_s = hub_deadline_s, loadz_deadline_s
        self.demand_deadline_s = demand_deadline_s
        self._max_answers = max_answers
        self._lock = threading.Lock()
        self._slots: dict[Key, _Slot] = {}
        self._answers: OrderedDict[tuple[Key, Request], tuple[Answer, float]] = OrderedDict()
        self._requests_of: dict[Key, set[Request]] = {}  # the answers' keys by LLMService, so a pass scans its own
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kubellm-fetch")
        self._closed = False
        self.calls = 0  # calls made (for tests and the bench)
        self.timeouts = 0

    # What a pass reads -------------------------------------------------------------------------------------

    def held(self, key: Key) -> dict[Request, Held]:
        """Every answer held for ``key``, with its age."""
        now = self._clock()
        with self._lock:
            held = {request: self._answers[(key, request)] for request in self._requests_of.get(key, ())}
        return {request: Held(answer, now - at) for request, (answer, at) in held.items()}

    def in_flight(self, key: Key) -> frozenset[Request]:
        with self._lock:
            slot = self._slots.get(key)
            return frozenset(slot.waiting) if slot is not None else frozenset()

    # What the executor asks for ---------------------------------------------------------------------------

    def request(self, key: Key, requests: Iterable[Request]) -> None:
        """Fetch these for ``key`` in the background (a request already waiting is not asked twice)."""
        wanted = list(requests)
        if not wanted:
            return
        with self._lock:
            if self._closed:
                return
            slot = self._slots.setdefault(key, _Slot({}))
            for request in wanted:
                slot.waiting.setdefault(request, None)
            if slot.running:
                return  # the worker running this LLMService's fetches takes these next
            slot.running = True
        self._pool.submit(self._run, key)

    def forget(self, key: Key) -> None:
        """The LLMService is gone: drop what is held for it."""
        with self._lock:
            for request in self._requests_of.pop(key, set()):
                self._answers.pop((key, request), None)
            slot = self._slots.get(key)
            if slot is not None:
                slot.waiting.clear()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for slot in self._slots.values():
                slot.waiting.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # The workers -----------------------------------------------------------------------------------------

    def _run(self, key: Key) -> None:
        while True:
            with self._lock:
                slot = self._slots[key]
                if not slot.waiting or self._closed:
                    slot.running = False
                    alive = {kind: t for kind, t in (slot.abandoned or {}).items() if t.is_alive()}
                    slot.abandoned = alive or None
                    if not slot.waiting and not slot.abandoned:
                        self._slots.pop(key, None)
                    return
                request = next(iter(slot.waiting))
            try:
                answer = self._fetch(key, slot, request)
            except Exception:  # a bug in a fetch must not end the worker: the LLMService would never be asked again
                logger.exception("LLMService %s/%s: background fetch of %s failed", *key, request)
                answer = None
            with self._lock:
                slot.waiting.pop(request, None)
                if self._closed:
                    continue
                before = self._answers.get((key, request))
                self._answers[(key, request)] = (answer, self._clock())
                self._answers.move_to_end((key, request))
                self._requests_of.setdefault(key, set()).add(request)
                while len(self._answers) > self._max_answers:
                    (owner, dropped), _ = self._answers.popitem(last=False)
                    kept = self._requests_of.get(owner)
                    if kept is not None:
                        kept.discard(dropped)
                        if not kept:
                            del self._requests_of[owner]
            if before is None or before[0] != answer:
                self._notify(key)

    def _fetch(self, key: Key, slot: _Slot, request: Request) -> Answer:
        kind = type(request)
        stuck = (slot.abandoned or {}).get(kind)
        if stuck is not None and stuck.is_alive():
            # The last call of this kind has not ended yet: another would only pile up behind the same endpoint.
            return self._timed_out(request)
        if isinstance(request, HubRequest):
            hub_request = request
            got = self._call(key, slot, kind, lambda: self._hub(hub_request), self.hub_deadline_s)
            return got if isinstance(got, HubAnswer) else self._timed_out(request)
        if isinstance(request, DemandRequest):
            demand_request, read = request, self._demand
            if read is None:
                return DemandAnswer(None)
            value = self._call(key, slot, kind, lambda: read(key, demand_request), self.demand_deadline_s)
            return DemandAnswer(
                float(value) if isinstance(value, float | int) and not isinstance(value, bool) else None
            )
        loadz_request = request
        raw = self._call(key, slot, kind, lambda: self._loadz(key, loadz_request), self.loadz_deadline_s)
        return parse_loadz(raw, f"pod {request.pod}") if isinstance(raw, Mapping) else None

    def _call(self, key: Key, slot: _Slot, kind: type, call: Callable[[], Any], deadline_s: float) -> Any:
        """``call()`` in its own thread, waited for at most ``deadline_s``; a sentinel when it took longer."""
        box: list[Any] = []
        errors: list[BaseException] = []

        def target() -> None:
            try:
                box.append(call())
            except BaseException as error:  # handed to the worker, which logs it
                errors.append(error)

        thread = threading.Thread(target=target, name=f"kubellm-fetch-{key[0]}/{key[1]}", daemon=True)
        with self._lock:
            self.calls += 1
        thread.start()
        thread.join(deadline_s)
        if thread.is_alive():
            with self._lock:
                self.timeouts += 1
                slot.abandoned = {**(slot.abandoned or {}), kind: thread}
            logger.warning("LLMService %s/%s: %s did not answer within %gs", *key, kind.__name__, deadline_s)
            return _TIMED_OUT
        if errors:
            raise errors[0]
        return box[0] if box else None

    def _timed_out(self, request: Request) -> Answer:
        if isinstance(request, HubRequest):
            message = (
                f"{HubFailure.HubUnreachable.prefix}: {request.endpoint} did not answer within "
                f"{self.hub_deadline_s:g}s (the operator's deadline for resolving {request.model})"
            )
            return HubAnswer(Resolution(None, HubFailure.HubUnreachable, message))
        return None


_TIMED_OUT = object()
