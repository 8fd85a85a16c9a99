"""The work queue every pass runs from, the per-LLMService locks, and the one retry policy.

The queue coalesces bursts (one pass per LLMService however many pods changed); :class:`RetryPolicy` decides when a
failing LLMService is tried again: exponential backoff with jitter, 1 s doubling to ``--retry-max-s``,
``Retry-After`` honoured, reset only when what the pass would write changes (the spec, or what it depends on); a
write the API refuses as invalid is not retried until then.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from kubellm_operator.children import Refusal

Key = tuple[str, str]  # (namespace, name) of an LLMService


class KeyedLocks:
    """One lock per LLMService, so two passes over the same one never interleave."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[Key, threading.Lock] = {}

    @contextmanager
    def hold(self, key: Key) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            yield


class WorkQueue:
    """LLMServices due for a pass: each key at most once, at its earliest due time (a controller work queue)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: dict[Key, float] = {}
        self._closed = False

    def add(self, key: Key, delay: float = 0.0) -> None:
        if math.isinf(delay):
            return
        with self._cond:
            due = time.monotonic() + delay
            self._due[key] = min(self._due.get(key, due), due)
            self._cond.notify()

    def due_in(self, key: Key) -> float | None:
        """Seconds until ``key`` is due (negative when overdue), or None when it is not queued."""
        with self._cond:
            due = self._due.get(key)
            return None if due is None else due - time.monotonic()

    def overdue(self) -> float:
        """How long the longest-waiting due key has been due (0 when none is): a stuck queue grows this."""
        with self._cond:
            now = time.monotonic()
            return max((now - due for due in self._due.values() if due <= now), default=0.0)

    def get(self) -> Key | None:
        """The next due key (blocking), or None once closed."""
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                if self._due:
                    key, due = min(self._due.items(), key=lambda item: item[1])
                    if due <= now:
                        del self._due[key]
                        return key
                    self._cond.wait(due - now)
                else:
                    self._cond.wait()
            return None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def pending(self) -> int:
        with self._cond:
            return len(self._due)


@dataclass
class _Backoff:
    attempts: int
    fingerprint: str | None  # what the pass would write when it failed; a different one resets the backoff
    until: float  # monotonic time before which no write is retried (inf: not until the fingerprint changes)
    refusals: tuple[Refusal, ...] = ()


class RetryPolicy:
    """One backoff per LLMService: ``base`` doubling to ``cap`` seconds, with jitter (a random 50-100% of the
    step, so LLMServices failing together do not retry together), never sooner than ``Retry-After``."""

    def __init__(
        self,
        base: float = 1.0,
        cap: float = 300.0,
        *,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base, self.cap, self._rng, self._clock = base, cap, rng, clock
        self._lock = threading.Lock()
        self._state: dict[Key, _Backoff] = {}

    def failed(
        self,
        key: Key,
        fingerprint: str | None,
        *,
        permanent: bool = False,
        retry_after: float | None = None,
        refusals: tuple[Refusal, ...] = (),
    ) -> float:
        """Record a failed pass; the delay until the next try (inf: not before the fingerprint changes)."""
        with self._lock:
            before = self._state.get(key)
            if before is not None and fingerprint is not None and before.fingerprint not in (None, fingerprint):
                before = None  # a different write failed: its own backoff starts over
            attempts = (before.attempts if before else 0) + 1
            step = min(self.cap, self.base * 2 ** (attempts - 1))
            delay = math.inf if permanent else max(step * (0.5 + self._rng() / 2), retry_after or 0.0)
            self._state[key] = _Backoff(
                attempts,
                fingerprint or (before.fingerprint if before else None),
                self._clock() + delay,
                refusals or (before.refusals if before else ()),
            )
            return delay

    def succeeded(self, key: Key) -> None:
        with self._lock:
            self._state.pop(key, None)

    reset = succeeded  # a spec change: whatever failed before is not what will be tried next

    def wait(self, key: Key) -> float:
        """Seconds until ``key`` may be tried again (0 when it is not backing off, inf when parked)."""
        with self._lock:
            state = self._state.get(key)
            return 0.0 if state is None else max(0.0, state.until - self._clock())

    def holding(self, key: Key, fingerprint: str) -> tuple[Refusal, ...] | None:
        """The refusals to keep reporting instead of writing again: same write, still within its backoff."""
        with self._lock:
            state = self._state.get(key)
            if state is None or not state.refusals or state.fingerprint != fingerprint or self._clock() >= state.until:
                return None
            return state.refusals

    def standing(self, key: Key) -> tuple[str, tuple[Refusal, ...]] | None:
        """(fingerprint, refusals) of the writes still within their backoff: a pass whose writes have the same
        fingerprint reports these refusals instead of writing again."""
        with self._lock:
            state = self._state.get(key)
            if state is None or not state.refusals or state.fingerprint is None or self._clock() >= state.until:
                return None
            return state.fingerprint, state.refusals

    def attempts(self, key: Key) -> int:
        with self._lock:
            state = self._state.get(key)
            return state.attempts if state else 0
