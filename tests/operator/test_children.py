"""Handing kubellm's Update entry (its create's) to its Apply entry: the pure managedFields fold."""

from __future__ import annotations

from typing import Any

import pytest

from kubellm_operator.children import applier_managed_fields, has_update_entry


def entry(manager: str, operation: str, fields: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"manager": manager, "operation": operation, "fieldsType": "FieldsV1", "fieldsV1": fields, **extra}


CREATED = {"f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:nodeSelector": {"f:disk": {}}}}}}
APPLIED = {"f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {}}}}}
UNITED = {
    "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:nodeSelector": {"f:disk": {}}, "f:containers": {}}}}
}
SCALER = entry("kube-controller-manager", "Update", {"f:status": {}}, subresource="status")


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        # The create's Update entry alone becomes the Apply entry.
        ([entry("kubellm", "Update", CREATED)], [entry("kubellm", "Apply", CREATED)]),
        # Beside an Apply entry (an earlier apply): one Apply entry owning both sets.
        (
            [entry("kubellm", "Update", CREATED), entry("kubellm", "Apply", APPLIED)],
            [entry("kubellm", "Apply", UNITED)],
        ),
        # Other managers' entries, and kubellm's status-subresource entry, are left as they are.
        (
            [SCALER, entry("kubectl-edit", "Update", APPLIED), entry("kubellm", "Update", CREATED)],
            [SCALER, entry("kubectl-edit", "Update", APPLIED), entry("kubellm", "Apply", CREATED)],
        ),
        # Nothing of kubellm's: nothing changes.
        ([SCALER], [SCALER]),
    ],
)
def test_update_entries_fold_into_the_apply_entry(entries: list[dict[str, Any]], expected: list[Any]) -> None:
    folded = applier_managed_fields(entries)
    assert [{k: v for k, v in e.items() if k != "time"} for e in folded] == expected
    assert not has_update_entry({"metadata": {"managedFields": folded}})


def test_only_kubellms_own_update_entry_counts() -> None:
    assert has_update_entry({"metadata": {"managedFields": [{"manager": "kubellm", "operation": "Update"}]}})
    assert not has_update_entry({"metadata": {"managedFields": [{"manager": "kubectl", "operation": "Update"}]}})
    assert not has_update_entry({"metadata": {"managedFields": [{"manager": "kubellm", "operation": "Apply"}]}})
    assert not has_update_entry({"metadata": {}})
