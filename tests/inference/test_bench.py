"""`kubellm bench` end to end on the tiny model: every target it runs, the table and the JSON document."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubellm_tools.bench import main as bench_main


def test_bench_measures_raw_generate_and_our_server(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "bench.json"
    argv = ["--model", str(tiny_model), "--targets", "raw", "kubellm", "--concurrency", "1", "2"]
    # Eager only: waiting for compiled steps is test_compiled.py's (slow) business.
    argv += ["--kubellm-precisions", "auto", "int8", "--kubellm-compile", "off"]
    argv += ["--prompt-tokens", "8", "--new-tokens", "4", "--repetitions", "1", "--rounds", "1"]
    argv += ["--log-dir", str(tmp_path / "logs"), "--json", str(output), "--max-seconds", "120"]
    assert bench_main(argv) == 0
    document = json.loads(output.read_text())
    measured = {(r["target"], r["concurrency"]) for r in document["results"]}
    ours = {"kubellm serve", "kubellm serve int8"}
    assert measured == {("raw generate", 1), ("raw generate", 2)} | {(t, c) for t in ours for c in (1, 2)}
    for result in document["results"]:
        assert result["tokens_per_request"] == 4, "the answer length is forced"
        assert result["tokens_per_s"] > 0 and result["ttft_p50_s"] > 0
        assert result["best_tokens_per_s"] >= result["tokens_per_s"]
        assert result["e2e_p90_s"] >= result["e2e_p50_s"]
        if result["target"] in ours:  # the raw baseline times its first token in a separate call
            assert result["e2e_p50_s"] >= result["ttft_p50_s"]
    # Each server reports the bytes a decoding step reads; the floor is those over the bandwidth measured in the run.
    assert document["memory_bandwidth_gb_s"] > 0
    floors = document["bandwidth_floors"]
    assert set(floors) == ours
    assert floors["kubellm serve int8"]["weight_bytes"] < floors["kubellm serve"]["weight_bytes"]
    assert {"c1_tokens_per_s_vs_raw_batch1", "c1_best_tokens_per_s_vs_raw_batch1"} <= set(document["comparisons"])
    assert "c1_ms_per_token_vs_bandwidth_floor[kubellm serve int8]" in document["comparisons"]
    assert document["prompt_tokens"] == 8
    table = capsys.readouterr().out
    assert "| kubellm serve | eager | 2 |" in table
    for name in ours:
        step = document["steps"][name]
        assert step["step"] == "eager" and step["compile_state"] == "off" and step["ready_s"] > 0, step


def test_bench_refuses_a_model_it_would_have_to_download() -> None:
    assert bench_main(["--model", "some-org/some-model", "--targets", "kubellm"]) == 1


def test_bench_refuses_a_gguf_without_llama_server(tiny_model: Path, tmp_path: Path) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    argv = ["--model", str(tiny_model), "--targets", "kubellm", "--gguf", f"q4={gguf}", "--max-seconds", "60"]
    argv += ["--log-dir", str(tmp_path / "logs")]
    assert bench_main(argv) == 1


def test_bench_measures_a_baseline_checkout_in_the_same_run(tiny_model: Path, tmp_path: Path) -> None:
    # This checkout stands in for the baseline: the point is that both servers run and the ratios come out.
    checkout = Path(__file__).resolve().parents[2]
    output = tmp_path / "bench.json"
    argv = [
        "--model",
        str(tiny_model),
        "--targets",
        "kubellm",
        "--concurrency",
        "1",
        "--kubellm-baseline",
        str(checkout),
        "--kubellm-compile",
        "off",
    ]
    argv += ["--prompt-tokens", "8", "--new-tokens", "4", "--repetitions", "1", "--rounds", "1"]
    argv += ["--log-dir", str(tmp_path / "logs"), "--json", str(output), "--max-seconds", "120"]
    assert bench_main(argv) == 0
    document = json.loads(output.read_text())
    assert {r["target"] for r in document["results"]} == {"kubellm serve", "kubellm serve (baseline)"}
    ratios = document["comparisons"]
    for key in ("c1_tokens_per_s", "c1_ttft", "c1_ms_per_token"):
        assert ratios[f"{key}[kubellm serve / baseline]"] > 0


def test_bench_refuses_a_baseline_that_is_not_a_checkout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench_main(["--targets", "kubellm", "--kubellm-baseline", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--kubellm-baseline wants a kubellm checkout" in capsys.readouterr().err
