"""Unit tests of the e2e tier's own logic, run everywhere (no cluster): skip reasons, commands, parsers, processes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from e2e_support import (
    DEFAULT_CLUSTER,
    INFERENCE_PORT,
    MISSING_TOOLS_PREFIX,
    OPT_IN_REASON,
    REPO_ROOT,
    REQUIRED_ENV,
    Cluster,
    CommandFailed,
    E2ESettings,
    dump_commands,
    free_local_port,
    in_namespace,
    llmservice,
    owned_children,
    port_forward_command,
    ready_pod_count,
    required_failure,
    run,
    serving,
    skip_reason,
    table_row,
    tiny_example,
    warning_lines,
)

from kubellm_emulator.server import Emulator
from kubellm_sandbox import kind

SETTINGS = E2ESettings(cluster="demo")


# ---------------------------------------------------------------------------------------------------------
# Skip reasons
# ---------------------------------------------------------------------------------------------------------


def test_without_opt_in_the_reason_is_opt_in_and_no_tool_is_probed() -> None:
    def must_not_probe() -> list[str]:
        raise AssertionError("tools are probed only on --e2e")

    assert skip_reason(opted_in=False, missing=must_not_probe) == OPT_IN_REASON


def test_opted_in_with_every_tool_runs() -> None:
    assert skip_reason(opted_in=True, missing=lambda: []) is None


def test_missing_tools_names_each_one() -> None:
    found = {"kubectl": "/usr/bin/kubectl"}
    missing = kind.missing_tools(
        which=found.get, docker_problem=lambda: pytest.fail("no docker client, no engine probe")
    )
    assert missing == ["docker (not on PATH)", "kind (not on PATH)"]
    reason = skip_reason(opted_in=True, missing=lambda: missing)
    assert reason == "docker/kind not found: docker (not on PATH); kind (not on PATH)"


def test_a_required_tier_turns_a_skip_into_an_error() -> None:
    required = E2ESettings.from_env({"KUBELLM_E2E_REQUIRED": "1"})
    assert required.required and not E2ESettings.from_env({}).required
    assert required_failure(required, None) is None
    assert required_failure(E2ESettings(), OPT_IN_REASON) is None
    assert required_failure(required, OPT_IN_REASON) == (
        f"KUBELLM_E2E_REQUIRED=1 but the e2e tier would be skipped: {OPT_IN_REASON}"
    )


@pytest.mark.parametrize("opt_in", [["--e2e"], []], ids=["tools-missing", "not-opted-in"])
def test_a_required_tier_that_cannot_run_fails_the_pytest_run(opt_in: list[str]) -> None:
    """What CI sees: the scenarios, with KUBELLM_E2E_REQUIRED=1 and no docker, kind or kubectl on PATH, end the
    run with an error naming the reason, not with every scenario skipped and the job green."""
    done = _pytest_scenarios(*opt_in, env={REQUIRED_ENV: "1"})
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
    expected = MISSING_TOOLS_PREFIX if opt_in else OPT_IN_REASON
    assert f"KUBELLM_E2E_REQUIRED=1 but the e2e tier would be skipped: {expected}" in done.stdout + done.stderr


def test_a_required_tier_in_which_no_scenario_ran_fails_the_pytest_run(tmp_path: Path) -> None:
    """Tools present (stand-ins that answer `docker info`), opted in, but every scenario deselected: with
    KUBELLM_E2E_REQUIRED=1 the run fails instead of passing with nothing tested."""
    for tool in ("docker", "kind", "kubectl"):
        (tmp_path / tool).write_text("#!/bin/sh\necho 29.0.0\n")
        (tmp_path / tool).chmod(0o755)
    path = f"{tmp_path}:{Path(sys.executable).parent}"
    done = _pytest_scenarios("--e2e", "-k", "no_such_scenario", env={REQUIRED_ENV: "1", "PATH": path})
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout + done.stderr
    assert "KUBELLM_E2E_REQUIRED=1 but the e2e tier would be skipped: no e2e test ran" in done.stdout


def test_a_docker_client_without_an_engine_is_missing_the_engine() -> None:
    def everywhere(tool: str) -> str:
        return f"/usr/bin/{tool}"

    problem = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"
    missing = kind.missing_tools(which=everywhere, docker_problem=lambda: problem)
    assert missing == [f"a running Docker engine (`docker info` failed: {problem})"]
    assert kind.missing_tools(which=everywhere, docker_problem=lambda: None) == []


def _pytest_scenarios(*options: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # PATH holds only this Python's directory, so docker, kind and kubectl are missing wherever this runs; the
    # CI job's KUBELLM_E2E_REQUIRED=1 is not passed on unless `env` sets it.
    base = {**os.environ, "PATH": str(Path(sys.executable).parent), REQUIRED_ENV: ""}
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *options]
    return subprocess.run(
        [*command, "tests/e2e/test_kind_scenarios.py"],
        cwd=REPO_ROOT,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_scenarios_are_skipped_without_opt_in() -> None:
    done = _pytest_scenarios()
    assert done.returncode == 0, done.stdout + done.stderr
    assert OPT_IN_REASON in done.stdout, done.stdout
    assert " passed" not in done.stdout and " failed" not in done.stdout and " error" not in done.stdout, done.stdout


def test_the_scenarios_are_skipped_naming_the_missing_tools_with_opt_in() -> None:
    done = _pytest_scenarios("--e2e")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{MISSING_TOOLS_PREFIX}docker (not on PATH); kind (not on PATH); kubectl (not on PATH)" in done.stdout
    assert " passed" not in done.stdout and " failed" not in done.stdout and " error" not in done.stdout, done.stdout


# ---------------------------------------------------------------------------------------------------------
# Settings and commands
# ---------------------------------------------------------------------------------------------------------


def test_settings_from_the_environment() -> None:
    assert E2ESettings.from_env({}) == E2ESettings()
    assert E2ESettings.from_env({}).cluster == DEFAULT_CLUSTER
    chosen = E2ESettings.from_env(
        {"KUBELLM_E2E_CLUSTER": "mine", "KUBELLM_E2E_KEEP": "1", "KUBELLM_E2E_DUMP_DIR": "/tmp/dumps"}
    )
    assert (chosen.cluster, chosen.keep, chosen.dump_dir, chosen.context) == (
        "mine",
        True,
        Path("/tmp/dumps"),
        "kind-mine",
    )
    assert not E2ESettings.from_env({"KUBELLM_E2E_KEEP": "0"}).keep


def test_every_kubectl_command_names_the_kind_context() -> None:
    commands = [*kind.install_commands(SETTINGS.cluster), *dump_commands(SETTINGS, "ns", ["pod/a"])]
    commands.append(port_forward_command(SETTINGS, "ns", "tiny", 8080))
    for command in commands:
        assert command[:3] == ["kubectl", "--context", "kind-demo"], command


def test_the_images_built_are_the_images_loaded_and_installed() -> None:
    built = [command[command.index("-t") + 1] for command in kind.build_commands()]
    assert built == [kind.OPERATOR_IMAGE, kind.INFERENCE_IMAGE]
    for command in kind.build_commands():
        assert (REPO_ROOT / command[command.index("-f") + 1]).name.startswith("Dockerfile.")
    assert kind.load_images_command(SETTINGS.cluster)[-2:] == built
    installed = " ".join(" ".join(command) for command in kind.install_commands(SETTINGS.cluster))
    assert f"operator={kind.OPERATOR_IMAGE}" in installed
    assert f"KUBELLM_OPERATOR_INFERENCE_IMAGE={kind.INFERENCE_IMAGE}" in installed
    assert kind.install_commands(SETTINGS.cluster)[0][-3:] == ["apply", "-k", "deploy/"]
    assert kind.install_commands(SETTINGS.cluster)[-2][5:7] == ["rollout", "status"]
    assert kind.install_commands(SETTINGS.cluster)[-1][5:7] == ["wait", "--for=condition=Available"]


def test_the_cluster_comes_from_the_config_in_the_repo() -> None:
    command = kind.create_cluster_command(SETTINGS.cluster)
    assert command[:5] == ["kind", "create", "cluster", "--name", "demo"]
    assert REPO_ROOT / command[command.index("--config") + 1] == kind.KIND_CONFIG
    config = yaml.safe_load(kind.KIND_CONFIG.read_text())
    assert config["kind"] == "Cluster"
    assert [node["role"] for node in config["nodes"]] == ["control-plane", "worker"]


def test_the_failure_dump_covers_the_llmservice_workloads_pods_events_and_operator() -> None:
    commands = [" ".join(command[3:]) for command in dump_commands(SETTINGS, "ns", ["pod/tiny-1", "pod/tiny-2"])]
    assert "-n ns get llmservices -o yaml" in commands
    assert "-n ns get deployments,replicasets,services,pods -o wide" in commands
    assert "-n ns describe pods" in commands
    assert "-n ns get events --sort-by=.lastTimestamp" in commands
    assert "-n ns logs pod/tiny-1 --all-containers --tail=200" in commands
    assert "-n ns logs pod/tiny-2 --all-containers --tail=200" in commands
    assert "-n kubellm-system logs deployment/kubellm-operator --tail=300" in commands


# ---------------------------------------------------------------------------------------------------------
# Parsers and manifests
# ---------------------------------------------------------------------------------------------------------


def test_table_row_reads_kubectl_get_output() -> None:
    table = "NAME   MODEL                            READY   PHASE   AGE\ntiny   embedded:smollm2-135m-instruct   1/1     Ready   2m\n"
    assert table_row(table, "tiny") == {
        "NAME": "tiny",
        "MODEL": "embedded:smollm2-135m-instruct",
        "READY": "1/1",
        "PHASE": "Ready",
        "AGE": "2m",
    }
    reason_not_set = "NAME   READY   REASON   AGE\nother  0/1              5s\ntiny   1/1     Ready    2m\n"
    assert table_row(reason_not_set, "other") == {"NAME": "other", "READY": "0/1", "REASON": "", "AGE": "5s"}
    with pytest.raises(AssertionError, match="no row 'other'"):
        table_row(table, "other")
    with pytest.raises(AssertionError, match="empty table"):
        table_row("", "tiny")


def test_owned_children_follow_owner_references() -> None:
    def child(kind: str, name: str, uid: str | None) -> dict[str, object]:
        meta: dict[str, object] = {"name": name}
        if uid is not None:
            meta["ownerReferences"] = [{"kind": "LLMService", "uid": uid}]
        return {"kind": kind, "metadata": meta}

    items = [child("Service", "tiny", "u1"), child("Deployment", "tiny", "u1"), child("Service", "x", "u2")]
    items.append(child("Service", "kubernetes", None))
    assert owned_children(items, "u1") == ["deployment/tiny", "service/tiny"]
    assert owned_children(items, "u3") == []


def test_ready_pods_exclude_unready_and_terminating() -> None:
    def pod(ready: str, deleting: bool = False) -> dict[str, object]:
        meta = {"deletionTimestamp": "2026-01-01T00:00:00Z"} if deleting else {}
        return {"metadata": meta, "status": {"conditions": [{"type": "Ready", "status": ready}]}}

    assert ready_pod_count([pod("True"), pod("True"), pod("False"), pod("True", deleting=True), {}]) == 2


def test_warning_lines_name_the_llmservice() -> None:
    log = "\n".join(
        [
            "[2026-11-27 08:00:00,000] kopf.objects [WARNING ] [ns-a/too-big] no eligible node has 100Ti free",
            "[2026-11-27 08:00:00,000] kopf.objects [INFO    ] [ns-a/too-big] reconciled",
            "[2026-11-27 08:00:00,000] kopf.objects [WARNING ] [ns-b/too-big] no eligible node has 100Ti free",
        ]
    )
    assert warning_lines(log, "ns-a", "too-big") == [log.splitlines()[0]]
    assert warning_lines(log, "ns-c", "too-big") == []


def test_manifests_land_in_the_scenario_namespace_and_use_loaded_images() -> None:
    example = tiny_example()
    placed = in_namespace(example, "e2e-x")
    assert placed["metadata"]["namespace"] == "e2e-x"
    assert placed["spec"]["imagePullPolicy"] == "IfNotPresent"
    assert example["metadata"].get("namespace") != "e2e-x"  # the example itself is untouched
    assert placed["metadata"]["name"] == "tiny"
    assert placed["spec"]["model"]["name"] == "embedded:smollm2-135m-instruct"
    assert placed["spec"]["service"]["port"] == INFERENCE_PORT

    too_big = llmservice("too-big", storage={"request": "100Ti"})
    assert too_big["spec"] == {"model": {"name": "embedded:smollm2-135m-instruct"}, "storage": {"request": "100Ti"}}


def test_scenario_manifests_are_valid_llmservices() -> None:
    # The scenarios that expect success must send what the API accepts, and the invalid ones what it refuses.
    from kubellm_operator.api import LLMServiceSpec

    LLMServiceSpec.model_validate(in_namespace(tiny_example(), "e2e-x")["spec"])
    LLMServiceSpec.model_validate(in_namespace(llmservice("too-big", storage={"request": "100Ti"}), "e2e-x")["spec"])
    for invalid in ({"replicas": -1}, {"storage": {"request": "2Gi", "limit": "1Gi"}}):
        with pytest.raises(ValueError):
            LLMServiceSpec.model_validate(llmservice("invalid", **invalid)["spec"])


# ---------------------------------------------------------------------------------------------------------
# Commands and background processes, for real
# ---------------------------------------------------------------------------------------------------------


def test_run_reports_the_command_and_its_output_on_failure() -> None:
    command = [sys.executable, "-c", "import sys; print('out'); sys.exit('went wrong')"]
    with pytest.raises(CommandFailed, match=r"exited 1[\s\S]*out[\s\S]*went wrong"):
        run(command)
    assert run(command, check=False).returncode == 1


def test_run_is_bounded() -> None:
    with pytest.raises(CommandFailed, match="ran past its bound"):
        run([sys.executable, "-c", "import time; time.sleep(30)"], timeout_s=0.5)


def test_free_local_port_is_bindable() -> None:
    port = free_local_port()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))


def test_serving_waits_for_the_port_and_stops_the_process() -> None:
    port = free_local_port()
    command = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)]
    with serving(command, port, timeout_s=30) as process:
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200
    assert process.returncode is not None


def test_serving_reports_a_process_that_exits_before_listening() -> None:
    port = free_local_port()
    command = [sys.executable, "-c", "import sys; print('no such service'); sys.exit(1)"]
    with (
        pytest.raises(CommandFailed, match=r"exited 1, port \d+ never accepted:\nno such service"),
        serving(command, port, timeout_s=30),
    ):
        pytest.fail("the block must not run")


def test_docs_list_every_session_and_dump_command() -> None:
    """docs/e2e.md promises every command the suite runs, so a user can run them by hand; keep it true."""
    docs = (REPO_ROOT / "docs" / "e2e.md").read_text()
    settings = E2ESettings()
    commands = [
        *kind.build_commands(),
        kind.list_clusters_command(),
        kind.export_kubeconfig_command(settings.cluster),
        kind.create_cluster_command(settings.cluster),
        kind.load_images_command(settings.cluster),
        *kind.install_commands(settings.cluster),
        kind.delete_cluster_command(settings.cluster),
        *dump_commands(settings, "$NS", ["pod/<each pod>"]),
    ]
    for command in commands:
        assert " ".join(command) in docs, command


# ---------------------------------------------------------------------------------------------------------
# The Cluster helper with real kubectl, against the in-repo API emulator instead of kind
# ---------------------------------------------------------------------------------------------------------


async def test_cluster_helper_drives_real_kubectl(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """apply, get, wait, the table, rejections and the dump, as the scenarios use them, minus kind."""
    kubeconfig = emulator.write_kubeconfig(tmp_path / "kubeconfig", context=SETTINGS.context)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("KUBECACHEDIR", str(tmp_path / "kube-cache"))
    emulator.apply_manifests(REPO_ROOT / "crds" / "kubellm.dev_llmservices.yaml")
    cluster = Cluster(SETTINGS)

    def scenario() -> None:
        # `kubectl create namespace` sends protobuf, which the emulator does not read; apply sends JSON.
        cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "e2e-x"}})
        cluster.apply(in_namespace(tiny_example(), "e2e-x"))
        status = {"status": {"phase": "Ready", "ready": "1/1"}}
        patch = ["patch", "llmservices/tiny", "--subresource=status", "--type=merge", "-p", json.dumps(status)]
        cluster.kubectl("-n", "e2e-x", *patch)
        cluster.wait("e2e-x", "jsonpath={.status.ready}=1/1", "llmservices/tiny", timeout_s=20)

        row = table_row(cluster.kubectl("-n", "e2e-x", "get", "llmservices").stdout, "tiny")
        assert (row["READY"], row["PHASE"], row["REASON"]) == ("1/1", "Ready", ""), row
        assert cluster.get_json("e2e-x", "llmservices/tiny")["spec"]["imagePullPolicy"] == "IfNotPresent"

        rejected = cluster.apply(in_namespace(llmservice("invalid", replicas=-1), "e2e-x"), check=False)
        assert rejected.returncode != 0 and "spec.replicas" in rejected.stderr, rejected.stderr
        rejected = cluster.apply(
            in_namespace(llmservice("invalid", storage={"request": "2Gi", "limit": "1Gi"}), "e2e-x"), check=False
        )
        assert rejected.returncode != 0 and "spec.storage.limit" in rejected.stderr, rejected.stderr

        dump = cluster.dump("e2e-x")
        assert "$ kubectl --context kind-demo -n e2e-x get llmservices -o yaml\n" in dump
        assert "name: tiny" in dump
        assert "logs deployment/kubellm-operator" in dump  # shown even though it fails here (no operator)

    await asyncio.to_thread(scenario)


def test_the_ci_workflow_runs_make_e2e_with_pinned_tools() -> None:
    workflow = yaml.safe_load((REPO_ROOT / ".github" / "workflows" / "e2e.yml").read_text())
    assert re.fullmatch(r"v\d+\.\d+\.\d+", workflow["env"]["KIND_VERSION"]), workflow["env"]
    assert re.fullmatch(r"v\d+\.\d+\.\d+", workflow["env"]["KUBECTL_VERSION"]), workflow["env"]
    steps = workflow["jobs"]["kind"]["steps"]
    python = next(step for step in steps if step.get("uses", "").startswith("actions/setup-python@"))
    assert python["with"]["python-version"] == "3.11"
    assert [step["run"] for step in steps if step.get("name") == "make e2e"] == ["make e2e"]
    # A skip is a failure there, and a failed build, load or install leaves the cluster for the export and upload.
    assert workflow["env"]["KUBELLM_E2E_REQUIRED"] == "1" and workflow["env"]["KUBELLM_E2E_KEEP"] == "1"
    after = steps[[step.get("name") for step in steps].index("make e2e") + 1 :]
    export, upload, delete = after
    assert "kind export logs build/e2e-dumps/" in export["run"] and export["if"] == "failure() || cancelled()"
    assert upload["uses"].startswith("actions/upload-artifact@") and upload["with"]["path"] == "build/e2e-dumps"
    assert upload["if"] == export["if"] and delete["if"] == "always()" and "kind delete cluster" in delete["run"]
    assert any("sha256sum --check" in step.get("run", "") and "kind" in step["run"] for step in steps)
