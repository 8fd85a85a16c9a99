"""``kubellm bench``: throughput and latency of our server, raw ``model.generate``, ``transformers serve`` and,
when a ``llama-server`` binary and GGUF files are given, llama.cpp.

All three run one after the other on this machine (127.0.0.1 only), on the same model folder, with the same
prompt (``--prompt-tokens`` tokens) and a forced answer length (``--new-tokens``; end-of-sequence ignored), at
each concurrency level (the raw baseline runs the same number of prompts as one ``generate`` batch). Reported
per target and level, as medians over ``--repetitions``: time to first token, inter-token latency, end-to-end
latency p50/p90 and output tokens per second. Everything is bounded: a request count per level, a timeout
per request and ``--max-seconds`` for the whole run. Our server can run in several precisions side by side
(``--kubellm-precisions float32 auto int8 int4``). Next to every concurrency-1 figure the bandwidth floor is
printed: the bytes of weights one decoding step reads, divided by this machine's memory bandwidth measured in
the same run (the time one token takes when nothing but reading the weights counts). Our server's decode step
(eager or compiled, ``--kubellm-compile auto off``) is reported per target: with ``auto`` the run waits until
each server has built its compiled step (or given up) before measuring, and records the time to Ready and the
compile time. Prints a table, then the JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from kubellm.contract import EMBEDDED_MODEL, ServerSettings, env_name

# Plain English prose, long enough for any --prompt-tokens up to a few hundred.
_PROMPT_TEXT = (
    "The history of the Roman Empire spans many centuries, from the founding of the city on the banks of the "
    "Tiber to the fall of Constantinople. Its roads, laws and languages shaped Europe, and its engineers built "
    "aqueducts, bridges and harbours that still stand today. Historians continue to debate why the western half "
    "of the empire declined while the eastern half endured for another thousand years, pointing to economic "
    "strain, political instability, migrations and the sheer difficulty of governing such a vast territory. "
) * 4

SERVER_START_TIMEOUT_S = 180.0
# Compiling SmolLM2's decode step: minutes on 2 busy cores (issue 22), seconds with a warm Inductor cache.
COMPILE_TIMEOUT_S = 1800.0


class BenchError(RuntimeError):
    pass


@dataclass
class RequestTiming:
    ttft_s: float
    e2e_s: float
    tokens: int

    @property
    def itl_s(self) -> float | None:
        return (self.e2e_s - self.ttft_s) / (self.tokens - 1) if self.tokens > 1 else None


@dataclass
class LevelResult:
    target: str
    concurrency: int
    requests: int
    ttft_p50_s: float
    itl_p50_ms: float | None
    e2e_p50_s: float
    e2e_p90_s: float
    tokens_per_s: float
    tokens_per_request: float
    # The best repetition (timeit's minimum): on a shared machine, the least disturbed measurement.
    best_tokens_per_s: float
    best_ttft_p50_s: float
    repetitions: list[dict[str, float]] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = q * (len(ordered) - 1)
    low, high = int(rank), min(int(rank) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(target: str, concurrency: int, runs: list[tuple[list[RequestTiming], float]]) -> LevelResult:
    """Medians over repetitions of each repetition's statistics; ``runs`` holds (timings, wall seconds)."""
    per_run: list[dict[str, float]] = []
    for timings, wall in runs:
        itls = [t.itl_s for t in timings if t.itl_s is not None]
        per_run.append(
            {
                "ttft_p50_s": percentile([t.ttft_s for t in timings], 0.5),
                "itl_p50_ms": percentile(itls, 0.5) * 1000 if itls else float("nan"),
                "e2e_p50_s": percentile([t.e2e_s for t in timings], 0.5),
                "e2e_p90_s": percentile([t.e2e_s for t in timings], 0.9),
                "tokens_per_s": sum(t.tokens for t in timings) / wall,
                "tokens_per_request": statistics.mean(t.tokens for t in timings),
                "wall_s": wall,
            }
        )

    def median(key: str) -> float:
        return statistics.median(r[key] for r in per_run)

    return LevelResult(
        target=target,
        concurrency=concurrency,
        requests=len(runs[0][0]),
        ttft_p50_s=median("ttft_p50_s"),
        itl_p50_ms=median("itl_p50_ms"),
        e2e_p50_s=median("e2e_p50_s"),
        e2e_p90_s=median("e2e_p90_s"),
        tokens_per_s=median("tokens_per_s"),
        tokens_per_request=median("tokens_per_request"),
        best_tokens_per_s=max(r["tokens_per_s"] for r in per_run),
        best_ttft_p50_s=min(r["ttft_p50_s"] for r in per_run),
        repetitions=per_run,
    )


