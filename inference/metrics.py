"""Prometheus metrics of a replica, per model and version."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ReplicaMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ("model", "version")
        self.requests = Counter(
            "mlops_inference_requests",
            "Inference requests received.",
            labels,
            registry=self.registry,
        )
        self.failures = Counter(
            "mlops_inference_failures",
            "Inference requests that failed, by gRPC code.",
            (*labels, "code"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "mlops_inference_request_duration_seconds",
            "Time from request to response.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_time = Histogram(
            "mlops_inference_queue_duration_seconds",
            "Time a request waited for its batch.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_rows = Histogram(
            "mlops_inference_batch_rows",
            "Rows in each onnxruntime call.",
            labels,
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.active_version = Gauge(
            "mlops_inference_active_version",
            "The version serving requests that name none.",
            ("model",),
            registry=self.registry,
        )
        self.loaded = Gauge(
            "mlops_inference_loaded_versions",
            "Versions loaded per model.",
            ("model",),
            registry=self.registry,
        )
