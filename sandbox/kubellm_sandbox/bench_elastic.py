"""`kubellm bench elastic`: the gateway and the autoscaler on the sandbox with real server pods, in one bounded run.

Four phases on one autoscaled LLMService (the embedded SmolLM2, ``maxReplicas`` 3 on a small machine) and one
fixed LLMService (1 replica), all on 127.0.0.1:

- (a) from zero, one streaming request through the gateway: its time to first token against the pod's own time
  from creation to Ready (``cold_start_overhead_s``: what holding, waking and routing add).
- (b) a burst of 16 concurrent requests with ``targetRequestsPerReplica`` 8, held until answered: ``needed_replicas``
  (2), ``peak_replicas`` (the Deployment's replicas sampled every 0.2 s), ``lost_requests``, ``http_5xx``.
- (d) idle: back to zero after ``scaleDownDelaySeconds``, with the time it took and 0 errors.
- (c) the gateway's cost on the fixed LLMService: c=1 and c=8, through the gateway and straight to its Service,
  interleaved round by round in the same run (``gateway_ttft_ratio``, ``gateway_tokens_per_s_ratio``; ratios of
  per-request medians, gateway / direct; the means are in the JSON too).

Figures go to ``--json PATH`` and stdout. Every wait is bounded; the sandbox it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import contextlib
import json
import math
import os
import pathlib
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import httpx

from kubellm_sandbox import cli
from kubellm_sandbox.demo import Api
from kubellm_sandbox.supervisor import Layout, admin_token

ELASTIC, FIXED = "elastic", "fixed"
MODEL = "embedded:smollm2-135m-instruct"
QUESTION = "Write a short story about a lighthouse keeper."


def _llmservice(name: str, port: int, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        # No compiled step: its compile would take the 2 cores mid-run and switch the step between rounds; the
        # bench measures the gateway and the autoscaler, on the same (eager) step throughout.
        "model": {"name": MODEL, "maxNewTokens": 64, "compile": "off"},
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
        "service": {"type": "ClusterIP", "port": port},
        "probes": {"startup": {"periodSeconds": 1, "budgetSeconds": 600}, "readiness": {"periodSeconds": 1}},
        "storage": {"cacheSize": "1Gi"},
    }
    body.update(spec)
    return {
        "apiVersion": "kubellm.dev/v1alpha1",
        "kind": "LLMService",
        "metadata": {"name": name, "namespace": "default"},
        "spec": body,
    }


@dataclass
class Answer:
    status: int
    ttft_s: float | None  # to the first content chunk (not a progress comment)
    total_s: float
    chunks: int  # content chunks: about one token each
    error: str | None = None  # an error event in the stream (after a 200), as the server or the gateway sent it
    ended: float = 0.0  # time.time() at the end

    @property
    def tokens_per_s(self) -> float | None:
        if self.ttft_s is None or self.chunks < 2:
            return None
        return (self.chunks - 1) / max(self.total_s - self.ttft_s, 1e-6)


async def stream_chat(client: httpx.AsyncClient, url: str, model: str, max_tokens: int, timeout_s: float) -> Answer:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": max_tokens,
        "stream": True,
        "ignore_eos": True,
        "temperature": 0,
    }
    began = time.monotonic()
    ttft: float | None = None
    chunks = 0
    try:
        async with asyncio.timeout(timeout_s), client.stream("POST", url, json=body) as response:
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    error = str(event["error"].get("message") if isinstance(event["error"], dict) else event["error"])
                    return Answer(500, ttft, time.monotonic() - began, chunks, error[:300], time.time())
                delta = ((event.get("choices") or [{}])[0].get("delta") or {}).get("content")
                if delta:
                    chunks += 1
                    ttft = ttft if ttft is not None else time.monotonic() - began
            return Answer(response.status_code, ttft, time.monotonic() - began, chunks, None, time.time())
    except (httpx.HTTPError, TimeoutError, ValueError) as exc:
        return Answer(0, ttft, time.monotonic() - began, chunks, f"{type(exc).__name__}: {exc}"[:300], time.time())


def _epoch(text: str | None) -> float | None:
    if not text:
        return None
    return float(calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")))


class Bench:
    def __init__(self, api: Api, gateway_url: str, scale_down_delay_s: int, timeout_s: float, tokens: int) -> None:
        self.tokens = tokens
        self.api = api
        self.gateway_url = gateway_url
        self.delay = scale_down_delay_s
        self.timeout_s = timeout_s
        self.last_answer = time.time()

    def replicas(self, name: str) -> int:
        try:
            deployment = self.api.request("GET", f"/apis/apps/v1/namespaces/default/deployments/{name}")
        except OSError:
            return -1
        return int((deployment.get("spec") or {}).get("replicas") or 0)

    def ready(self, name: str) -> int:
        obj = self.api.request("GET", self.api.llmservice_path("default", name))
        return int((obj.get("status") or {}).get("readyReplicas") or 0)

    async def until(self, what: str, predicate: Any, timeout_s: float) -> float:
        began = time.monotonic()
        while not await asyncio.to_thread(predicate):
            if time.monotonic() - began > timeout_s:
                raise TimeoutError(f"{what}: not within {timeout_s:.0f}s")
            await asyncio.sleep(0.2)
        return time.monotonic() - began

    def pod_startup_s(self, name: str) -> float | None:
        """The newest Ready pod's own creation-to-Ready time (API timestamps: whole seconds)."""
        pods = self.api.request("GET", f"/api/v1/namespaces/default/pods?labelSelector=kubellm.dev/llmservice={name}")
        best: float | None = None
        for pod in pods["items"]:
            created = _epoch(pod["metadata"].get("creationTimestamp"))
            conditions = pod.get("status", {}).get("conditions") or []
            ready: dict[str, Any] = next((c for c in conditions if c.get("type") == "Ready"), {})
            became = _epoch(ready.get("lastTransitionTime")) if ready.get("status") == "True" else None
            if created is not None and became is not None:
                best = became - created
        return best

    async def cold_start(self, client: httpx.AsyncClient) -> dict[str, Any]:
        await self.until("elastic at zero", lambda: self.replicas(ELASTIC) == 0, 60)
        sent = time.time()
        request = asyncio.create_task(
            stream_chat(client, f"{self.gateway_url}/v1/chat/completions", f"default/{ELASTIC}", 8, self.timeout_s)
        )
        # The wake-up: from the request to the Deployment asking for a pod (the held annotation, a pass, a write).
        wake = await self.until("the wake-up", lambda: self.replicas(ELASTIC) >= 1, self.timeout_s)
        answer = await request
        startup = await asyncio.to_thread(self.pod_startup_s, ELASTIC)
        created = await asyncio.to_thread(self.pod_created, ELASTIC)
        overhead = answer.ttft_s - startup if answer.ttft_s is not None and startup is not None else None
        # A warm request on the same pod: the generation's own time to first token, part of the overhead above.
        warm = await stream_chat(
            client, f"{self.gateway_url}/v1/chat/completions", f"default/{ELASTIC}", 8, self.timeout_s
        )
        return {
            "status": answer.status,
            "ttft_from_zero_s": answer.ttft_s,
            "pod_startup_s": startup,
            "cold_start_overhead_s": overhead,
            "wake_s": round(wake, 2),
            "pod_created_after_s": round(created - sent, 1) if created is not None else None,
            "warm_ttft_s": warm.ttft_s,
        }

    def pod_created(self, name: str) -> float | None:
        pods = self.api.request("GET", f"/api/v1/namespaces/default/pods?labelSelector=kubellm.dev/llmservice={name}")
        times = [_epoch(p["metadata"].get("creationTimestamp")) for p in pods["items"]]
        return min((t for t in times if t is not None), default=None)

    async def burst(self, client: httpx.AsyncClient, count: int, target: int) -> dict[str, Any]:
        peak = 0
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, await asyncio.to_thread(self.replicas, ELASTIC))
                await asyncio.sleep(0.2)

        sampler = asyncio.create_task(sample())
        answers = await asyncio.gather(
            *(
                stream_chat(
                    client, f"{self.gateway_url}/v1/chat/completions", f"default/{ELASTIC}", self.tokens, self.timeout_s
                )
                for _ in range(count)
            )
        )
        # Replicas keep being sampled a little after the answers: a late scale-up would be an overshoot too.
        await asyncio.sleep(3)
        done.set()
        await sampler
        statuses = [a.status for a in answers]
        self.last_answer = max(a.ended for a in answers)
        return {
            "requests": count,
            "needed_replicas": math.ceil(count / target),
            "peak_replicas": peak,
            "lost_requests": sum(1 for s in statuses if s != 200),
            "http_5xx": sum(1 for s in statuses if s >= 500),
            "statuses": sorted(set(statuses)),
            "errors": sorted({a.error for a in answers if a.error}),
        }

    async def idle(self) -> dict[str, Any]:
        """From the burst's last answer to zero replicas (sampled every 0.2 s)."""
        try:
            await self.until("elastic back to zero", lambda: self.replicas(ELASTIC) == 0, self.delay + 120)
        except TimeoutError:
            return {"to_zero_s": None, "scale_down_delay_s": self.delay}
        return {"to_zero_s": round(time.time() - self.last_answer, 1), "scale_down_delay_s": self.delay}

    async def overhead(
        self, client: httpx.AsyncClient, direct_url: str, rounds: int, concurrency: tuple[int, ...]
    ) -> dict[str, Any]:
        await self.until("fixed Ready", lambda: self.ready(FIXED) >= 1, self.timeout_s)
        gateway = f"{self.gateway_url}/v1/chat/completions"
        results: dict[str, Any] = {}
        # Warm both paths (connection pools, the first generation's one-off costs).
        await stream_chat(client, gateway, f"default/{FIXED}", 8, self.timeout_s)
        await stream_chat(client, direct_url, MODEL, 8, self.timeout_s)
        for c in concurrency:
            samples: dict[str, list[Answer]] = {"gateway": [], "direct": []}
            for index in range(rounds):
                # Interleaved, and the order alternates: drift in the machine's load hits both paths alike.
                order = [("gateway", gateway, f"default/{FIXED}"), ("direct", direct_url, MODEL)]
                for label, url, model in order if index % 2 == 0 else reversed(order):
                    answers = await asyncio.gather(
                        *(stream_chat(client, url, model, 48, self.timeout_s) for _ in range(c))
                    )
                    samples[label].extend(answers)
            figures: dict[str, Any] = {}
            for label, answers in samples.items():
                ok = [a for a in answers if a.status == 200 and a.ttft_s is not None]
                rates = [a.tokens_per_s for a in ok if a.tokens_per_s is not None]
                ttfts = [a.ttft_s for a in ok if a.ttft_s is not None]
                # Medians: a burst of other work on the machine lands on a few requests of one path; means
                # follow it, medians do not (the means are kept to show how much it moved them).
                figures[label] = {
                    "requests": len(answers),
                    "errors": len(answers) - len(ok),
                    "ttft_s": round(statistics.median(ttfts), 4) if ttfts else 0.0,
                    "tokens_per_s": round(statistics.median(rates), 2) if rates else 0.0,
                    "ttft_mean_s": round(statistics.fmean(ttfts), 4) if ttfts else 0.0,
                    "tokens_per_s_mean": round(statistics.fmean(rates), 2) if rates else 0.0,
                }
            g, d = figures["gateway"], figures["direct"]
            figures["gateway_ttft_ratio"] = round(g["ttft_s"] / d["ttft_s"], 3) if d["ttft_s"] else None
            figures["gateway_tokens_per_s_ratio"] = (
                round(g["tokens_per_s"] / d["tokens_per_s"], 3) if d["tokens_per_s"] else None
            )
            results[f"c{c}"] = figures
        return results