# ---- HTTP targets ----------------------------------------------------------------------------------------------


def _sse_payloads(line: str) -> dict[str, Any] | None:
    if not line.startswith("data: ") or line == "data: [DONE]":
        return None
    payload: dict[str, Any] = json.loads(line[len("data: ") :])
    return payload


async def _one_request(client: httpx.AsyncClient, url: str, body: dict[str, Any], timeout: float) -> RequestTiming:
    started = time.perf_counter()
    first: float | None = None
    usage_tokens: int | None = None
    chunks = 0
    async with client.stream("POST", url, json=body, timeout=timeout) as response:
        if response.status_code != 200:
            raise BenchError(f"{url}: HTTP {response.status_code}: {(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            payload = _sse_payloads(line)
            if payload is None:
                continue
            if "error" in payload:
                raise BenchError(f"{url}: {payload['error']}")
            if payload.get("usage"):
                usage_tokens = int(payload["usage"]["completion_tokens"])
            for choice in payload.get("choices") or []:
                if choice.get("text"):
                    chunks += 1
                    if first is None:
                        first = time.perf_counter()
    ended = time.perf_counter()
    if first is None:
        raise BenchError(f"{url}: no text streamed")
    return RequestTiming(ttft_s=first - started, e2e_s=ended - started, tokens=usage_tokens or chunks)


async def _closed_loop(url: str, body: dict[str, Any], concurrency: int, total: int, timeout: float) -> Any:
    """``concurrency`` clients sending back to back until ``total`` requests are done."""
    timings: list[RequestTiming] = []
    remaining = total
    # A connection per request (a loopback connect, ~0.1 ms, in every target's TTFT alike): with keep-alive, runs
    # against llama-server at c=8 failed now and then with "Server disconnected without sending a response" on a
    # reused connection, even with idle connections dropped after 1 s.
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, trust_env=False) as client:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                timings.append(await _one_request(client, url, body, timeout))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return timings, time.perf_counter() - started


