"""Prometheus metrics of one server instance, in their own registry so that apps (and tests) never collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Generation on CPU takes seconds; on a GPU, tens of milliseconds: the buckets cover both.
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class ServerMetrics:
    """Every metric the server exports, registered in a fresh ``CollectorRegistry``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "kubellm_requests", "HTTP requests answered, by route and status code", ["route", "status"], registry=r
        )
        self.request_duration = Histogram(
            "kubellm_request_duration_seconds",
            "End-to-end latency of inference requests (until the last byte)",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "kubellm_time_to_first_token_seconds",
            "Time from a request entering the queue to its first generated token",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter("kubellm_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generated_tokens = Counter("kubellm_generated_tokens", "Tokens generated", registry=r)
        self.queue_depth = Gauge("kubellm_queue_depth", "Requests waiting to join the batch", registry=r)
        self.queue_capacity = Gauge(
            "kubellm_queue_capacity", "Requests the queue holds before it answers 429 (the queue size)", registry=r
        )
        self.batch_size = Gauge("kubellm_batch_size", "Requests in the running batch", registry=r)
        self.model_load_seconds = Gauge("kubellm_model_load_seconds", "Seconds the model took to load", registry=r)
        self.model_info = Gauge(
            "kubellm_model_info",
            "1 for the served model's precision: dtype (what auto resolved to), quantization, device and the "
            "compile setting",
            ["dtype", "quantization", "device", "compile"],
            registry=r,
        )
        self.model_weight_bytes = Gauge(
            "kubellm_model_weight_bytes", "Bytes of weights one decoding step reads", registry=r
        )
        self.decode_step = Gauge(
            "kubellm_decode_step", "1 for the decode step serving now: eager or compiled", ["step"], registry=r
        )
        self.compile_seconds = Gauge(
            "kubellm_compile_seconds", "Seconds the compiled decode step took to build (0 until built)", registry=r
        )
        self.compile_buckets_done = Gauge(
            "kubellm_compile_buckets_done", "Batch-size buckets of the compiled decode step built so far", registry=r
        )
        self.ready = Gauge("kubellm_ready", "1 when the server can generate now, else 0", registry=r)