async def run(args: argparse.Namespace) -> dict[str, Any]:
    # A data directory of its own is removed at the end (its model cache is half a GB); a given one is kept.
    root = pathlib.Path(args.data_dir or tempfile.mkdtemp(prefix="kubellm-bench-elastic-"))
    layout = Layout(root)
    this = asyncio.current_task()
    assert this is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):  # stop the sandbox (its pods, operator, gateway), then exit
        loop.add_signal_handler(signum, this.cancel)
    state = cli.up(layout, quiet=True)
    try:
        if not state.get("gateway_url"):
            raise cli.SandboxError("the sandbox runs no gateway")
        api = Api(state["api_url"], admin_token(layout))
        bench = Bench(api, state["gateway_url"], args.scale_down_delay_s, args.timeout_s, args.tokens)
        autoscaling = {
            "minReplicas": 0,
            "maxReplicas": args.max_replicas,
            "targetRequestsPerReplica": args.target,
            "scaleDownDelaySeconds": args.scale_down_delay_s,
        }
        api.apply(_llmservice(ELASTIC, args.elastic_port, autoscaling=autoscaling))
        result: dict[str, Any] = {
            "machine": {"cpus": os.cpu_count(), "load_average_1m_at_start": os.getloadavg()[0]},
            "settings": autoscaling | {"tokens_per_request": args.tokens, "rounds": args.rounds},
        }

        def save() -> None:
            # After every phase: a run cut short still leaves what it measured.
            if args.json_path:
                pathlib.Path(args.json_path).write_text(json.dumps(result, indent=2) + "\n")

        limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
        async with httpx.AsyncClient(timeout=httpx.Timeout(args.timeout_s), limits=limits, trust_env=False) as client:
            if args.cost_only:
                api.apply(_llmservice(FIXED, args.fixed_port, replicas=1))
                direct = f"http://127.0.0.1:{args.fixed_port}/v1/chat/completions"
                result["gateway_cost"] = await bench.overhead(client, direct, args.rounds, tuple(args.concurrency))
                save()
                return result
            print("bench elastic: (a) a request from zero", file=sys.stderr, flush=True)
            result["cold_start"] = await bench.cold_start(client)
            save()
            if not args.skip_cost:
                # (c)'s LLMService loads meanwhile (the model load is most of a run here).
                api.apply(_llmservice(FIXED, args.fixed_port, replicas=1))
            print(f"  {result['cold_start']}\nbench elastic: (b) a burst of {args.burst}", file=sys.stderr, flush=True)
            result["burst"] = await bench.burst(client, args.burst, args.target)
            save()
            print(f"  {result['burst']}\nbench elastic: (d) idle to zero", file=sys.stderr, flush=True)
            result["idle"] = await bench.idle()
            save()
            if args.skip_cost:
                return result
            print(f"  {result['idle']}\nbench elastic: (c) the gateway's cost", file=sys.stderr, flush=True)
            direct = f"http://127.0.0.1:{args.fixed_port}/v1/chat/completions"
            result["gateway_cost"] = await bench.overhead(client, direct, args.rounds, tuple(args.concurrency))
            save()
        return result
    finally:
        with contextlib.suppress(Exception):
            cli.down(layout)
        if not args.data_dir:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubellm bench elastic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", dest="json_path", help="write the figures to this file")
    parser.add_argument("--data-dir", help="the sandbox's data directory (default: a fresh temporary one)")
    parser.add_argument("--max-replicas", type=int, default=3, help="keep it at 3 or less on a 2-core machine")
    parser.add_argument("--target", type=int, default=8, help="targetRequestsPerReplica")
    parser.add_argument("--burst", type=int, default=16, help="concurrent requests in (b)")
    parser.add_argument("--scale-down-delay-s", type=int, default=20, help="scaleDownDelaySeconds")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per concurrency in (c)")
    parser.add_argument("--skip-cost", action="store_true", help="phases (a), (b) and (d) only")
    parser.add_argument("--cost-only", action="store_true", help="phase (c) only")
    parser.add_argument("--tokens", type=int, default=16, help="tokens generated per request (b, c)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="concurrencies of (c)")
    parser.add_argument("--elastic-port", type=int, default=5301)
    parser.add_argument("--fixed-port", type=int, default=5302)
    parser.add_argument("--timeout-s", type=float, default=600.0, help="bound of every request and wait")
    args = parser.parse_args(argv)
    try:
        result = asyncio.run(run(args))
    except (cli.SandboxError, TimeoutError, OSError) as error:
        print(f"kubellm bench elastic: {error}", file=sys.stderr)
        return 1
    except asyncio.CancelledError:
        print("kubellm bench elastic: interrupted; the sandbox is stopped", file=sys.stderr)
        return 130
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_path:
        pathlib.Path(args.json_path).write_text(text + "\n")
    return 0