def run_http_level(url: str, body: dict[str, Any], concurrency: int, total: int, timeout: float) -> Any:
    return asyncio.run(_closed_loop(url, body, concurrency, total, timeout))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop_process(process: subprocess.Popen[Any], grace_s: float) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``; returns once the process is gone."""
    process.terminate()
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


@contextlib.contextmanager
def server_process(command: list[str], env: dict[str, str], health_url: str, log_path: Path) -> Iterator[float]:
    """A server subprocess, up until ``health_url`` answers 200 (yields the seconds that took), stopped (SIGTERM,
    then SIGKILL) on exit."""
    with log_path.open("w") as log:
        started = time.monotonic()
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + SERVER_START_TIMEOUT_S
            while True:
                if process.poll() is not None:
                    raise BenchError(f"{command[0]} exited with {process.returncode}; see {log_path}")
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(health_url, timeout=2, trust_env=False).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise BenchError(f"{command[0]} not healthy after {SERVER_START_TIMEOUT_S}s; see {log_path}")
                time.sleep(0.25)
            yield time.monotonic() - started
        finally:
            stop_process(process, 30)


# ---- the raw baseline --------------------------------------------------------------------------------------------


class RawGenerate:
    """``model.generate`` on a batch of identical prompts: TTFT is a one-token generate, e2e the full one."""

    def __init__(self, model_folder: str, prompt_ids: list[int], new_tokens: int) -> None:
        from kubellm_inference.loading import load_model

        self.loaded = load_model(ServerSettings(model=model_folder))
        self.prompt_ids = prompt_ids
        self.forced = {"min_new_tokens": new_tokens, "max_new_tokens": new_tokens, "do_sample": False}

    def __call__(self, batch: int) -> tuple[list[RequestTiming], float]:
        import torch

        generate: Any = self.loaded.model.generate
        inputs = torch.tensor([self.prompt_ids] * batch, device=self.loaded.device)
        common = {
            "input_ids": inputs,
            "attention_mask": torch.ones_like(inputs),
            "pad_token_id": self.loaded.pad_token_id,
        }
        with torch.inference_mode():
            started = time.perf_counter()
            generate(**common, max_new_tokens=1)
            ttft = time.perf_counter() - started
            started = time.perf_counter()
            output = generate(**common, **self.forced)
            e2e = time.perf_counter() - started
        produced = int(output.shape[1] - inputs.shape[1])
        return [RequestTiming(ttft, e2e, produced) for _ in range(batch)], e2e


# ---- the run -----------------------------------------------------------------------------------------------------


def resolve_model_folder(model: str) -> str:
    """A local folder for every target (the peer needs one too): the embedded model's converted folder."""
    if model == EMBEDDED_MODEL:
        from kubellm_inference.loading import converted_embedded_folder

        return str(converted_embedded_folder(ServerSettings().cache_dir))
    if not Path(model).is_dir():
        raise BenchError(f"--model must be a local folder or {EMBEDDED_MODEL} (the benchmark never downloads)")
    return model


def make_prompt(model_folder: str, tokens: int) -> tuple[str, list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    ids = tokenizer(_PROMPT_TEXT, add_special_tokens=False)["input_ids"][:tokens]
    if len(ids) < tokens:
        raise BenchError(f"the built-in prompt has only {len(ids)} tokens")
    return str(tokenizer.decode(ids)), list(ids)


RAW, OURS, PEER = "raw generate", "kubellm serve", "transformers serve --continuous-batching"
LLAMA_CPP = "llama.cpp"
# ``--kubellm-baseline``: our server from another checkout, measured in the same run for before/after ratios.
BASELINE_SUFFIX = " (baseline)"
# Where a checkout keeps its packages (what /work/devenv.sh and the images put on PYTHONPATH).
CHECKOUT_PACKAGE_ROOTS = (".", "operator", "inference", "sandbox")
# --kubellm-precisions: name -> (KUBELLM_DTYPE, KUBELLM_QUANTIZATION); int8/int4 keep dtype auto.
PRECISIONS = {
    "auto": ("auto", "none"),
    "float32": ("float32", "none"),
    "bfloat16": ("bfloat16", "none"),
    "int8": ("auto", "int8"),
    "int4": ("auto", "int4"),
}


def ours_name(precision: str) -> str:
    """The target name of our server in one precision; ``auto`` (the default) is plain ``kubellm serve``."""
    return OURS if precision == "auto" else f"{OURS} {precision}"


def measure_memory_bandwidth(seconds: float = 2.0) -> float:
    """Bytes per second this process reads from memory: the best of repeated sums over a buffer far larger than
    any cache (256 MiB), with torch's threads, which is how a decoding step reads the weights."""
    import torch

    buffer = torch.ones(64 * 1024 * 1024, dtype=torch.float32)
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == float("inf"):
        started = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - started)
    return buffer.numel() * buffer.element_size() / best


