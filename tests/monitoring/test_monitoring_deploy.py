"""deploy/components/monitoring: it builds with deploy/, every object validates (the built-in kinds against the
Kubernetes schemas, the Prometheus operator's kinds against its CRD fields), the PodMonitors select what the
operator renders, and the dashboards are the generator's, well-formed, and shipped unchanged in the ConfigMaps."""

from __future__ import annotations

import copy
import json
import os
import pathlib
import shutil
import subprocess
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_operator_schema import SCHEMAS

from kubellm_monitoring import dashboards
from kubellm_monitoring.contract import DASHBOARDS, ROOT
from kubellm_monitoring.prometheus import selects
from kubellm_operator import render
from kubellm_operator.api import LLMService

K8S_VERSIONS = ["1.32.0", kubernetes_validate.utils.latest_version()]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not found: `kubectl kustomize` cannot run (CI installs kubernetes-client)")
    # An overlay as docs/monitoring.md describes it (kustomize wants relative paths to other kustomizations).
    overlay = pathlib.Path(tmp_path_factory.mktemp("overlay"))
    deploy = os.path.relpath(ROOT / "deploy", overlay)
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump({"resources": [deploy], "components": [f"{deploy}/components/monitoring"]})
    )
    result = subprocess.run(
        [kubectl, "kustomize", str(overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def of_kind(built: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in built if doc["kind"] == kind]


def test_the_component_adds_monitors_rules_and_dashboards(built: list[dict[str, Any]]) -> None:
    added = sorted(
        (d["kind"], d["metadata"]["name"], d["metadata"].get("namespace"))
        for d in built
        if d["kind"] in ("PodMonitor", "PrometheusRule", "ConfigMap")
    )
    assert added == [
        ("ConfigMap", "kubellm-dashboard-gateway", "kubellm-system"),
        ("ConfigMap", "kubellm-dashboard-operator", "kubellm-system"),
        ("ConfigMap", "kubellm-dashboard-serving", "kubellm-system"),
        ("PodMonitor", "kubellm-gateway", "kubellm-system"),
        ("PodMonitor", "kubellm-inference", "kubellm-system"),
        ("PodMonitor", "kubellm-operator", "kubellm-system"),
        ("PrometheusRule", "kubellm", "kubellm-system"),
    ]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_builtin_kinds_validate(built: list[dict[str, Any]], version: str) -> None:
    for doc in built:
        if doc["kind"] not in ("CustomResourceDefinition", *SCHEMAS):
            kubernetes_validate.validate(doc, version, strict=True)


def test_prometheus_operator_kinds_validate_against_its_crd_fields(built: list[dict[str, Any]]) -> None:
    checked = [doc for doc in built if doc["kind"] in SCHEMAS]
    assert len(checked) == 4
    for doc in checked:
        jsonschema.validate(doc, SCHEMAS[doc["kind"]])


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "podMetricsEndpoints", 0, "honourLabels"), True),  # misspelt: kubectl refuses unknown fields
        (("spec", "podMetricsEndpoints", 0, "interval"), "30 seconds"),
        (("spec", "podMetricsEndpoints", 0, "relabelings", 0, "action"), "rename"),
        (("spec", "namespaceSelector", "any"), "yes"),
    ],
)
def test_the_schema_refuses_what_the_crd_refuses(
    built: list[dict[str, Any]], path: tuple[Any, ...], value: Any
) -> None:
    inference = copy.deepcopy(
        next(d for d in of_kind(built, "PodMonitor") if d["metadata"]["name"] == "kubellm-inference")
    )
    node: Any = inference
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(inference, SCHEMAS["PodMonitor"])


