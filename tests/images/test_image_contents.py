"""What each image must not hold: other components' packages, the test tooling, pip, apt/dpkg, a shell, build leftovers.

Each image is asked by its own Python (the virtualenv's, first on the image's PATH) what it can import and which
programs and files it has; the images are the ones deploy/operator.yaml names (the operator's image, and the
inference image it renders into every LLMService's pods). A shell is also tried the way someone would: as the
container's entrypoint, which must fail to start.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from engine import Engine

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

# Run by the image's Python with the module names as arguments: prints what is inside, as JSON.
INVENTORY = r"""
import glob, importlib.util, json, os, shutil, sys
PROGRAMS = ["sh", "bash", "dash", "rbash", "apt", "apt-get", "dpkg", "dpkg-deb", "debconf", "perl", "pip", "pip3"]
PATTERNS = [
    "/bin/sh", "/usr/bin/sh", "/var/lib/dpkg", "/var/lib/apt", "/etc/apt", "/usr/lib/apt",
    "/usr/share/python-wheels/pip-*", "/usr/lib/python3*/ensurepip", "/usr/local/lib/python3*/ensurepip",
    "/usr/lib/python3/dist-packages/pip", "/usr/lib/python3*/site-packages/pip",
    "/usr/local/lib/python3*/site-packages/pip", "/opt/*/lib/python3*/site-packages/pip",
    # What the build stages hold or mount: the sources, the wheels, the host's pip configuration (.ci/run).
    "/src", "/wheels", "/tmp/wheels", "/rootfs", "/etc/pip.conf", "/etc/xdg/pip",
]
print(json.dumps({
    "importable": sorted(name for name in sys.argv[1:] if importlib.util.find_spec(name) is not None),
    "programs": sorted(name for name in PROGRAMS if shutil.which(name)),
    "files": sorted(path for pattern in PATTERNS for path in glob.glob(pattern)),
}))
"""

TOOLING = ["kubellm_emulator", "kubellm_hub", "kubellm_sandbox", "kubellm_tools", "kmock", "pip", "ensurepip"]
# Per image: (what it must import, what it must not).
IMAGES = {
    "operator": (
        ["kubellm.cli", "kubellm_operator.main", "kopf", "kubellm_gateway.main", "fastapi", "uvicorn", "httpx"],
        ["kubellm_inference", "torch", "transformers"],
    ),
    "inference": (
        ["kubellm.cli", "kubellm_inference.server", "torch"],
        ["kubellm_operator", "kubellm_gateway", "kopf"],
    ),
}


def deployed_images() -> dict[str, str]:
    """The images deploy/ installs: the operator's, and the inference image it puts in LLMService pods."""
    (deployment,) = [doc for doc in yaml.safe_load_all((ROOT / "deploy" / "operator.yaml").read_text()) if doc]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item.get("value") for item in container.get("env", [])}
    return {"operator": container["image"], "inference": env["KUBELLM_OPERATOR_INFERENCE_IMAGE"]}


def inventory(engine: Engine, image: str, modules: list[str]) -> dict[str, Any]:
    done = engine.run("run", "--rm", "--network=none", "--entrypoint", "python", image, "-c", INVENTORY, *modules)
    found: dict[str, Any] = json.loads(done.stdout)
    return found


@pytest.mark.parametrize("component", sorted(IMAGES))
def test_the_image_holds_its_product_and_nothing_to_install_or_shell_with(engine: Engine, component: str) -> None:
    image = deployed_images()[component]
    engine.require_image(image)
    needed, foreign = IMAGES[component]
    found = inventory(engine, image, [*needed, *foreign, *TOOLING])
    assert found["importable"] == sorted(needed), f"{image}: importable {found['importable']}, expected {needed}"
    assert found["programs"] == [], f"{image} has {found['programs']} on its PATH"
    assert found["files"] == [], f"{image} holds {found['files']}"

    shell = engine.run("run", "--rm", "--network=none", "--entrypoint", "/bin/sh", image, "-c", "true", check=False)
    assert shell.returncode != 0, f"{image} started /bin/sh"


def test_the_operator_image_names_what_is_not_part_of_it(engine: Engine) -> None:
    """`kubellm emulator` in the operator image: the CLI says the module is not in this installation."""
    image = deployed_images()["operator"]
    engine.require_image(image)
    done = engine.run("run", "--rm", "--network=none", image, "emulator", check=False)
    assert done.returncode != 0
    assert "kubellm_emulator.cli is not part of this installation" in done.stderr, done.stderr