def wait_for_steps(servers: dict[str, str], deadline: float) -> dict[str, dict[str, Any]]:
    """Each of our servers' decode step once its compile is settled (built, failed or off), from ``/loadz``;
    a server without the ``compile`` field (a checkout from before issue 22) serves eager."""
    settled: dict[str, dict[str, Any]] = {}
    while True:
        for name, base in servers.items():
            if name in settled:
                continue
            state = httpx.get(f"{base}/loadz", timeout=10, trust_env=False).json().get("compile")
            if state is None:
                settled[name] = {"step": "eager", "compile_state": "absent"}
            elif state["state"] in ("ready", "failed", "off"):
                settled[name] = {"step": state["step"], "compile_state": state["state"], "detail": state["detail"]}
                # The whole build after Ready; the child's cold compile (None: the cache was warm); the load.
                for field_name in ("seconds", "compile_seconds", "load_seconds"):
                    settled[name][field_name] = state.get(field_name)
        if len(settled) == len(servers):
            return settled
        if time.monotonic() > deadline:
            waiting = sorted(set(servers) - set(settled))
            raise BenchError(f"the compiled decode step of {', '.join(waiting)} was not built in time")
        time.sleep(1.0)


def _metric_value(base_url: str, name: str) -> float | None:
    text = httpx.get(f"{base_url}/metrics", timeout=10, trust_env=False).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start every target, warm each up, then measure them interleaved (repetition by repetition, level by
    level, target by target), so that a change in the machine's load hits all of them alike."""
    started = time.monotonic()
    budget_end = started + args.max_seconds
    model_folder = resolve_model_folder(args.model)
    prompt, prompt_ids = make_prompt(model_folder, args.prompt_tokens)
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    targets: dict[str, Callable[[int], tuple[list[RequestTiming], float]]] = {}
    weight_bytes: dict[str, float | None] = {}
    ours: dict[str, str] = {}  # our servers' base URLs, by target name
    ready_seconds: dict[str, float] = {}
    load_before = os.getloadavg()
    base_body = {"prompt": prompt, "max_tokens": args.new_tokens, "temperature": 0, "stream": True}
    highest = max(args.concurrency)

    def http_target(url: str, body: dict[str, Any]) -> Callable[[int], tuple[list[RequestTiming], float]]:
        def measure(concurrency: int) -> tuple[list[RequestTiming], float]:
            total = concurrency * args.rounds
            return run_http_level(url, body, concurrency, total, args.request_timeout)

        return measure

    with contextlib.ExitStack() as servers:
        if "raw" in args.targets:
            targets[RAW] = RawGenerate(model_folder, prompt_ids, args.new_tokens)
        if "kubellm" in args.targets:
            checkouts: list[tuple[str, Path | None]] = [("", None)]
            if args.kubellm_baseline is not None:
                checkouts.append((BASELINE_SUFFIX, args.kubellm_baseline))
            variants = itertools.product(checkouts, args.kubellm_precisions, args.kubellm_compile)
            for (suffix, checkout), precision, compile_mode in variants:
                port = free_port()
                dtype, quantization = PRECISIONS[precision]
                env = {
                    **os.environ,
                    env_name("model"): model_folder,
                    env_name("served_model_name"): "bench",
                    env_name("dtype"): dtype,
                    env_name("quantization"): quantization,
                    env_name("compile"): compile_mode,
                    env_name("host"): "127.0.0.1",
                    env_name("port"): str(port),
                    env_name("max_batch_size"): str(highest),
                    env_name("max_new_tokens"): str(args.new_tokens),
                    env_name("log_level"): "warning",
                }
                if checkout is not None:
                    env["PYTHONPATH"] = os.pathsep.join(str(checkout / part) for part in CHECKOUT_PACKAGE_ROOTS)
                command = [sys.executable, "-m", "kubellm_inference.server"]
                base = f"http://127.0.0.1:{port}"
                log_path = log_dir / f"kubellm-serve-{precision}-{compile_mode}{'-baseline' if checkout else ''}.log"
                # Several compile settings in one run: the eager one is named so; one setting keeps the plain name.
                name = ours_name(precision) + (
                    " eager" if compile_mode == "off" and len(args.kubellm_compile) > 1 else ""
                )
                name += suffix
                ready_seconds[name] = servers.enter_context(server_process(command, env, f"{base}/readyz", log_path))
                ours[name] = base
                weight_bytes[name] = _metric_value(base, "kubellm_model_weight_bytes")
                body = {**base_body, "model": "bench", "ignore_eos": True, "stream_options": {"include_usage": True}}
                targets[name] = http_target(f"{base}/v1/completions", body)
        if "peer" in args.targets:
            peer = shutil.which("transformers", path=str(Path(sys.executable).parent)) or shutil.which("transformers")
            if peer is None:
                notes.append("transformers serve: the `transformers` command is not installed; peer skipped")
            else:
                port = free_port()
                command = [peer, "serve", model_folder, "--continuous-batching"]
                command += ["--cb-num-blocks", str(args.peer_cb_num_blocks), "--dtype", "float32"]
                command += ["--host", "127.0.0.1", "--port", str(port)]
                health = f"http://127.0.0.1:{port}/health"
                log_path = log_dir / "transformers-serve.log"
                servers.enter_context(server_process(command, {**os.environ, "HF_HUB_OFFLINE": "1"}, health, log_path))
                # Its per-request generation_config forces the length: no end-of-sequence token.
                forced = {"max_new_tokens": args.new_tokens, "do_sample": False, "eos_token_id": None}
                body = {**base_body, "model": model_folder, "generation_config": json.dumps(forced)}
                targets[PEER] = http_target(f"http://127.0.0.1:{port}/v1/completions", body)
        for label, gguf in args.gguf:
            if args.llama_server is None:
                raise BenchError("--gguf needs --llama-server (the path of a llama.cpp llama-server binary)")
            port = free_port()
            # One slot per concurrent client, each with room for the prompt and the answer; continuous batching
            # is llama-server's default. Threads: all cores, as torch uses them.
            context = highest * (len(prompt_ids) + args.new_tokens + 64)
            command = [str(args.llama_server), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port)]
            command += ["-np", str(highest), "-c", str(context), "-t", str(os.cpu_count() or 1), "--no-warmup"]
            base = f"http://127.0.0.1:{port}"
            log_path = log_dir / f"llama-server-{label}.log"
            servers.enter_context(server_process(command, dict(os.environ), f"{base}/health", log_path))
            name = f"{LLAMA_CPP} {label}"
            weight_bytes[name] = float(Path(gguf).stat().st_size)
            body = {**base_body, "ignore_eos": True, "n_predict": args.new_tokens, "cache_prompt": False}
            targets[name] = http_target(f"{base}/v1/completions", body)

        compile_deadline = min(budget_end, time.monotonic() + args.compile_timeout)
        steps = wait_for_steps(ours, compile_deadline) if ours else {}
        for name, step in steps.items():
            step["ready_s"] = round(ready_seconds[name], 1)
        # Warm-up, unmeasured: caches, allocator pools and the peer's batching manager exist before timing.
        for name, measure in targets.items():
            for level in args.concurrency if name == RAW else [highest]:
                measure(level)
        runs: dict[tuple[str, int], list[tuple[list[RequestTiming], float]]] = {}
        for repetition in range(args.repetitions):
            for level in args.concurrency:
                for name, measure in targets.items():
                    if time.monotonic() > budget_end:
                        raise BenchError(f"--max-seconds {args.max_seconds} used up (repetition {repetition + 1})")
                    runs.setdefault((name, level), []).append(measure(level))
                    timings, wall = runs[(name, level)][-1]
                    rate = sum(t.tokens for t in timings) / wall
                    print(f"  rep {repetition + 1} {name} @ {level}: {rate:.1f} tok/s", file=sys.stderr)

        # Measured with every server up and idle, right after the timed runs, under the same machine load.
        bandwidth = measure_memory_bandwidth()

    results = [summarize(name, level, level_runs) for (name, level), level_runs in runs.items()]
    results.sort(key=lambda r: (list(targets).index(r.target), r.concurrency))
    floors = {
        name: {"weight_bytes": size, "floor_ms_per_token": size / bandwidth * 1000}
        for name, size in weight_bytes.items()
        if size
    }
    return {
        "model": args.model,
        "model_folder": model_folder,
        "prompt_tokens": len(prompt_ids),
        "new_tokens": args.new_tokens,
        "repetitions": args.repetitions,
        "rounds": args.rounds,
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "seconds": round(time.monotonic() - started, 1),
        "memory_bandwidth_gb_s": round(bandwidth / 1e9, 2),
        "bandwidth_floors": floors,
        "steps": steps,
        "results": [asdict(r) for r in results],
        "comparisons": comparisons(results, floors),
        "notes": notes,
    }


