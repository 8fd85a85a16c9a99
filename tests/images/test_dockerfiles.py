"""Rules both Dockerfiles keep, checked on their text (hermetic): each names the bug it prevents."""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = [ROOT / "Dockerfile.operator", ROOT / "Dockerfile.inference"]
# The project's code folders: `operator/` is also the name of a standard library module.
SOURCE_FOLDERS = {"kubellm", "operator", "inference", "sandbox", "tools"}
# What each image runs: the code folders its wheel stage copies (so setuptools puts only those packages in it).
PRODUCT_FOLDERS = {
    "Dockerfile.operator": {"kubellm", "operator"},
    "Dockerfile.inference": {"kubellm", "inference"},
}


def stages(text: str) -> list[list[tuple[str, str]]]:
    """The instructions (keyword, arguments) of each stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", text)
    found: list[list[tuple[str, str]]] = [[]]
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        keyword, _, arguments = line.strip().partition(" ")
        if keyword.upper() == "FROM":
            found.append([])
        found[-1].append((keyword.upper(), arguments.strip()))
    return found[1:]


def runs_beside_the_sources(text: str) -> list[str]:
    """RUN steps whose working directory holds a copied project folder. `python -m` puts the working directory
    first on sys.path, so there the project's `operator/` folder hid the standard library's `operator` and
    `python -m venv` failed (issue 15)."""
    found = []
    for stage in stages(text):
        workdir, folders_in = "/", set()
        for keyword, arguments in stage:
            if keyword == "WORKDIR":
                workdir = posixpath.normpath(posixpath.join(workdir, arguments))
            elif keyword == "COPY" and "--from" not in arguments:
                # COPY of a folder copies its contents to the target: a folder named like a source folder
                # exists where the target is named so.
                placed = posixpath.normpath(posixpath.join(workdir, arguments.split()[-1]))
                if posixpath.basename(placed) in SOURCE_FOLDERS:
                    folders_in.add(posixpath.dirname(placed))
            elif keyword == "RUN" and workdir in folders_in:
                found.append(f"RUN {arguments} (in {workdir})")
    return found


# Dockerfile.operator before issue 15: it did not build.
BROKEN = """FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kubellm/ kubellm/
COPY operator/ operator/
RUN python -m venv /opt/kubellm && /opt/kubellm/bin/pip install ".[operator]"
"""


def test_the_rule_finds_the_step_that_broke_the_operator_build() -> None:
    assert runs_beside_the_sources(BROKEN) == [
        'RUN python -m venv /opt/kubellm && /opt/kubellm/bin/pip install ".[operator]" (in /src)'
    ]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_no_step_runs_where_the_sources_are(dockerfile: Path) -> None:
    assert runs_beside_the_sources(dockerfile.read_text()) == []


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_the_final_stage_runs_nothing_and_every_build_stage_takes_the_base_image_argument(dockerfile: Path) -> None:
    """A build's --volume mounts (the host's pip sources, .ci/run) leave their mount points in every RUN layer;
    a final stage without RUN ships none of them. It starts from scratch: the base comes in as the `runtime`
    stage's /rootfs, less apt, dpkg, the shells and pip. BASE_IMAGE lets a build name another base (Docker Hub is
    unreachable on some hosts) or pin it by digest."""
    all_stages = stages(dockerfile.read_text())
    assert [keyword for keyword, _ in all_stages[-1] if keyword == "RUN"] == []
    assert all_stages[-1][0] == ("FROM", "scratch")
    assert ("COPY", "--from=runtime /rootfs /") in all_stages[-1]
    assert "ARG BASE_IMAGE=python:3.11-slim-bookworm" in dockerfile.read_text()
    assert all(stage[0][1].split()[0] == "${BASE_IMAGE}" for stage in all_stages[:-1])


def wheel_stage_folders(text: str) -> set[str]:
    """The code folders the stage that builds the wheel (`pip wheel`) copies from the build context."""
    (stage,) = [stage for stage in stages(text) if any("pip wheel" in arguments for _, arguments in stage)]
    copied = [arguments.split() for keyword, arguments in stage if keyword == "COPY" and "--from" not in arguments]
    return {posixpath.basename(source.rstrip("/")) for *sources, _ in copied for source in sources} & SOURCE_FOLDERS


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_the_wheel_holds_only_what_the_image_runs(dockerfile: Path) -> None:
    """setuptools puts in the wheel the packages it finds: an image whose wheel stage copies a folder ships it
    (the operator image once carried the API emulator, the hub, the sandbox and the inference server)."""
    assert wheel_stage_folders(dockerfile.read_text()) == PRODUCT_FOLDERS[dockerfile.name]
