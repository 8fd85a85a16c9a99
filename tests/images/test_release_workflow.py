"""The release workflow pushes the images deploy/ and the renderer name, as plain image manifests (hermetic)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kubellm_operator.render import DEFAULT_GPU_INFERENCE_IMAGE, DEFAULT_INFERENCE_IMAGE

ROOT = Path(__file__).resolve().parents[2]


def workflow() -> dict[Any, Any]:
    loaded: dict[Any, Any] = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yml").read_text())
    return loaded


def pushes() -> dict[str, dict[str, Any]]:
    """Each build-push step's inputs, by the image name it tags (expressions for the prefix and version filled in
    with the values a tag v<pyproject version> gives them)."""
    loaded = workflow()
    version = next(
        line.split('"')[1] for line in (ROOT / "pyproject.toml").read_text().splitlines() if line.startswith("version")
    )
    found = {}
    for job in loaded["jobs"].values():
        for step in job["steps"]:
            if not step.get("uses", "").startswith("docker/build-push-action@"):
                continue
            tag = (
                step["with"]["tags"]
                .replace("${{ env.IMAGE_PREFIX }}", loaded["env"]["IMAGE_PREFIX"])
                .replace("${{ steps.version.outputs.version }}", version)
                .replace("${{ needs.images.outputs.version }}", version)
            )
            found[tag] = step["with"]
    return found


def deployed() -> set[str]:
    (deployment,) = [doc for doc in yaml.safe_load_all((ROOT / "deploy" / "operator.yaml").read_text()) if doc]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    inference = next(item["value"] for item in container["env"] if item["name"] == "KUBELLM_OPERATOR_INFERENCE_IMAGE")
    return {container["image"], inference}


def test_a_version_tag_builds_and_pushes_every_image_deploy_and_the_renderer_name() -> None:
    assert workflow()[True]["push"]["tags"] == ["v*"]  # YAML 1.1 reads the key `on` as True
    assert set(pushes()) == deployed() | {DEFAULT_INFERENCE_IMAGE, DEFAULT_GPU_INFERENCE_IMAGE}


def test_every_push_is_one_plain_manifest_built_on_the_pinned_base() -> None:
    """No provenance or SBOM attestation: an image index with them is what `kind load` and some registries' older
    clients cannot take. Every build gets BASE_IMAGE from the job's digest-pinned base."""
    for tag, inputs in pushes().items():
        assert inputs["push"] is True and inputs["provenance"] is False and inputs["sbom"] is False, tag
        assert "BASE_IMAGE=${{ " in inputs["build-args"], tag
        assert inputs["file"] in {"Dockerfile.operator", "Dockerfile.inference"}, tag
