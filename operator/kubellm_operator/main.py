"""`kubellm operator`: run the Kopf operator with its work queue, kubelet-summary refresher and health endpoint,
once the LLMService resource is served and this replica leads.

:func:`run` is the whole operator as a coroutine (``stop_flag``/``ready_flag`` as in ``kopf.operator``), for
embedding; :func:`main` is the command: settings from flags and environment, logging, then :func:`run` until
SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import kopf
import kubernetes.config

from kubellm.settings import SettingsError
from kubellm_operator.api import GROUP, PLURAL, VERSION
from kubellm_operator.cluster import Cluster, load_configuration
from kubellm_operator.config import LogFormat, OperatorSettings, load_settings
from kubellm_operator.handlers import register
from kubellm_operator.leader import LeaderElector
from kubellm_operator.metrics import OperatorMetrics, start_health_server
from kubellm_operator.podwatch import PodWatch
from kubellm_operator.reconcile import Operator
from kubellm_operator.startup import Readiness, resource_served, wait_until_served

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
    """The work-queue thread, the storage re-evaluation thread, the kubelet-summary refresher thread and the pod
    watches of the storage count (one per watched scope), stopped on exit."""
    stop = threading.Event()
    watches = [PodWatch(op.cluster, op.pods, scope, watched=op.watched) for scope in op.pods.scopes]

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
    threads += [
        threading.Thread(target=watch.run, args=(stop,), name=f"kubellm-pods-{scope or 'all'}", daemon=True)
        for watch, scope in zip(watches, op.pods.scopes, strict=True)
    ]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for watch in watches:
            watch.close()
        op.queue.close()
        op.fetchers.close()
        for thread in threads:
            thread.join(timeout=10)


class LeadershipLost(RuntimeError):
    """The leader could not renew its Lease in time and stopped; the process exits so that it restarts as a
    standby (controller-runtime's managers do the same)."""


async def _relay(source: asyncio.Event | None, target: asyncio.Event) -> None:
    if source is not None:
        await source.wait()
        target.set()


async def run(
    settings: OperatorSettings,
    *,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
    metrics: OperatorMetrics | None = None,
) -> None:
    """The operator until ``stop_flag`` is set (or a signal arrives, when run in the main thread).

    Before it watches anything it waits for the LLMService resource to be served and, with leader election, for
    the leader Lease (:mod:`kubellm_operator.startup`, :mod:`kubellm_operator.leader`); it raises
    :class:`LeadershipLost` when it stops because it lost the Lease.
    """
    config = load_configuration(settings.kubeconfig)
    cluster = Cluster(config, timeout=settings.api_timeout_s)
    op = Operator(settings, cluster, metrics or OperatorMetrics())
    op.metrics.watch_queue(op.queue.pending, op.queue.overdue)
    registry = kopf.OperatorRegistry()
    register(registry, op, config)
    readiness = Readiness(op.metrics)
    elector: LeaderElector | None = None

    def stuck() -> str | None:
        # Only the working operator's queue and watches can be stuck; a waiting one is alive as long as it answers.
        return op.health() if readiness.reason() is None else None

    health = (
        await start_health_server(op.metrics, settings.health_host, settings.health_port, stuck, readiness.reason)
        if settings.health_port
        else None
    )
    halt = asyncio.Event()  # the caller's stop, or the Lease lost
    relay = asyncio.create_task(_relay(stop_flag, halt))
    keeper: asyncio.Task[None] | None = None
    lost = False
    try:
        served = functools.partial(
            resource_served, functools.partial(cluster.served_resources, GROUP, VERSION), f"{GROUP}/{VERSION}", PLURAL
        )
        if not await wait_until_served(served, readiness, halt):
            return
        if settings.leader_election:
            elector = LeaderElector(
                cluster.client,
                namespace=settings.leader_election_namespace,
                name=settings.leader_election_name,
                identity=settings.identity,
                lease_duration=settings.lease_duration_s,
                renew_deadline=settings.renew_deadline_s,
                retry_period=settings.retry_period_s,
                request_timeout=settings.api_timeout_s,
            )
            readiness.waiting(f"standby: waiting for {elector.where} (as {elector.identity})")
            if not await elector.acquire(halt):
                return
            op.metrics.leader.set(1)

            async def keep(elector: LeaderElector) -> None:
                nonlocal lost
                await elector.keep(halt)
                if not elector.leading:
                    lost = True
                    op.metrics.leader.set(0)
                    # Fencing: no pass starts from now on (one running finishes within --api-timeout-s), well
                    # before a standby may take the Lease; Kopf's own shutdown may take longer.
                    op.queue.close()
                    halt.set()

            keeper = asyncio.create_task(keep(elector))
        readiness.ready()
        with background(op):
            await kopf.operator(
                registry=registry,
                clusterwide=settings.clusterwide,
                namespaces=settings.namespaces,
                standalone=settings.standalone,
                # Naming a peering makes Kopf wait for its CRD: only when peering is wanted.
                peering_name=None if settings.standalone else settings.peering_name,
                priority=settings.priority,
                stop_flag=halt,
                ready_flag=ready_flag,
            )
    finally:
        halt.set()
        relay.cancel()
        if keeper is not None:
            await asyncio.gather(keeper, return_exceptions=True)
        if elector is not None and elector.leading and not lost:
            # Stopped cleanly (a rollout, a scale-down): hand over now rather than after the lease duration.
            await asyncio.to_thread(elector.release)
            op.metrics.leader.set(0)
        if health is not None:
            await health.cleanup()
        cluster.close()
    if lost:
        raise LeadershipLost(
            f"lost the leader Lease {settings.leader_election_namespace}/{settings.leader_election_name}"
        )


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
    try:
        with suppress(KeyboardInterrupt):
            asyncio.run(run(settings))
    except LeadershipLost as exc:
        print(f"kubellm operator: {exc}; exiting to restart as a standby", file=sys.stderr)
        return 1
    return 0
