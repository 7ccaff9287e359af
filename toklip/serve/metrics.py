"""Prometheus metrics, in a registry of the app's own (two apps in one process never collide)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("toklip_requests", "HTTP requests answered", ["endpoint", "method", "status"],
                                registry=r)
        self.latency = Histogram("toklip_request_duration_seconds", "Time from request to response end",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("toklip_requests_in_flight", "API requests being handled", registry=r)
        self.queue_depth = Gauge("toklip_queue_depth", "Items waiting for the model", registry=r)
        self.batch_size = Histogram("toklip_batch_size", "Items per model call", ["op"], buckets=BATCH_BUCKETS,
                                    registry=r)
        self.batch_latency = Histogram("toklip_batch_duration_seconds", "Time of one model call", ["op"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.items = Counter("toklip_items", "Items (images, texts, index grids) processed", ["op"], registry=r)
        self.rejected = Counter("toklip_rejected", "Requests refused for load or limits", ["reason"], registry=r)
        self.ready = Gauge("toklip_ready", "1 once warm-up has finished", registry=r)

    def observe_batch(self, op: str, n: int, seconds: float) -> None:
        self.batch_size.labels(op).observe(n)
        self.batch_latency.labels(op).observe(seconds)
        self.items.labels(op).inc(n)

    def render(self) -> bytes:
        return generate_latest(self.registry)
