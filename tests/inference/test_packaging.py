"""The wheel (what the image installs, non-editable) must contain every subpackage of kubellm_inference:
setuptools only ships the packages pyproject.toml lists."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_inference_subpackage_is_listed_in_pyproject() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    source = ROOT / setuptools["package-dir"]["kubellm_inference"]
    found = {
        ".".join(("kubellm_inference", *init.parent.relative_to(source).parts))
        for init in source.rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert found <= listed, f"not shipped in the wheel: {sorted(found - listed)}"
