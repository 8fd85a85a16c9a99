"""One active operator: leader election on a ``coordination.k8s.io/v1`` Lease, as client-go's ``leaderelection``
(and so controller-runtime) does it.

- A candidate reads the Lease every ``retry_period`` seconds. It takes the Lease when it is absent (create), or
  when its holder has not renewed it for ``lease_duration`` seconds as this candidate observed it (its own clock
  since the record last changed, never the holder's timestamps: clocks may differ), writing with the
  resourceVersion it read, so of two candidates only one write wins (the other gets 409 Conflict).
- The leader renews every ``retry_period``; when it could not renew for ``renew_deadline`` (shorter than the lease
  duration) it stops leading: the operator stops its watches and writes, and exits, well before any standby may
  take the Lease. A stopped leader that can still reach the API releases the Lease (holder emptied), so a standby
  takes over at its next try instead of after the lease duration.

Defaults are client-go's and controller-runtime's: lease 15 s, renew deadline 10 s, retry 2 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import kubernetes.client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("kubellm.operator")

LEASE_DURATION_S = 15.0
RENEW_DEADLINE_S = 10.0
RETRY_PERIOD_S = 2.0


def _micro_time(moment: datetime.datetime) -> str:
    """metav1.MicroTime on the wire (RFC 3339 with microseconds)."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class LeaseRecord:
    holder: str
    duration_s: int
    acquire_time: str | None
    renew_time: str | None
    transitions: int

    @classmethod
    def of(cls, lease: dict[str, Any]) -> LeaseRecord:
        spec = lease.get("spec") or {}
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            duration_s=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
        )


class LeaderElector:
    """Elections for one identity on one Lease; :meth:`lead` runs a body while this identity holds it."""

    def __init__(
        self,
        client: kubernetes.client.ApiClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float = LEASE_DURATION_S,
        renew_deadline: float = RENEW_DEADLINE_S,
        retry_period: float = RETRY_PERIOD_S,
        request_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not retry_period < renew_deadline < lease_duration:
            raise ValueError("leader election needs retry period < renew deadline < lease duration")
        self.api = kubernetes.client.CoordinationV1Api(client)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.request_timeout = min(request_timeout, renew_deadline / 2)
        self.clock = clock
        self.leading = False
        self.holder = ""  # who holds the Lease as last read (for the readiness reason)
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0

    @property
    def where(self) -> str:
        return f"Lease {self.namespace}/{self.name}"

    def _lease(self, record: LeaseRecord, resource_version: str | None) -> Any:
        # Any: the client serializes a dict body as it is (its stubs ask for V1Lease, which would drop nothing here).
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if resource_version is not None:
            metadata["resourceVersion"] = resource_version
        spec: dict[str, Any] = {
            "holderIdentity": record.holder,
            "leaseDurationSeconds": record.duration_s,
            "leaseTransitions": record.transitions,
        }
        if record.acquire_time:
            spec["acquireTime"] = record.acquire_time
        if record.renew_time:
            spec["renewTime"] = record.renew_time
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}

    def try_acquire_or_renew(self) -> bool:
        """One round of client-go's ``tryAcquireOrRenew``: True when this identity holds the Lease afterwards."""
        now = _micro_time(datetime.datetime.now(datetime.UTC))
        mine = LeaseRecord(self.identity, int(self.lease_duration), now, now, 0)
        try:
            current = self.api.read_namespaced_lease(
                self.name, self.namespace, _preload_content=False, _request_timeout=self.request_timeout
            )
        except ApiException as error:
            if error.status != 404:
                log.warning("cannot read %s: %s %s", self.where, error.status, error.reason)
                return False
            try:
                self.api.create_namespaced_lease(
                    self.namespace,
                    self._lease(mine, None),
                    _preload_content=False,
                    _request_timeout=self.request_timeout,
                )
            except ApiException as created:
                if created.status != 409:  # 409: another candidate created it first
                    log.warning("cannot create %s: %s %s", self.where, created.status, created.reason)
                return False
            self._observed, self._observed_at, self.holder = mine, self.clock(), self.identity
            return True
        except OSError as error:  # urllib3 errors are OSErrors: a timeout, a refused connection
            log.warning("cannot read %s: %s", self.where, error)
            return False
        lease = json_of(current)
        record = LeaseRecord.of(lease)
        if record != self._observed:
            self._observed, self._observed_at = record, self.clock()
        self.holder = record.holder
        if record.holder and record.holder != self.identity:
            duration = record.duration_s or self.lease_duration
            if self._observed_at + duration > self.clock():
                return False
        if record.holder == self.identity:
            mine = LeaseRecord(self.identity, int(self.lease_duration), record.acquire_time, now, record.transitions)
        else:
            mine = LeaseRecord(self.identity, int(self.lease_duration), now, now, record.transitions + 1)
        version = str((lease.get("metadata") or {}).get("resourceVersion") or "")
        try:
            self.api.replace_namespaced_lease(
                self.name,
                self.namespace,
                self._lease(mine, version),
                _preload_content=False,
                _request_timeout=self.request_timeout,
            )
        except ApiException as error:
            if error.status != 409:
                log.warning("cannot update %s: %s %s", self.where, error.status, error.reason)
            return False
        except OSError as error:
            log.warning("cannot update %s: %s", self.where, error)
            return False
        self._observed, self._observed_at, self.holder = mine, self.clock(), self.identity
        return True

    def release(self) -> None:
        """Give the Lease up (holder emptied) if this identity still holds it, so a standby need not wait."""
        try:
            lease = json_of(
                self.api.read_namespaced_lease(
                    self.name, self.namespace, _preload_content=False, _request_timeout=self.request_timeout
                )
            )
            record = LeaseRecord.of(lease)
            if record.holder != self.identity:
                return
            now = _micro_time(datetime.datetime.now(datetime.UTC))
            released = LeaseRecord("", 1, now, now, record.transitions)
            version = str((lease.get("metadata") or {}).get("resourceVersion") or "")
            self.api.replace_namespaced_lease(
                self.name,
                self.namespace,
                self._lease(released, version),
                _preload_content=False,
                _request_timeout=self.request_timeout,
            )
            log.info("released %s", self.where)
        except (ApiException, OSError) as error:
            log.warning("cannot release %s: %s", self.where, error)

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this identity holds the Lease (True) or ``stop`` is set (False)."""
        waiting_logged = False
        while not stop.is_set():
            if await asyncio.to_thread(self.try_acquire_or_renew):
                self.leading = True
                log.info("leading: acquired %s as %s", self.where, self.identity)
                return True
            if not waiting_logged:
                log.info("standby: %s is held by %s; trying every %gs", self.where, self.holder, self.retry_period)
                waiting_logged = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.retry_period)
        return False

    async def keep(self, stop: asyncio.Event) -> None:
        """Renew every retry period until ``stop`` is set; return (leadership lost) when no renewal succeeded for
        the renew deadline."""
        last = self.clock()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.retry_period)
                return
            except TimeoutError:
                pass
            try:
                renewed = await asyncio.wait_for(
                    asyncio.to_thread(self.try_acquire_or_renew), max(self.renew_deadline - (self.clock() - last), 0.1)
                )
            except TimeoutError:
                renewed = False
            if renewed:
                last = self.clock()
            elif self.clock() - last >= self.renew_deadline:
                self.leading = False
                log.error("lost %s: not renewed for %gs; stopping", self.where, self.renew_deadline)
                return


def json_of(response: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(response.data)
    return data
