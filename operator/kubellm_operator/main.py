"""`kubellm operator`: run the Kopf operator with its work queue, kubelet-summary refresher and health endpoint.

:func:`run` is the whole operator as a coroutine (``stop_flag``/``ready_flag`` as in ``kopf.operator``), for
embedding; :func:`main` is the command: settings from flags and environment, logging, then :func:`run` until
SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import kopf
import kubernetes.config

from kubellm_operator.cluster import Cluster, load_configuration
from kubellm_operator.config import LogFormat, OperatorSettings, SettingsError, load_settings
from kubellm_operator.handlers import register
from kubellm_operator.metrics import OperatorMetrics, start_health_server
from kubellm_operator.reconcile import Operator

STORAGE_SWEEP_S = 0.5  # the least time between two storage re-evaluations (see background())

# Watch handlers run on every event of kubellm's pods, children, Nodes and LLMServices; their routine
# "succeeded" lines would drown the log (failures are still logged at ERROR).
QUIET_HANDLERS = ("child_changed", "pod_changed", "node_changed", "llmservice_seen")


class RoutineSuccessFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        message = record.getMessage()
        return not any(message == f"Handler {handler!r} succeeded." for handler in QUIET_HANDLERS)


def configure_logging(settings: OperatorSettings) -> None:
    log_format = kopf.LogFormat.JSON if settings.log_format == LogFormat.json else kopf.LogFormat.FULL
    kopf.configure(log_format=log_format, log_refkey="object")
    logging.getLogger().setLevel(settings.log_level.value)
    logging.getLogger("kopf.objects").addFilter(RoutineSuccessFilter())
    # The client logs every request at DEBUG; keep that for --log-level DEBUG only.
    for noisy in ("urllib3", "kubernetes"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLogger().level))


@contextmanager
def background(op: Operator) -> Iterator[None]:
    """The work-queue thread, the storage re-evaluation thread and the kubelet-summary refresher thread, stopped
    on exit."""
    stop = threading.Event()

    def refresh() -> None:
        while not stop.wait(op.settings.summary_refresh_s):
            if op.refresh_summaries():
                op.nodes_changed()

    def reevaluate() -> None:
        # One sweep at most every STORAGE_SWEEP_S: the pods of a rollout bind one by one, each a node change.
        while not stop.is_set():
            if op.storage_dirty.wait(timeout=1.0):
                op.storage_dirty.clear()
                op.reevaluate_storage()
                stop.wait(STORAGE_SWEEP_S)

    threads = [
        threading.Thread(target=op.run_queue, name="kubellm-queue", daemon=True),
        threading.Thread(target=reevaluate, name="kubellm-storage", daemon=True),
    ]
    if op.settings.summary_refresh_s > 0:
        threads.append(threading.Thread(target=refresh, name="kubellm-summaries", daemon=True))
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        op.queue.close()
        for thread in threads:
            thread.join(timeout=10)


async def run(
    settings: OperatorSettings,
    *,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
    metrics: OperatorMetrics | None = None,
) -> None:
    """The operator until ``stop_flag`` is set (or a signal arrives, when run in the main thread)."""
    config = load_configuration(settings.kubeconfig)
    cluster = Cluster(config, timeout=settings.api_timeout_s)
    op = Operator(settings, cluster, metrics or OperatorMetrics())
    op.metrics.watch_queue(op.queue.pending, op.queue.overdue)
    registry = kopf.OperatorRegistry()
    register(registry, op, config)
    health = (
        await start_health_server(op.metrics, settings.health_host, settings.health_port, op.health)
        if settings.health_port
        else None
    )
    try:
        with background(op):
            await kopf.operator(
                registry=registry,
                clusterwide=settings.clusterwide,
                namespaces=settings.namespaces,
                standalone=settings.standalone,
                # Naming a peering makes Kopf wait for its CRD: only when peering is wanted.
                peering_name=None if settings.standalone else settings.peering_name,
                priority=settings.priority,
                stop_flag=stop_flag,
                ready_flag=ready_flag,
            )
    finally:
        if health is not None:
            await health.cleanup()
        cluster.close()


def main(argv: list[str] | None = None) -> int:
    """`kubellm operator [flags]`: exit 2 on bad settings or no cluster credentials."""
    try:
        settings = load_settings(argv)
    except SettingsError as exc:
        print(f"kubellm operator: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings)
    try:
        load_configuration(settings.kubeconfig)
    except (kubernetes.config.ConfigException, OSError) as exc:
        print(f"kubellm operator: no cluster credentials: {exc}", file=sys.stderr)
        return 2
    with suppress(KeyboardInterrupt):
        asyncio.run(run(settings))
    return 0
