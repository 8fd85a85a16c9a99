"""How the server behaves around generation: batching with per-request sampling, readiness and liveness,
the bounded queue (429), deadlines (504), disconnects, access control and load failures."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from inference_support import long_completion, serve, wait_until
from pydantic import SecretStr

from kubellm.contract import ServerSettings
from kubellm_inference.loading import LoadedModel, load_model


def completion(client: httpx.Client, prompt: str, **params: object) -> dict[str, object]:
    response = client.post("/v1/completions", json={"model": "tiny", "prompt": prompt, **params})
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def test_greedy_output_is_the_same_batched_with_sampling_requests_as_alone(tiny_settings: ServerSettings) -> None:
    # Slow steps keep all requests in one running batch; the greedy one must not pick up the others' sampling.
    settings = tiny_settings.model_copy(update={"debug_step_delay_s": 0.02, "max_batch_size": 8})
    greedy = {"max_tokens": 16, "temperature": 0, "ignore_eos": True}
    with serve(settings) as server, server.client() as client:
        alone = completion(client, "The quick brown fox", **greedy)
        batch_sizes: list[float] = []
        stop_watching = threading.Event()

        def watch_batch() -> None:
            while not stop_watching.is_set():
                batch_sizes.append(server.metric("kubellm_batch_size"))
                stop_watching.wait(0.005)

        watcher = threading.Thread(target=watch_batch)
        watcher.start()
        prompts = ["Hello world", "Tell me a joke about computers", "a", "Paris is the capital"]
        with ThreadPoolExecutor(max_workers=5) as pool:
            hot = [
                pool.submit(completion, client, p, max_tokens=16, temperature=1.8, top_p=0.9, ignore_eos=True)
                for p in prompts
            ]
            batched = pool.submit(completion, client, "The quick brown fox", **greedy)
            results = [f.result(timeout=60) for f in hot]
            together = batched.result(timeout=60)
        stop_watching.set()
        watcher.join(5)
    assert max(batch_sizes) >= 3, f"the requests never ran together: {sorted(set(batch_sizes))}"
    assert together["choices"] == alone["choices"]
    assert all(r["usage"]["completion_tokens"] == 16 for r in results)  # type: ignore[index]


def test_readiness_waits_for_the_model_and_liveness_does_not(tiny_settings: ServerSettings) -> None:
    gate = threading.Event()

    def gated_loader() -> LoadedModel:
        gate.wait(30)
        return load_model(tiny_settings)

    with serve(tiny_settings, loader=gated_loader, wait_ready=False) as server, server.client() as client:
        assert client.get("/healthz").status_code == 200
        live = client.get("/livez")
        assert live.status_code == 200 and live.json()["worker"] == "loading"
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "not ready" in ready.json()["error"]["message"]
        early = client.post("/ask", json={"text": "hi"})
        assert early.status_code == 503 and early.headers["retry-after"] == "1"
        assert server.metric("kubellm_ready") == 0
        gate.set()
        wait_until(lambda: client.get("/readyz").status_code == 200, 30, "readiness after the load")
        assert server.metric("kubellm_ready") == 1
        assert client.post("/ask", json={"text": "hi", "max_new_tokens": 2}).status_code == 200


def test_liveness_fails_while_a_step_is_stuck(tiny_settings: ServerSettings) -> None:
    settings = tiny_settings.model_copy(update={"debug_step_delay_s": 1.0, "stuck_step_timeout_s": 0.2})
    with serve(settings) as server, server.client() as client:
        assert client.get("/livez").status_code == 200
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(client.post, "/ask", json={"text": "hi", "max_new_tokens": 1})
            wait_until(lambda: client.get("/livez").status_code == 503, 10, "/livez to report the stuck step")
            body = client.get("/livez").json()
            assert body["error"]["code"] == "not_alive" and "generation step" in body["error"]["message"]
            assert pending.result(timeout=30).status_code == 200
        assert client.get("/livez").status_code == 200, "liveness recovers once the step ends"


def test_load_failure_shows_on_readiness_and_liveness(tiny_settings: ServerSettings, tmp_path: Path) -> None:
    settings = tiny_settings.model_copy(update={"model": str(tmp_path / "no-such-model-folder")})
    with serve(settings, wait_ready=False) as server, server.client() as client:
        wait_until(lambda: client.get("/livez").status_code == 503, 30, "the load to fail")
        message = client.get("/readyz").json()["error"]["message"]
        assert "model load failed" in message and "no-such-model-folder" in message
        assert server.state.engine.state.value == "failed"
        # The load's phase says so too, on /loadz and in the metrics (one source: the engine writes the progress).
        assert client.get("/loadz").json()["phase"] == "failed"
        assert server.metric("kubellm_load_phase", phase="failed") == 1
        assert server.metric("kubellm_load_phase", phase="warming up") == 0


def test_full_queue_answers_429_with_retry_after(tiny_settings: ServerSettings) -> None:
    settings = tiny_settings.model_copy(update={"debug_step_delay_s": 0.05, "max_batch_size": 1, "queue_size": 1})
    long = long_completion(40)
    with serve(settings) as server, server.client() as client, ThreadPoolExecutor(max_workers=2) as pool:
        running = pool.submit(client.post, "/v1/completions", json=long)
        wait_until(lambda: server.metric("kubellm_batch_size") == 1, 10, "the first request to run")
        queued = pool.submit(client.post, "/v1/completions", json=long)
        wait_until(lambda: server.metric("kubellm_queue_depth") == 1, 10, "the second request to queue")
        refused = client.post("/v1/completions", json=long)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "queue_full"
        assert running.result(timeout=30).status_code == 200
        assert queued.result(timeout=30).status_code == 200


def test_deadline_answers_504_and_stops_the_generation(tiny_settings: ServerSettings) -> None:
    settings = tiny_settings.model_copy(update={"debug_step_delay_s": 0.05, "request_timeout_s": 0.5})
    with serve(settings) as server, server.client() as client:
        before = server.metric("kubellm_generated_tokens_total")
        response = client.post("/v1/completions", json=long_completion(60))
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "deadline_exceeded"
        wait_until(lambda: server.metric("kubellm_batch_size") == 0, 5, "the batch to empty")
        generated = server.metric("kubellm_generated_tokens_total") - before
        assert generated < 30, f"generation went on after the deadline ({generated} tokens)"
        assert server.state.engine.in_flight() == 0


def test_deadline_ends_a_started_stream_with_an_error_event(tiny_settings: ServerSettings) -> None:
    settings = tiny_settings.model_copy(update={"debug_step_delay_s": 0.05, "request_timeout_s": 0.6})
    with serve(settings) as server, server.client() as client:
        request = long_completion(60, stream=True)
        with client.stream("POST", "/v1/completions", json=request) as streaming:
            assert streaming.status_code == 200
            lines = [line for line in streaming.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert '"deadline_exceeded"' in lines[-2], "a stream past its deadline ends with an error event"


def test_deadline_applies_to_queued_requests(tiny_settings: ServerSettings) -> None:
    # One slot, and a first step longer than the deadline: the second request expires while it waits.
    settings = tiny_settings.model_copy(
        update={"debug_step_delay_s": 2.0, "request_timeout_s": 0.5, "max_batch_size": 1}
    )
    with serve(settings) as server, server.client() as client, ThreadPoolExecutor(max_workers=1) as pool:
        engine = server.state.engine
        warm_up_tokens = server.metric("kubellm_prompt_tokens_total")
        running = pool.submit(client.post, "/ask", json={"text": "hi", "max_new_tokens": 5})
        # Its prefill (a 2 s step) has begun once its prompt tokens are counted.
        wait_until(lambda: server.metric("kubellm_prompt_tokens_total") > warm_up_tokens, 5, "the first prefill")
        prefilled = server.metric("kubellm_prompt_tokens_total")
        queued = client.post("/ask", json={"text": "hi", "max_new_tokens": 5})
        assert queued.status_code == 504
        assert queued.json()["error"]["code"] == "deadline_exceeded"
        assert running.result(timeout=10).status_code == 504
        # The expired request leaves the queue without ever being prefilled.
        wait_until(lambda: engine.in_flight() == 0, 10, "the queue to empty")
        assert server.metric("kubellm_prompt_tokens_total") == prefilled


def test_client_disconnect_frees_the_slot(tiny_settings: ServerSettings) -> None:
    settings = tiny_settings.model_copy(update={"debug_step_delay_s": 0.05, "max_batch_size": 1})
    with serve(settings) as server, server.client() as client:
        before = server.metric("kubellm_generated_tokens_total")
        request = long_completion(60, stream=True)
        with client.stream("POST", "/v1/completions", json=request) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
        # Leaving the block closed the connection mid-stream: the worker drops the row.
        wait_until(lambda: server.state.engine.in_flight() == 0, 10, "the disconnected request to be dropped")
        assert server.metric("kubellm_generated_tokens_total") - before < 50
        # Non-streaming too: a client that gives up waiting frees its place.
        with pytest.raises(httpx.ReadTimeout):
            client.post("/v1/completions", json=long_completion(60), timeout=0.3)
        wait_until(lambda: server.state.engine.in_flight() == 0, 10, "the abandoned request to be dropped")
        assert client.post("/ask", json={"text": "hi", "max_new_tokens": 2}).status_code == 200


def test_api_key_guards_inference_routes_only(tiny_settings: ServerSettings, caplog: pytest.LogCaptureFixture) -> None:
    key = "s3cret-key-value"
    settings = tiny_settings.model_copy(update={"api_key": SecretStr(key)})
    with serve(settings) as server, server.client() as client:
        for method, path, body in [
            ("POST", "/ask", {"text": "hi", "max_new_tokens": 1}),
            ("GET", "/v1/models", None),
            ("POST", "/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 1}),
            ("POST", "/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}),
        ]:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": key}):
                refused = client.request(method, path, json=body, headers=headers)
                assert refused.status_code == 401, (path, headers)
                assert refused.json()["error"]["type"] == "authentication_error"
            allowed = client.request(method, path, json=body, headers={"Authorization": f"Bearer {key}"})
            assert allowed.status_code == 200, (path, allowed.text)
        for path in ("/healthz", "/readyz", "/livez", "/metrics", "/loadz"):
            assert client.get(path).status_code == 200, path
        assert client.get("/loadz").json()["model"] == "tiny"
        # Default deny: a path no route serves, and FastAPI's own pages, need the key too.
        for path in ("/no-such-route", "/docs", "/openapi.json"):
            assert client.get(path).status_code == 401, path
    assert key not in caplog.text


def test_metrics_require_api_key_gates_metrics_and_hides_details_from_open_status_routes(
    tiny_settings: ServerSettings,
) -> None:
    key = "s3cret-key-value"
    settings = tiny_settings.model_copy(update={"api_key": SecretStr(key), "metrics_require_api_key": True})
    auth = {"Authorization": f"Bearer {key}"}
    with serve(settings) as server, server.client() as client:
        refused = client.get("/metrics")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        assert "kubellm_ready" in client.get("/metrics", headers=auth).text
        # The operator reads /loadz without a key: it still gets the phase and progress it needs.
        anonymous = client.get("/loadz")
        assert anonymous.status_code == 200
        assert anonymous.json()["phase"] == "ready" and "model" not in anonymous.json(), anonymous.json()
        assert client.get("/loadz", headers=auth).json()["model"] == "tiny"
        assert client.get("/readyz").json() == {"status": "ready"}
        assert client.get("/readyz", headers=auth).json()["model"] == "tiny"
        for path in ("/healthz", "/livez"):
            assert client.get(path).status_code == 200, path
