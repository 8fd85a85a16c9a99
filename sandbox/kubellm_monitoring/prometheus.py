"""A Prometheus of our own on 127.0.0.1 (Debian's `prometheus` package): temporary storage, a generated scrape
configuration, bounded start and stop, and its HTTP API (query, query_range, series, rules, targets).

The scrape configuration is what the Prometheus operator generates from deploy/components/monitoring's
PodMonitors, for pods described as the Kubernetes API describes them: each target carries the
``__meta_kubernetes_*`` labels service discovery would give it, and the same relabelings (the operator's standard
ones, then the PodMonitor's own) turn them into target labels, run by Prometheus itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import yaml

from kubellm_sandbox.processes import free_port

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
API_TIMEOUT_S = 10.0
MAX_ANSWER_BYTES = 16 << 20


class PrometheusError(RuntimeError):
    pass


def _sanitize(name: str) -> str:
    """A Kubernetes label name as service discovery spells it in a meta label."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _camel_to_snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def selects(monitor: Mapping[str, Any], pod: Mapping[str, Any]) -> bool:
    """Whether a PodMonitor picks this pod: namespaceSelector and selector.matchLabels (what ours use)."""
    spec = monitor["spec"]
    namespaces = spec.get("namespaceSelector") or {}
    pod_namespace = pod["metadata"].get("namespace")
    if not namespaces.get("any"):
        allowed = namespaces.get("matchNames") or [monitor["metadata"].get("namespace")]
        if pod_namespace not in allowed:
            return False
    labels = pod["metadata"].get("labels") or {}
    wanted = (spec.get("selector") or {}).get("matchLabels") or {}
    return all(labels.get(key) == value for key, value in wanted.items())


def pod_targets(
    monitor: Mapping[str, Any], endpoint: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], address_of: Any
) -> list[dict[str, Any]]:
    """Static targets with the meta labels Kubernetes service discovery gives a pod's container port."""
    targets = []
    for pod in pods:
        if not selects(monitor, pod):
            continue
        for container in pod["spec"].get("containers") or []:
            for port in container.get("ports") or []:
                if port.get("name") != endpoint.get("port"):
                    continue
                labels = {
                    "__meta_kubernetes_namespace": pod["metadata"].get("namespace", ""),
                    "__meta_kubernetes_pod_name": pod["metadata"]["name"],
                    "__meta_kubernetes_pod_container_name": container["name"],
                    "__meta_kubernetes_pod_container_port_name": port["name"],
                    **{
                        f"__meta_kubernetes_pod_label_{_sanitize(k)}": v
                        for k, v in (pod["metadata"].get("labels") or {}).items()
                    },
                }
                targets.append({"targets": [address_of(pod, container, port)], "labels": labels})
    return targets


