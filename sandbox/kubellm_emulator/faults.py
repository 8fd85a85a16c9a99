"""Fault injection: make the next N requests to a method and path prefix fail, or cut the open watches."""

from __future__ import annotations

import dataclasses
import threading

from kubellm_emulator.errors import ApiError


@dataclasses.dataclass
class Fault:
    method: str  # upper-case HTTP method, or "*" for any
    path_prefix: str
    remaining: int
    status: int
    message: str

    def error(self) -> ApiError:
        reason = {409: "Conflict", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}.get(
            self.status, "InternalError"
        )
        return ApiError(self.status, reason, self.message)


class FaultInjector:
    """Rules a test switches on; each matching request consumes one failure of the first matching rule."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self.served: list[tuple[str, str, int]] = []  # (method, path, status) of every injected failure

    def fail(
        self,
        path_prefix: str,
        *,
        method: str = "*",
        times: int = 1,
        status: int = 500,
        message: str = "injected fault",
    ) -> Fault:
        fault = Fault(method.upper(), path_prefix, times, status, message)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(self, method: str, path: str) -> ApiError | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and fault.method in ("*", method.upper()) and path.startswith(fault.path_prefix):
                    fault.remaining -= 1
                    self.served.append((method.upper(), path, fault.status))
                    return fault.error()
            self._faults = [fault for fault in self._faults if fault.remaining > 0]
        return None