def comparisons(results: list[LevelResult], floors: dict[str, dict[str, float]] | None = None) -> dict[str, float]:
    """The issues' targets as ratios (only those whose inputs were measured)."""
    by_key = {(r.target, r.concurrency): r for r in results}
    ratios: dict[str, float] = {}
    for name, floor in (floors or {}).items():
        single = by_key.get((name, 1))
        if single is not None and single.itl_p50_ms is not None:
            ratios[f"c1_ms_per_token_vs_bandwidth_floor[{name}]"] = round(
                single.itl_p50_ms / floor["floor_ms_per_token"], 2
            )
    levels = sorted({r.concurrency for r in results})
    for baseline in sorted({r.target for r in results if r.target.endswith(BASELINE_SUFFIX)}):
        ours = baseline.removesuffix(BASELINE_SUFFIX)
        for level in levels:
            a, b = by_key.get((ours, level)), by_key.get((baseline, level))
            if a and b:
                ratios[f"c{level}_tokens_per_s[{ours} / baseline]"] = round(a.tokens_per_s / b.tokens_per_s, 3)
                ratios[f"c{level}_ttft[{ours} / baseline]"] = round(a.ttft_p50_s / b.ttft_p50_s, 3)
                if a.itl_p50_ms is not None and b.itl_p50_ms:
                    ratios[f"c{level}_ms_per_token[{ours} / baseline]"] = round(a.itl_p50_ms / b.itl_p50_ms, 3)
    llama = sorted({r.target for r in results if r.target.startswith(LLAMA_CPP)})
    for ours in sorted({r.target for r in results if r.target.startswith(OURS)}):
        for theirs in llama:
            for level in (1, max(r.concurrency for r in results)):
                a, b = by_key.get((ours, level)), by_key.get((theirs, level))
                if a and b:
                    ratios[f"c{level}_tokens_per_s[{ours} / {theirs}]"] = round(a.tokens_per_s / b.tokens_per_s, 3)
                    ratios[f"c{level}_ttft[{ours} / {theirs}]"] = round(a.ttft_p50_s / b.ttft_p50_s, 3)
    ours_1, ours_8 = by_key.get((OURS, 1)), by_key.get((OURS, 8))
    raw_1 = by_key.get((RAW, 1))
    peer_8 = by_key.get((PEER, 8))
    if ours_1 and raw_1:
        ratios["c1_tokens_per_s_vs_raw_batch1"] = round(ours_1.tokens_per_s / raw_1.tokens_per_s, 3)
        ratios["c1_best_tokens_per_s_vs_raw_batch1"] = round(ours_1.best_tokens_per_s / raw_1.best_tokens_per_s, 3)
    if ours_8 and peer_8:
        ratios["c8_tokens_per_s_vs_peer"] = round(ours_8.tokens_per_s / peer_8.tokens_per_s, 3)
        ratios["c8_best_tokens_per_s_vs_peer"] = round(ours_8.best_tokens_per_s / peer_8.best_tokens_per_s, 3)
        ratios["c8_ttft_vs_peer"] = round(ours_8.ttft_p50_s / peer_8.ttft_p50_s, 3)
        ratios["c8_best_ttft_vs_peer"] = round(ours_8.best_ttft_p50_s / peer_8.best_ttft_p50_s, 3)
    return ratios


