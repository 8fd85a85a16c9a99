"""A server asked for CUDA on a CPU-only torch exits 1 and its termination message says exactly that."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kubellm.contract import env_name
from kubellm_sandbox.processes import free_port


@pytest.mark.skipif(torch.version.cuda is not None, reason="this torch is a CUDA build")
def test_cuda_on_a_cpu_only_torch_exits_with_that_reason(tmp_path: Path) -> None:
    message_file = tmp_path / "termination-log"
    env = {
        **os.environ,
        env_name("model"): "embedded:smollm2-135m-instruct",
        env_name("device"): "cuda",
        env_name("host"): "127.0.0.1",
        env_name("port"): str(free_port()),
        env_name("cache_dir"): str(tmp_path / "cache"),
        env_name("termination_message_path"): str(message_file),
    }
    command = [str(Path(sys.executable).parent / "kubellm"), "serve"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=90)
    assert result.returncode == 1, result.stderr
    message = message_file.read_text()
    assert "KUBELLM_DEVICE=cuda but this image's torch " in message and message.startswith("model load failed: ")
    assert "CPU-only build" in message and "CUDA build of the inference image" in message
