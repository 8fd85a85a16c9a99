"""`kubellm bench` end to end on the tiny model: every target it runs, the table and the JSON document."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubellm_inference.bench import main as bench_main


def test_bench_measures_raw_generate_and_our_server(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "bench.json"
    argv = ["--model", str(tiny_model), "--targets", "raw", "kubellm", "--concurrency", "1", "2"]
    argv += ["--prompt-tokens", "8", "--new-tokens", "4", "--repetitions", "1", "--rounds", "1"]
    argv += ["--log-dir", str(tmp_path / "logs"), "--json", str(output), "--max-seconds", "120"]
    assert bench_main(argv) == 0
    document = json.loads(output.read_text())
    measured = {(r["target"], r["concurrency"]) for r in document["results"]}
    assert measured == {("raw generate", 1), ("raw generate", 2), ("kubellm serve", 1), ("kubellm serve", 2)}
    for result in document["results"]:
        assert result["tokens_per_request"] == 4, "the answer length is forced"
        assert result["tokens_per_s"] > 0 and result["ttft_p50_s"] > 0
        assert result["best_tokens_per_s"] >= result["tokens_per_s"]
        assert result["e2e_p90_s"] >= result["e2e_p50_s"]
        if result["target"] == "kubellm serve":  # the raw baseline times its first token in a separate call
            assert result["e2e_p50_s"] >= result["ttft_p50_s"]
    assert set(document["comparisons"]) == {"c1_tokens_per_s_vs_raw_batch1", "c1_best_tokens_per_s_vs_raw_batch1"}
    assert document["prompt_tokens"] == 8
    table = capsys.readouterr().out
    assert "| kubellm serve | 2 |" in table


def test_bench_refuses_a_model_it_would_have_to_download() -> None:
    assert bench_main(["--model", "some-org/some-model", "--targets", "kubellm"]) == 1
