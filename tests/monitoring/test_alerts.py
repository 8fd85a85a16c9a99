"""The alert rules: valid for promtool, each with unit tests that fire it and keep it quiet, and a runbook entry."""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess

import pytest
import yaml

from kubellm_monitoring.contract import ROOT, rule_groups

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="no promtool on PATH (Debian: apt-get install prometheus)")
TESTS = pathlib.Path(__file__).with_name("alerts_test.yaml")
RUNBOOKS = ROOT / "docs" / "monitoring.md"


def alerts() -> list[dict[str, object]]:
    return [rule for group in rule_groups()["groups"] for rule in group["rules"] if "alert" in rule]


def promtool(tmp_path: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_groups(), sort_keys=False))
    shutil.copy(TESTS, tmp_path / TESTS.name)
    return subprocess.run(
        [str(PROMTOOL), *args], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )


@needs_promtool
def test_promtool_check_rules(tmp_path: pathlib.Path) -> None:
    checked = promtool(tmp_path, "check", "rules", "rules.yaml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in checked.stdout


@needs_promtool
def test_promtool_unit_tests_pass(tmp_path: pathlib.Path) -> None:
    tested = promtool(tmp_path, "test", "rules", TESTS.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr


@needs_promtool
def test_promtool_unit_tests_can_fail(tmp_path: pathlib.Path) -> None:
    """The same tests against rules whose thresholds moved: promtool says which alert did not behave."""
    groups = rule_groups()
    for group in groups["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "KubellmQueueSaturated":
                rule["expr"] = str(rule["expr"]).replace("> 0.8", "> 0.95")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(groups, sort_keys=False))
    shutil.copy(TESTS, tmp_path / TESTS.name)
    tested = subprocess.run(
        [str(PROMTOOL), "test", "rules", TESTS.name], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert tested.returncode != 0
    assert "KubellmQueueSaturated" in tested.stdout + tested.stderr


def test_every_alert_has_tests_that_fire_it_and_keep_it_quiet() -> None:
    tests = yaml.safe_load(TESTS.read_text())["tests"]
    fired: set[str] = set()
    quiet: set[str] = set()
    for test in tests:
        for case in test.get("alert_rule_test") or []:
            (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {str(rule["alert"]) for rule in alerts()}
    assert names - fired == set(), "alerts no test fires"
    assert names - quiet == set(), "alerts no test keeps quiet"


def test_every_alert_has_a_runbook_entry() -> None:
    text = RUNBOOKS.read_text()
    anchors = {
        re.sub(r"[^a-z0-9-]", "", h.strip().lower().replace(" ", "-")) for h in re.findall(r"^### (.+)$", text, re.M)
    }
    for rule in alerts():
        annotations = rule["annotations"]
        assert isinstance(annotations, dict)
        url = str(annotations.get("runbook_url", ""))
        assert url.endswith(f"docs/monitoring.md#{str(rule['alert']).lower()}"), url
        assert str(rule["alert"]).lower() in anchors, f"docs/monitoring.md has no '### {rule['alert']}' section"
        for key in ("summary", "description"):
            assert annotations.get(key), f"{rule['alert']} has no {key}"
