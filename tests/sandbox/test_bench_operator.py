"""`kubellm bench operator`: its pure parts table-tested, and one small run of the real thing as a CI smoke test.

The smoke run (20 LLMServices, 5 nodes, 100 foreign pods) asserts nothing about time: every service converges,
every spec change reaches its Deployment, a restart over the converged services writes nothing, the bench stops
every operator it started, the idle cluster gets no status write, and a node flip writes exactly the statuses whose
storage verdict it flips.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import pytest

from kubellm import cli
from kubellm_emulator import Emulator
from kubellm_operator.crd import crd
from kubellm_sandbox.bench_operator import Call, RequestLog, cache_gi, percentile, tally
from kubellm_sandbox.processes import process_start_time

SMOKE = {"services": 20, "nodes": 5, "foreign_pods": 100}

# --------------------------------------------------------------------------------------------------------------
# Pure parts
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "query", "expected"),
    [
        ("GET", "/apis/kubellm.dev/v1alpha1/namespaces/bench/llmservices/a", {}, ("get", "llmservices", "a")),
        ("GET", "/api/v1/pods", {"watch": "true"}, ("watch", "pods", None)),
        ("GET", "/api/v1/namespaces/bench/pods", {"labelSelector": "x"}, ("list", "pods", None)),
        (
            "PATCH",
            "/apis/kubellm.dev/v1alpha1/namespaces/bench/llmservices/a/status",
            {},
            ("patch", "llmservices/status", "a"),
        ),
        ("PATCH", "/apis/apps/v1/namespaces/bench/deployments/a", {}, ("patch", "deployments", "a")),
        ("POST", "/api/v1/namespaces/bench/events", {}, ("create", "events", None)),
        ("GET", "/api/v1/nodes/node-001/proxy/stats/summary", {}, ("get", "nodes/proxy/stats/summary", "node-001")),
        ("GET", "/version", {}, ("discovery", "/version", None)),
    ],
)
def test_requests_are_classified_by_verb_and_resource(
    method: str, path: str, query: dict[str, str], expected: tuple[str, str, str | None]
) -> None:
    emulator = Emulator()
    emulator.apply_manifest(crd())
    call = RequestLog(emulator)._classify(method, path, query, 7)
    assert (call.verb, call.resource, call.name) == expected
    assert call.is_write == (method != "GET")


def test_tally_counts_by_verb_and_resource_most_first() -> None:
    calls = [
        Call(i, verb, resource, "bench", None)
        for i, (verb, resource) in enumerate(
            [("get", "pods"), ("patch", "llmservices/status"), ("get", "pods"), ("get", "pods")]
        )
    ]
    assert tally(calls) == {"get pods": 3, "patch llmservices/status": 1}
    assert tally(calls, per_min=0.5) == {"get pods": 6, "patch llmservices/status": 2}


@pytest.mark.parametrize(
    ("values", "fraction", "expected"),
    [
        ([], 0.5, None),
        ([3.0], 0.99, 3.0),
        ([4.0, 1.0, 3.0, 2.0], 0.5, 2.0),
        ([float(i) for i in range(1, 51)], 0.99, 50.0),
    ],
)
def test_percentile_is_nearest_rank(values: list[float], fraction: float, expected: float | None) -> None:
    assert percentile(values, fraction) == expected


def test_every_tenth_service_needs_the_big_node() -> None:
    sizes = [cache_gi(i) for i in range(20)]
    assert [i for i, size in enumerate(sizes) if size == 120] == [9, 19]
    assert set(sizes) == {1, 10, 30, 120}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--services", "0", "--json", "x.json"], "argument --services: must be at least 1, got 0"),
        (["--nodes", "1", "--json", "x.json"], "argument --nodes: must be at least 2, got 1"),
        (["--idle-seconds", "soon", "--json", "x.json"], "argument --idle-seconds: must be a number, got 'soon'"),
        (["--services", "3"], "the following arguments are required: --json"),
    ],
)
def test_bad_arguments_name_the_flag(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["bench", "operator", *argv])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_bench_operator_and_bench_reach_their_own_modules(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    (tmp_path / "kubellm_fake_bench.py").write_text(
        "def main(argv):\n    print('inference bench', argv)\n    return 0\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.DELEGATES, "bench", cli.Delegate("kubellm_fake_bench", "inference", "fake"))
    assert cli.main(["bench", "--concurrency", "1"]) == 0
    assert capsys.readouterr().out == "inference bench ['--concurrency', '1']\n"
    with pytest.raises(SystemExit) as exited:
        cli.main(["bench", "operator", "--help"])
    assert exited.value.code == 0
    assert "usage: kubellm bench operator" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------------------
# The smoke run
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One bounded run of `kubellm bench operator` at the smoke size, as a user runs it."""
    workdir = tmp_path_factory.mktemp("bench-operator")
    output = workdir / "result.json"
    command = [
        sys.executable,
        "-m",
        "kubellm.cli",
        "bench",
        "operator",
        *(f"--{key.replace('_', '-')}={value}" for key, value in SMOKE.items()),
        "--idle-seconds=10",
        "--summary-refresh-s=3",
        "--spec-changes=5",
        "--converge-timeout-s=120",
        f"--json={output}",
        f"--workdir={workdir}",
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=280, env=dict(os.environ), check=False)
    log = (workdir / "operator.log").read_text(errors="replace") if (workdir / "operator.log").exists() else ""
    assert run.returncode == 0, f"{run.stderr}\n--- operator log (tail) ---\n{log[-3000:]}"
    result: dict[str, Any] = json.loads(output.read_text())
    result["_stderr"] = run.stderr
    return result


@pytest.mark.slow
def test_smoke_every_service_converges_and_restart_writes_nothing(smoke: dict[str, Any]) -> None:
    assert smoke["converged"] == SMOKE["services"], smoke["_stderr"]
    assert smoke["converge_s"] is not None
    for key in (
        "requests_per_service_to_converge",
        "idle_requests_per_min",
        "idle_status_writes_per_min",
        "spec_change_to_deployment_p50_s",
        "spec_change_to_deployment_p99_s",
        "operator_rss_mb",
    ):
        assert isinstance(smoke[key], int | float), key
    assert smoke["spec_changes_done"] == 5
    assert smoke["storage_flip"]["affected"] == 2 and smoke["storage_flip"]["flipped"]
    assert smoke["restart_resumed"] and smoke["restart_writes"] == 0, smoke["restart_writes_by_verb_resource"]
    assert smoke["lost_requests"] == 0
    # The bench stops every operator process it started.
    assert len(smoke["operator_pids"]) == 2
    assert all(process_start_time(pid) is None for pid in smoke["operator_pids"])


@pytest.mark.slow
def test_smoke_idle_cluster_gets_no_status_writes(smoke: dict[str, Any]) -> None:
    assert smoke["idle_status_writes_per_min"] == 0, smoke["idle_requests_per_min_by_verb_resource"]


@pytest.mark.slow
def test_smoke_a_node_flip_writes_exactly_the_affected_statuses(smoke: dict[str, Any]) -> None:
    assert smoke["storage_flip"]["exactly_affected"], smoke["storage_flip"]
