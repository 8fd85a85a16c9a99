"""The wheel ships every module: built from the tree, installed into a clean venv, each module imported from it.

A non-editable install (the images) must import what tests import; a module left out of the wheel is found here,
not in a crash-looping pod.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODE_FOLDERS = [ROOT, ROOT / "operator", ROOT / "inference", ROOT / "gateway", ROOT / "sandbox"]


def source_modules() -> set[str]:
    """Every module under the code folders, named by its path (operator/kubellm_operator/api.py: kubellm_operator.api)."""
    found = set()
    for folder in CODE_FOLDERS:
        for package in sorted(folder.glob("kubellm*/__init__.py")):
            for path in package.parent.rglob("*.py"):
                parts = path.relative_to(folder).with_suffix("").parts
                found.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


def test_every_module_path_names_its_import() -> None:
    for folder in CODE_FOLDERS[1:]:
        assert not (folder / "__init__.py").exists(), f"{folder.name}/ must not itself be a package"
        for child in folder.iterdir():
            if child.is_dir() and (child / "__init__.py").exists():
                assert child.name.startswith("kubellm"), child


@pytest.mark.slow
def test_wheel_installed_in_a_clean_venv_imports_every_module(tmp_path: Path) -> None:
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("kubellm-*.whl")
    in_wheel = {
        name.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        for name in zipfile.ZipFile(wheel).namelist()
        if name.endswith(".py")
    }
    assert in_wheel == source_modules()

    env = tmp_path / "venv"
    venv.create(env, with_pip=False)
    site = Path(
        sysconfig.get_path("purelib", vars={"base": str(env), "platbase": str(env)}),
    )
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    # Third-party dependencies come from this interpreter's site-packages, added as a plain path: its .pth files
    # (the editable install's import hook among them) are not run, so kubellm itself comes only from the wheel.
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    check = (
        "import importlib, sys\n"
        f"site = {str(site)!r}\n"
        "for name in sys.argv[1:]:\n"
        "    module = importlib.import_module(name)\n"
        "    assert module.__file__.startswith(site), (name, module.__file__)\n"
    )
    python = env / "bin" / "python"
    # A PYTHONPATH pointing at a source tree would import kubellm from there instead of from the wheel.
    clean_env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [str(python), "-c", check, *sorted(in_wheel)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=clean_env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    console = subprocess.run(
        [str(python), "-m", "kubellm.cli", "crd"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=clean_env,
        check=False,
    )
    assert console.returncode == 0, console.stderr
    assert console.stdout == (ROOT / "crds" / "kubellm.dev_llmservices.yaml").read_text()
