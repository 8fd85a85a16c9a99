"""Where a model load is: its phase (resolving, downloading, converting, loading, warming up), the bytes done
and total and the download rate, shared by the loader (which writes it) and the status endpoint, the metrics and
the startup probe's answer (which read it)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from enum import StrEnum
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from kubellm.quantity import format_bytes

_RATE_WINDOW_S = 5.0  # the rate is the bytes of the last few seconds, so a stall shows as a falling rate


class Phase(StrEnum):
    starting = "starting"
    resolving = "resolving"
    downloading = "downloading"
    converting = "converting"
    loading = "loading"
    warming_up = "warming up"
    ready = "ready"
    failed = "failed"


class LoadProgress:
    """Thread-safe; the loader thread updates it, request handlers and scrapes read snapshots."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.phase = Phase.starting
        self.commit: str | None = None
        self.file: str | None = None
        self.bytes_done = 0
        self.bytes_total = 0
        self.restarts = 0
        self.detail: str | None = None
        self._samples: deque[tuple[float, int]] = deque()
        self._phase_started = time.monotonic()

    def set_phase(self, phase: Phase, detail: str | None = None) -> None:
        with self._lock:
            self.phase = phase
            self.detail = detail
            self._phase_started = time.monotonic()

    def start_download(self, commit: str, total: int, already: int) -> None:
        with self._lock:
            self.phase = Phase.downloading
            self.commit = commit
            self.bytes_total = total
            self.bytes_done = already
            self._samples.clear()
            self._samples.append((time.monotonic(), already))
            self._phase_started = time.monotonic()

    def add_bytes(self, count: int, file: str) -> None:
        with self._lock:
            self.bytes_done += count
            self.file = file
            now = time.monotonic()
            self._samples.append((now, self.bytes_done))
            while len(self._samples) > 2 and self._samples[0][0] < now - _RATE_WINDOW_S:
                self._samples.popleft()

    def discard_bytes(self, count: int) -> None:
        """Bytes downloaded that turned out unusable (a corrupt file, a server that ignored the range)."""
        with self._lock:
            self.bytes_done = max(self.bytes_done - count, 0)
            self._samples.clear()
            self._samples.append((time.monotonic(), self.bytes_done))

    def restarted(self) -> None:
        with self._lock:
            self.restarts += 1

    def rate(self) -> float:
        """Bytes per second over the last few seconds (0 when nothing arrived in that window)."""
        with self._lock:
            return self._rate_locked()

    def _rate_locked(self) -> float:
        now = time.monotonic()
        recent = [(t, b) for t, b in self._samples if t >= now - _RATE_WINDOW_S]
        if len(recent) < 2:
            return 0.0
        (t0, b0), (t1, b1) = recent[0], recent[-1]
        # Until now, not the last sample: a download that stopped sending shows a falling rate.
        return (b1 - b0) / max(now - t0, 1e-3) if t1 > t0 else 0.0

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "phase": self.phase.value,
                "commit": self.commit,
                "file": self.file,
                "bytesDone": self.bytes_done,
                "bytesTotal": self.bytes_total,
                "bytesPerSecond": round(self._rate_locked(), 1),
                "restarts": self.restarts,
                "phaseSeconds": round(time.monotonic() - self._phase_started, 1),
                "detail": self.detail,
            }

    def line(self) -> str:
        """One line a person reads: ``downloading 6.2/14.5Gi (43%), 38.0MiB/s``."""
        s = self.snapshot()
        if s["phase"] == Phase.downloading and s["bytesTotal"]:
            done, total = s["bytesDone"], s["bytesTotal"]
            text = f"downloading {_fraction(done, total)} ({100 * done // total}%), {format_bytes(int(s['bytesPerSecond']))}B/s"
            return text + (f", {s['restarts']} restart(s)" if s["restarts"] else "")
        return s["phase"] + (f": {s['detail']}" if s["detail"] else "")


def _fraction(done: int, total: int) -> str:
    """``6.2/14.5Gi``; both units spelled out when they differ (``512.0Ki/1.2Gi``)."""
    done_text, total_text = format_bytes(done), format_bytes(total)
    unit = total_text.lstrip("0123456789.")
    if unit and done_text.endswith(unit) and done_text[: -len(unit)].replace(".", "").isdigit():
        return f"{done_text[: -len(unit)]}/{total_text}"
    return f"{done_text}/{total_text}"


class ProgressCollector(Collector):
    """The load progress as Prometheus metrics, read at scrape time."""

    def __init__(self, progress: LoadProgress) -> None:
        self.progress = progress

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        s = self.progress.snapshot()
        phase = GaugeMetricFamily("kubellm_load_phase", "1 for the model load's current phase", labels=["phase"])
        for value in Phase:
            phase.add_metric([value.value], 1.0 if s["phase"] == value.value else 0.0)
        yield phase
        yield GaugeMetricFamily("kubellm_download_bytes", "Model bytes downloaded so far", value=s["bytesDone"])
        yield GaugeMetricFamily("kubellm_download_total_bytes", "Model bytes to download", value=s["bytesTotal"])
        yield GaugeMetricFamily(
            "kubellm_download_bytes_per_second", "Download rate over the last seconds", value=s["bytesPerSecond"]
        )
        yield CounterMetricFamily(
            "kubellm_download_restarts", "Downloads restarted after a stall or an error", value=s["restarts"]
        )