def test_the_inference_podmonitor_selects_the_rendered_pods_port(built: list[dict[str, Any]]) -> None:
    """Labels and port name as the operator renders them, in any namespace."""
    llms = LLMService.model_validate(
        {
            "apiVersion": "kubellm.dev/v1alpha1",
            "kind": "LLMService",
            "metadata": {"name": "chat", "namespace": "team-a"},
            "spec": {"model": {"name": "embedded:smollm2-135m-instruct"}},
        }
    )
    deployment = render.render_deployment(llms, image_default="x")
    pod = {
        "metadata": {**deployment["spec"]["template"]["metadata"], "namespace": "team-a"},
        "spec": deployment["spec"]["template"]["spec"],
    }
    monitors = {d["metadata"]["name"]: d for d in of_kind(built, "PodMonitor")}
    assert selects(monitors["kubellm-inference"], pod)
    assert not selects(monitors["kubellm-operator"], pod)
    [endpoint] = monitors["kubellm-inference"]["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in {p["name"] for c in pod["spec"]["containers"] for p in c["ports"]}
    label = endpoint["relabelings"][0]["sourceLabels"][0].removeprefix("__meta_kubernetes_pod_label_")
    assert label == render.SELECTOR_LABEL.replace(".", "_").replace("/", "_")


def test_the_operator_podmonitor_selects_deploys_operator(built: list[dict[str, Any]]) -> None:
    [deployment] = of_kind(built, "Deployment")
    template = deployment["spec"]["template"]
    pod = {
        "metadata": {**template["metadata"], "namespace": deployment["metadata"]["namespace"]},
        "spec": template["spec"],
    }
    monitor = next(d for d in of_kind(built, "PodMonitor") if d["metadata"]["name"] == "kubellm-operator")
    assert selects(monitor, pod)
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in {p["name"] for c in pod["spec"]["containers"] for p in c["ports"]}
    assert endpoint["honorLabels"] is True  # the per-LLMService series' own namespace label


def test_the_dashboard_files_are_the_generators() -> None:
    for name, board in dashboards.dashboards().items():
        assert (DASHBOARDS / name).read_text() == dashboards.render(board), (
            f"run `kubellm monitoring dashboards` ({name})"
        )
    assert sorted(p.name for p in DASHBOARDS.glob("*.json")) == sorted(dashboards.dashboards())


def test_the_configmaps_carry_the_files_unchanged_for_grafanas_sidecar(built: list[dict[str, Any]]) -> None:
    for config_map in of_kind(built, "ConfigMap"):
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        [(name, text)] = config_map["data"].items()
        assert text == (DASHBOARDS / name).read_text()


GRAFANA_DASHBOARD = {
    "type": "object",
    "required": ["uid", "title", "schemaVersion", "panels", "templating", "time"],
    "properties": {
        "uid": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,40}$"},
        "title": {"type": "string", "minLength": 1},
        "schemaVersion": {"type": "integer", "minimum": 36},
        "templating": {
            "type": "object",
            "required": ["list"],
            "properties": {
                "list": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "type"],
                        "properties": {"type": {"enum": ["query", "datasource", "custom", "constant", "interval"]}},
                    },
                }
            },
        },
        "panels": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["id", "type", "title", "gridPos", "datasource", "targets"],
                "properties": {
                    "id": {"type": "integer"},
                    "type": {"enum": ["timeseries", "stat", "table", "gauge", "bargauge", "state-timeline"]},
                    "gridPos": {
                        "type": "object",
                        "required": ["h", "w", "x", "y"],
                        "properties": {
                            "w": {"type": "integer", "minimum": 1, "maximum": 24},
                            "x": {"type": "integer", "minimum": 0, "maximum": 23},
                        },
                    },
                    "datasource": {"const": {"type": "prometheus", "uid": "${datasource}"}},
                    "targets": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["refId", "expr"],
                            "properties": {"refId": {"type": "string"}, "expr": {"type": "string", "minLength": 1}},
                        },
                    },
                },
            },
        },
    },
}


@pytest.mark.parametrize("name", sorted(dashboards.dashboards()))
def test_each_dashboard_is_well_formed(name: str) -> None:
    board = json.loads((DASHBOARDS / name).read_text())
    jsonschema.validate(board, GRAFANA_DASHBOARD)
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        refs = [t["refId"] for t in panel["targets"]]
        assert len(set(refs)) == len(refs), panel["title"]
    variables = {v["name"] for v in board["templating"]["list"]}
    for panel in panels:
        for target in panel["targets"]:
            used = {word.strip("${}") for word in target["expr"].split("$")[1:] for word in [word.split('"')[0]]}
            assert {u for u in used if not u.startswith("__")} <= variables, (panel["title"], used)
