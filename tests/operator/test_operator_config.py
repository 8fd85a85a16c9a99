"""Operator settings: environment, flags, validation with the field named (pure)."""

from __future__ import annotations

import pytest

from kubellm.settings import SettingsError
from kubellm_operator.config import LogFormat, OperatorSettings, load_settings
from kubellm_operator.main import main
from kubellm_operator.render import DEFAULT_INFERENCE_IMAGE


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("KUBELLM_OPERATOR_"):
            monkeypatch.delenv(key)


def test_defaults() -> None:
    settings = load_settings([])
    assert settings.clusterwide and settings.namespaces == []
    assert settings.inference_image == DEFAULT_INFERENCE_IMAGE == "ghcr.io/kubellm/inference:0.1.0"
    assert settings.headroom_bytes == 2 * 2**30
    assert (settings.log_format, settings.standalone, settings.health_port) == (LogFormat.text, True, 8080)


@pytest.mark.parametrize(
    ("value", "expected"), [("team-a", ["team-a"]), ("team-a, team-b", ["team-a", "team-b"]), ("*", []), ("", [])]
)
def test_namespaces_from_env(monkeypatch: pytest.MonkeyPatch, value: str, expected: list[str]) -> None:
    monkeypatch.setenv("KUBELLM_OPERATOR_NAMESPACES", value)
    assert load_settings([]).namespaces == expected


def test_flags_win_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBELLM_OPERATOR_STORAGE_HEADROOM", "5Gi")
    monkeypatch.setenv("KUBELLM_OPERATOR_STANDALONE", "true")
    settings = load_settings(
        ["--storage-headroom", "1Gi", "--no-standalone", "--namespaces", "a,b", "--log-format", "json"]
    )
    assert (settings.headroom_bytes, settings.standalone, settings.namespaces) == (2**30, False, ["a", "b"])
    assert settings.log_format == LogFormat.json
    assert not settings.clusterwide


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--storage-headroom", "lots"], "--storage-headroom / KUBELLM_OPERATOR_STORAGE_HEADROOM"),
        (["--storage-headroom=-1Gi"], "--storage-headroom"),
        (["--log-format", "xml"], "--log-format / KUBELLM_OPERATOR_LOG_FORMAT"),
        (["--health-port", "70000"], "--health-port"),
        (["--summary-refresh-s=-1"], "--summary-refresh-s"),
        (["--inference-image", ""], "--inference-image"),
        (["--allowed-hub-endpoints", "https://hub.example/x?y#z"], "--allowed-hub-endpoints .*bare base URL"),
        (["--lease-duration-s", "5"], "--retry-period-s < --renew-deadline-s < --lease-duration-s"),
        (["--leader-election-name", "Not A Name"], "--leader-election-name"),
        (["--namespaces", "team-a,team-*"], "--namespaces .*'team-\\*' is not a namespace name"),
    ],
)
def test_bad_settings_name_the_field(argv: list[str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        load_settings(argv)


def test_bad_env_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBELLM_OPERATOR_WORKERS", "zero")
    with pytest.raises(SettingsError, match="KUBELLM_OPERATOR_WORKERS"):
        load_settings([])


def test_main_fails_fast_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--log-level", "loud"]) == 2
    err = capsys.readouterr().err
    assert "--log-level / KUBELLM_OPERATOR_LOG_LEVEL" in err and "Traceback" not in err


def test_main_without_credentials_exits_2(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--kubeconfig", "/nonexistent/kubeconfig", "--health-port", "0"]) == 2
    assert "no cluster credentials" in capsys.readouterr().err


def test_describe_is_one_line() -> None:
    line = OperatorSettings(namespaces=["a"], standalone=False).describe()
    assert line == (
        "watching namespaces a; default image ghcr.io/kubellm/inference:0.1.0 (GPU: "
        "ghcr.io/kubellm/inference:0.1.0-cuda); storage headroom 2Gi; kubelet summaries every 60s; peering kubellm priority 0; "
        "tenant policy: images any; service types ClusterIP,NodePort,LoadBalancer; public without auth warned; "
        "storage claims allowed; env names any"
    )


def test_json_log_format_writes_one_json_object_per_line() -> None:
    import json
    import subprocess
    import sys

    program = (
        "import logging\n"
        "from kubellm_operator.config import OperatorSettings\n"
        "from kubellm_operator.main import configure_logging\n"
        "configure_logging(OperatorSettings(log_format='json'))\n"
        "logging.getLogger('kubellm.operator').warning('LLMService %s needs %s', 'default/tiny', '4Gi')\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True)
    record = json.loads((result.stdout + result.stderr).strip().splitlines()[-1])
    assert record["message"] == "LLMService default/tiny needs 4Gi"
    assert record["severity"] == "warn"


def test_routine_watch_successes_are_filtered_but_failures_are_not() -> None:
    import logging

    from kubellm_operator.main import RoutineSuccessFilter

    def record(level: int, message: str) -> logging.LogRecord:
        return logging.LogRecord("kopf.objects", level, __file__, 1, message, None, None)

    routine = RoutineSuccessFilter()
    assert not routine.filter(record(logging.INFO, "Handler 'child_changed' succeeded."))
    assert routine.filter(record(logging.INFO, "Handler 'reconcile' succeeded."))
    assert routine.filter(record(logging.ERROR, "Handler 'child_changed' failed with an exception."))


def test_allowed_hub_endpoints_default_to_the_public_hub_and_the_operators_own() -> None:
    assert load_settings([]).hub_endpoints == {"https://huggingface.co"}
    mirror = load_settings(["--hub-endpoint", "http://Mirror.internal:8090/"])
    assert mirror.hub_endpoints == {"https://huggingface.co", "http://mirror.internal:8090"}
    listed = load_settings(["--allowed-hub-endpoints", "https://a.example, https://b.example/"])
    assert listed.hub_endpoints == {"https://a.example", "https://b.example"}
    policy = load_settings(["--egress-allow-loopback"])
    assert policy.hub_policy.allow_loopback and not policy.hub_policy.allow_private
    assert policy.pod_policy.allow_private  # pod IPs are cluster-internal by definition