def table(document: dict[str, Any]) -> str:
    header = (
        "| target | step | concurrency | TTFT p50 (s) | ITL p50 (ms) | e2e p50 (s) | e2e p90 (s) | tokens/s "
        "| best tokens/s | best TTFT p50 (s) | bandwidth floor (ms/token) |"
    )
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    floors = document.get("bandwidth_floors", {})
    steps = document.get("steps", {})
    for r in document["results"]:
        floor = floors.get(r["target"]) if r["concurrency"] == 1 else None
        floor_cell = ""
        if floor is not None:
            ratio = r["itl_p50_ms"] / floor["floor_ms_per_token"]
            floor_cell = f"{floor['floor_ms_per_token']:.1f} ({ratio:.1f}x)"
        lines.append(
            f"| {r['target']} | {steps.get(r['target'], {}).get('step', '')} | {r['concurrency']} "
            f"| {r['ttft_p50_s']:.3f} | {r['itl_p50_ms']:.1f} "
            f"| {r['e2e_p50_s']:.2f} | {r['e2e_p90_s']:.2f} | {r['tokens_per_s']:.1f} "
            f"| {r['best_tokens_per_s']:.1f} | {r['best_ttft_p50_s']:.3f} | {floor_cell} |"
        )
    return "\n".join(lines)


