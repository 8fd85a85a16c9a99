"""The pod-to-flags translation of the smoke tests and their opt-in (hermetic: no engine runs here)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from engine import OPT_IN_ENV, choose_engine
from podspec import UntranslatableError, container_run

from kubellm_operator.api import LLMService
from kubellm_operator.render import render

ROOT = Path(__file__).resolve().parents[2]


def tiny_deployment() -> dict[str, Any]:
    tiny = LLMService.from_object(yaml.safe_load((ROOT / "examples" / "tiny-smollm2.yaml").read_text()))
    (deployment,) = [doc for doc in render(tiny, image_default="kubellm/inference:dev") if doc["kind"] == "Deployment"]
    return deployment


def test_the_rendered_pod_becomes_the_flags_a_kubelet_would_apply() -> None:
    run = container_run(tiny_deployment())
    flags = run.flags
    assert flags[flags.index("--user") + 1] == "10001:10001"
    assert flags[flags.index("--group-add") + 1] == "10001"
    assert "--read-only" in flags
    assert flags[flags.index("--cap-drop") + 1] == "ALL"
    assert flags[flags.index("--security-opt") + 1] == "no-new-privileges"
    assert flags[flags.index("--memory") + 1] == str(2 * 1024**3)
    assert "--env" in flags and "KUBELLM_MODEL=embedded:smollm2-135m-instruct" in flags and "HOME=/tmp" in flags
    tmpfs = [flags[i + 1] for i, flag in enumerate(flags) if flag == "--tmpfs"]
    assert tmpfs == ["/var/cache/kubellm:rw,exec,mode=0777,size=1073741824", "/tmp:rw,exec,mode=0777"]
    assert run.image == "kubellm/inference:dev" and run.ports == {"http": 5000} and run.grace_s == 45
    assert run.startup is not None and (run.startup.path, run.startup.port, run.startup.budget_s) == (
        "/readyz",
        5000,
        300,
    )
    assert run.liveness is not None and run.liveness.exec_command()[:2] == ["python", "-c"]
    assert "http://127.0.0.1:5000/livez" in run.liveness.exec_command()[2]
    # `command` replaces the image's entrypoint; the image comes after every flag.
    assert run.run_args(["-p", "1:5000"])[-4:] == ["--entrypoint", "kubellm", "kubellm/inference:dev", "serve"]


def test_args_alone_keep_the_image_entrypoint_and_env_overrides_replace_values() -> None:
    (operator,) = [doc for doc in yaml.safe_load_all((ROOT / "deploy" / "operator.yaml").read_text()) if doc]
    run = container_run(operator, env_overrides={"KUBELLM_OPERATOR_HEALTH_PORT": "18080"})
    assert run.run_args([])[-2:] == ["ghcr.io/kubellm/operator:0.1.0", "operator"]
    assert "--entrypoint" not in run.run_args([])
    assert "KUBELLM_OPERATOR_HEALTH_PORT=18080" in run.flags and "KUBELLM_OPERATOR_HEALTH_PORT=8080" not in run.flags
    assert run.liveness is not None and (run.liveness.path, run.liveness.port) == ("/healthz", 8080)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (
            lambda pod: pod["volumes"].__setitem__(
                0, {"name": "model-cache", "persistentVolumeClaim": {"claimName": "c"}}
            ),
            "persistentVolumeClaim",
        ),
        (lambda pod: pod["containers"][0]["env"].append({"name": "X", "valueFrom": {"fieldRef": {}}}), "env X"),
        (lambda pod: pod["securityContext"].pop("runAsUser"), "runAsUser"),
        (lambda pod: pod["containers"].append(pod["containers"][0]), "exactly one container"),
    ],
)
def test_what_an_engine_cannot_reproduce_is_refused_by_name(change: Any, named: str) -> None:
    deployment = copy.deepcopy(tiny_deployment())
    change(deployment["spec"]["template"]["spec"])
    with pytest.raises(UntranslatableError, match=named):
        container_run(deployment)


def test_the_smoke_tests_are_opt_in_and_say_why_they_skip() -> None:
    assert choose_engine({}, can_run=lambda _: True)[1].startswith("image smoke tests are opt-in")
    assert choose_engine({OPT_IN_ENV: "1"}, can_run=lambda name: name == "podman") == ("podman", "")
    assert choose_engine({OPT_IN_ENV: "1"}, can_run=lambda _: True) == ("docker", "")
    assert choose_engine({OPT_IN_ENV: "docker"}, can_run=lambda name: name == "podman")[0] is None
    assert "no container engine can run" in choose_engine({OPT_IN_ENV: "1"}, can_run=lambda _: False)[1]
    assert "use 1, podman or docker" in choose_engine({OPT_IN_ENV: "containerd"}, can_run=lambda _: True)[1]
