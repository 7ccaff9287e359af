"""Prometheus metrics, in a registry of the app's own (two apps in one process never collide).

Every label takes its values from a fixed set, never from the request as sent: endpoints are route templates
(anything else is "other"), methods are the standard ones (or "other"), statuses are the codes this server
answers (anything else is bucketed as "2xx", "4xx", ...). So no client can grow /metrics.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
GENERATE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
STATUSES = frozenset({200, 204, 304, 400, 401, 403, 404, 405, 408, 413, 415, 422, 429, 431, 500, 503, 504})


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


def status_label(status: int) -> str:
    if status in STATUSES:
        return str(status)
    return f"{status // 100}xx" if 100 <= status < 600 else "other"


class EndpointLabels:
    """Request path -> the route template that serves it ("/static/{name}"), or "other"."""

    def __init__(self, routes: Iterable[tuple[str, re.Pattern[str] | None]]) -> None:
        routes = list(routes)
        self.exact = frozenset(path for path, _ in routes if "{" not in path)
        self.templates = [(path, regex) for path, regex in routes if "{" in path and regex is not None]

    def __call__(self, path: str) -> str:
        if path in self.exact:
            return path
        return next((template for template, regex in self.templates if regex.match(path)), "other")


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
        self.generated_images = Counter("toklip_generated_images", "Images made by /v1/generate", registry=r)
        self.generate_latency = Histogram("toklip_generate_duration_seconds",
                                          "Model time of one /v1/generate request (sampling and decoding)",
                                          buckets=GENERATE_BUCKETS, registry=r)

    def observe_batch(self, op: str, n: int, seconds: float) -> None:
        self.batch_size.labels(op).observe(n)
        self.batch_latency.labels(op).observe(seconds)
        self.items.labels(op).inc(n)

    def observe_generation(self, images: int, seconds: float) -> None:
        self.generated_images.inc(images)
        self.generate_latency.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