def _jobs(monitor: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    name = f"{monitor['metadata'].get('namespace')}/{monitor['metadata']['name']}"
    for index, endpoint in enumerate(monitor["spec"].get("podMetricsEndpoints") or []):
        yield f"podMonitor/{name}/{index}", endpoint


def targets_file(directory: pathlib.Path, job: str) -> pathlib.Path:
    return directory / (_sanitize(job) + ".json")


def write_targets(
    monitors: Sequence[Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
    address_of: Any,
    directory: pathlib.Path,
) -> None:
    """The pods each PodMonitor endpoint picks, as file_sd target files (Prometheus re-reads them on change, as
    Kubernetes service discovery follows pods that come and go)."""
    directory.mkdir(parents=True, exist_ok=True)
    for monitor in monitors:
        for job, endpoint in _jobs(monitor):
            path = targets_file(directory, job)
            staged = path.with_suffix(".tmp")
            staged.write_text(json.dumps(pod_targets(monitor, endpoint, pods, address_of)))
            staged.replace(path)  # never a half-written file for Prometheus to read


def scrape_config(monitor: Mapping[str, Any], directory: pathlib.Path, *, interval: str = "1s") -> list[dict[str, Any]]:
    """One scrape job per endpoint of the PodMonitor, as the Prometheus operator writes it (its standard target
    labels namespace, container, pod, job and endpoint, then the endpoint's own relabelings), its targets from
    :func:`write_targets`' files; the scrape interval is the caller's, not the PodMonitor's."""
    name = f"{monitor['metadata'].get('namespace')}/{monitor['metadata']['name']}"
    job_label = monitor["spec"].get("jobLabel")
    jobs = []
    for job, endpoint in _jobs(monitor):
        relabel: list[dict[str, Any]] = [
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"target_label": "job", "replacement": name},
        ]
        if job_label:
            relabel.append(
                {
                    "source_labels": [f"__meta_kubernetes_pod_label_{_sanitize(job_label)}"],
                    "target_label": "job",
                    "regex": "(.+)",
                }
            )
        relabel.append({"target_label": "endpoint", "replacement": str(endpoint.get("port"))})
        relabel += [{_camel_to_snake(k): v for k, v in rule.items()} for rule in endpoint.get("relabelings") or []]
        jobs.append(
            {
                "job_name": job,
                "honor_labels": bool(endpoint.get("honorLabels", False)),
                "metrics_path": endpoint.get("path", "/metrics"),
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "file_sd_configs": [{"files": [str(targets_file(directory, job))], "refresh_interval": "1s"}],
                "relabel_configs": relabel,
                "metric_relabel_configs": [
                    {_camel_to_snake(k): v for k, v in rule.items()} for rule in endpoint.get("metricRelabelings") or []
                ],
            }
        )
    return jobs


class LocalPrometheus:
    """``with LocalPrometheus(config, rule_groups) as prom:`` a running Prometheus, stopped and removed after."""

    def __init__(
        self,
        scrape_configs: list[dict[str, Any]],
        rule_groups: Mapping[str, Any] | None = None,
        *,
        evaluation_interval: str = "1s",
        binary: str = "prometheus",
    ) -> None:
        self.scrape_configs = scrape_configs
        self.rule_groups = rule_groups
        self.evaluation_interval = evaluation_interval
        self.binary = binary
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.directory: pathlib.Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        path = (self.directory or pathlib.Path("/nonexistent")) / "prometheus.log"
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-40:])
        return ""

    def __enter__(self) -> LocalPrometheus:
        if shutil.which(self.binary) is None:
            raise PrometheusError(f"no {self.binary} on PATH (Debian: apt-get install prometheus)")
        self.directory = pathlib.Path(tempfile.mkdtemp(prefix="kubellm-prometheus-"))
        config: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "evaluation_interval": self.evaluation_interval},
            "scrape_configs": self.scrape_configs,
        }
        if self.rule_groups is not None:
            rules = self.directory / "rules.yaml"
            rules.write_text(yaml.safe_dump(dict(self.rule_groups), sort_keys=False))
            config["rule_files"] = [str(rules)]
        (self.directory / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.port = free_port()
        log = (self.directory / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1d",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.__exit__(None, None, None)
                raise PrometheusError(f"prometheus exited with {self.process.returncode}:\n{self.log}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer,
            ):
                if answer.status == 200:
                    return self
            time.sleep(0.2)
        log_text = self.log
        self.__exit__(None, None, None)
        raise PrometheusError(f"prometheus was not ready within {START_TIMEOUT_S:.0f}s:\n{log_text}")

    def __exit__(self, *_: object) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=STOP_TIMEOUT_S)
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    # The HTTP API ---------------------------------------------------------------------------------------------

    def api(self, path: str, **params: Any) -> Any:
        """GET /api/v1/<path>: its ``data``, or PrometheusError with Prometheus's own message."""
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=API_TIMEOUT_S) as answer:
                body = json.loads(answer.read(MAX_ANSWER_BYTES))
        except urllib.error.HTTPError as error:
            body = json.loads(error.read(MAX_ANSWER_BYTES) or b"{}")
        if body.get("status") != "success":
            raise PrometheusError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        result: list[dict[str, Any]] = self.api("query", **params)["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query_range", query=expr, start=start, end=end, step=step)["result"]
        return result

    def series(self, match: str, start: float, end: float) -> list[dict[str, str]]:
        found: list[dict[str, str]] = self.api("series", **{"match[]": match, "start": start, "end": end})
        return found

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self.api("targets")["activeTargets"]
        return active

    def rules(self) -> Iterator[dict[str, Any]]:
        for group in self.api("rules")["groups"]:
            yield from group["rules"]
