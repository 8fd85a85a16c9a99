"""Table responses (what `kubectl get` prints) and the JSONPath subset of printer columns, without kubectl."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from kubellm_emulator import Emulator
from kubellm_emulator.jsonpath import JsonPathError, evaluate
from kubellm_emulator.tables import human_age

TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
WIDGETS = "/apis/example.dev/v1/namespaces/default/widgets"

DOCUMENT = {
    "spec": {"replicas": 2, "items": [{"name": "a"}, {"name": "b"}]},
    "status": {
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "Serving"},
            {"type": "Degraded", "status": "False"},
        ]
    },
}


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        (".spec.replicas", [2]),
        ("{.spec.replicas}", [2]),
        (".spec.items[1].name", ["b"]),
        (".spec.items[*].name", ["a", "b"]),
        ('.status.conditions[?(@.type=="Ready")].reason', ["Serving"]),
        (".status.conditions[?(@.status!='True')].type", ["Degraded"]),
        (".spec.missing", []),
        (".spec.items[5].name", []),
    ],
)
def test_jsonpath(expression: str, expected: list[Any]) -> None:
    assert evaluate(expression, DOCUMENT) == expected


def test_unsupported_jsonpath_is_an_error() -> None:
    with pytest.raises(JsonPathError, match="unsupported JSONPath"):
        evaluate(".spec..x", DOCUMENT)


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (5, "5s"),
        (119, "119s"),
        (130, "2m10s"),
        (600, "10m"),
        (4 * 3600 + 60, "4h1m"),
        (30 * 3600, "30h"),
        (3 * 86400, "3d"),
    ],
)
def test_human_age(seconds: int, shown: str) -> None:
    now = datetime.datetime(2026, 1, 10, tzinfo=datetime.UTC)
    created = (now - datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert human_age(created, now) == shown


async def test_custom_resource_table_has_the_printer_columns(
    emulator: Emulator, api: Any, widget_crd: dict[str, Any]
) -> None:
    emulator.apply_manifest(widget_crd)
    await api.post(
        WIDGETS,
        {"apiVersion": "example.dev/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": "large"}},
    )
    await api.patch(f"{WIDGETS}/w/status", {"status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    status, table = await api.get(WIDGETS, headers={"Accept": TABLE})
    assert status == 200 and table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
    columns = [(c["name"], c["priority"]) for c in table["columnDefinitions"]]
    assert columns == [("Name", 0), ("Replicas", 0), ("Ready", 0), ("Size", 1), ("Age", 0)]
    (row,) = table["rows"]
    assert row["cells"][:4] == ["w", 1, "True", "large"] and row["cells"][4].endswith("s")
    assert row["object"]["kind"] == "PartialObjectMetadata" and row["object"]["metadata"]["name"] == "w"
    _, bare = await api.get(WIDGETS, headers={"Accept": TABLE}, params={"includeObject": "None"})
    assert "object" not in bare["rows"][0]
    _, single = await api.get(f"{WIDGETS}/w", headers={"Accept": TABLE})
    assert single["rows"][0]["cells"][0] == "w"


async def test_built_in_tables(emulator: Emulator, api: Any) -> None:
    emulator.seed_node("n1")
    _, nodes = await api.get("/api/v1/nodes", headers={"Accept": TABLE})
    assert [c["name"] for c in nodes["columnDefinitions"]] == ["Name", "Status", "Roles", "Age", "Version"]
    assert nodes["rows"][0]["cells"][:2] == ["n1", "Ready"]
    await api.post(
        "/api/v1/namespaces/default/services", {"metadata": {"name": "web"}, "spec": {"ports": [{"port": 5000}]}}
    )
    _, services = await api.get("/api/v1/namespaces/default/services", headers={"Accept": TABLE})
    cells = services["rows"][0]["cells"]
    assert cells[0] == "web" and cells[1] == "ClusterIP" and cells[4] == "5000/TCP"
