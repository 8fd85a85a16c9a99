"""The wheel ships every module: built from the tree, installed into a clean venv, each module imported from it.
Each image's wheel, built from the folders its Dockerfile copies, ships exactly their modules.

A non-editable install (the images) must import what tests import; a module left out of the wheel is found here,
not in a crash-looping pod.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODE_FOLDERS = [ROOT, ROOT / "operator", ROOT / "inference", ROOT / "gateway", ROOT / "sandbox", ROOT / "tools"]


def source_modules(folders: list[Path] = CODE_FOLDERS) -> set[str]:
    """Every module under the code folders, named by its path (operator/kubellm_operator/api.py: kubellm_operator.api)."""
    found = set()
    for folder in folders:
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


def build_wheel(source: Path, out: Path) -> Path:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = out.glob("kubellm-*.whl")
    return wheel


def wheel_modules(wheel: Path) -> set[str]:
    return {
        name.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        for name in zipfile.ZipFile(wheel).namelist()
        if name.endswith(".py")
    }


@pytest.mark.slow
@pytest.mark.parametrize("dockerfile", ["Dockerfile.operator", "Dockerfile.inference"])
def test_each_image_wheel_holds_the_modules_of_the_folders_it_copies(dockerfile: str, tmp_path: Path) -> None:
    """The images build their wheel from the sources their Dockerfile copies (`COPY operator /src/operator`):
    setuptools finds only those packages, and pyproject.toml's other `where` folders, absent, are no error."""
    folders = re.findall(r"^COPY (\w+) /src/\1$", (ROOT / dockerfile).read_text(), flags=re.MULTILINE)
    source = tmp_path / "src"
    source.mkdir()
    for name in ["pyproject.toml", "README.md"]:
        shutil.copy(ROOT / name, source / name)
    for folder in folders:
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    expected = source_modules([source, *(source / folder for folder in folders if folder != "kubellm")])
    # The gateway ships in the operator image (`kubellm gateway`, deploy/components/gateway).
    image = dockerfile.partition(".")[2]
    packages = {"kubellm", f"kubellm_{image}", *(["kubellm_gateway"] if image == "operator" else [])}
    assert {name.partition(".")[0] for name in expected} == packages
    assert wheel_modules(build_wheel(source, tmp_path / "wheel")) == expected


@pytest.mark.slow
def test_wheel_installed_in_a_clean_venv_imports_every_module(tmp_path: Path) -> None:
    wheel = build_wheel(ROOT, tmp_path)
    in_wheel = wheel_modules(wheel)
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