def _label_and_path(value: str) -> tuple[str, Path]:
    label, sep, path = value.partition("=")
    if not sep or not label or not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"--gguf wants LABEL=FILE with an existing file, got {value!r}")
    return label, Path(path)


def _checkout(value: str) -> Path:
    path = Path(value).resolve()
    if not (path / "inference" / "kubellm_inference" / "server.py").is_file():
        raise argparse.ArgumentTypeError(f"--kubellm-baseline wants a kubellm checkout, got {value!r}")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubellm bench", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=EMBEDDED_MODEL, help="a local model folder, or the embedded model")
    parser.add_argument("--targets", nargs="+", default=["raw", "kubellm", "peer"], choices=["raw", "kubellm", "peer"])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--prompt-tokens", type=int, default=48)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="requests per level = concurrency x rounds")
    parser.add_argument("--repetitions", type=int, default=3, help="medians are taken over these")
    parser.add_argument("--request-timeout", type=float, default=300.0)
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="budget of the whole run")
    parser.add_argument(
        "--kubellm-precisions",
        nargs="+",
        default=["auto"],
        choices=list(PRECISIONS),
        help="run our server once per precision (dtype, or int8/int4 weights with dtype auto)",
    )
    parser.add_argument(
        "--kubellm-compile",
        nargs="+",
        default=["auto"],
        choices=["auto", "off"],
        help="our server's compile setting(s); with both, each precision runs twice (the eager one named so)",
    )
    parser.add_argument(
        "--compile-timeout",
        type=float,
        default=COMPILE_TIMEOUT_S,
        help="how long to wait for our servers' compiled decode step before measuring",
    )
    parser.add_argument(
        "--kubellm-baseline",
        type=_checkout,
        metavar="DIR",
        help="also run our server from this other checkout (e.g. main), per precision, named '... (baseline)'",
    )
    parser.add_argument("--llama-server", type=Path, help="a llama.cpp llama-server binary (for --gguf)")
    parser.add_argument(
        "--gguf",
        nargs="+",
        default=[],
        type=_label_and_path,
        metavar="LABEL=FILE",
        help="GGUF files llama-server serves, one target each (e.g. bf16=model-bf16.gguf q4_1=model.Q4_1.gguf)",
    )
    parser.add_argument("--peer-cb-num-blocks", type=int, default=16, help="KV blocks of the peer (see issue 3)")
    parser.add_argument("--log-dir", default="build/bench", help="server logs go here")
    parser.add_argument("--json", type=Path, help="also write the JSON document to this file")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if min(args.concurrency) < 1 or args.repetitions < 1 or args.rounds < 1 or args.new_tokens < 2:
        print("kubellm bench: concurrency, repetitions and rounds must be >= 1, --new-tokens >= 2", file=sys.stderr)
        return 2
    try:
        document = run(args)
    except BenchError as error:
        print(f"kubellm bench: {error}", file=sys.stderr)
        return 1
    print(table(document))
    for name, value in document["comparisons"].items():
        print(f"{name}: {value}")
    for name, step in document["steps"].items():
        print(f"step of {name}: {json.dumps(step)}")
    for note in document["notes"]:
        print(f"note: {note}")
    text = json.dumps(document, indent=2)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
