"""Prometheus metrics of one server (``GET /metrics``), in a registry of its own so several apps can share a process
(tests start more than one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Request latency buckets (seconds): a short clip on a GPU takes tens of ms, an hour-long upload on a CPU minutes.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # rows per decoding batch: powers of two up to large GPU batches


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("nemo_lite_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.request_seconds = Histogram("nemo_lite_request_seconds", "HTTP request latency, seconds",
                                         ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_rows = Histogram("nemo_lite_batch_rows", "rows per decoding batch", ["kind"],
                                    buckets=ROW_BUCKETS, registry=r)
        self.batch_seconds = Histogram("nemo_lite_batch_seconds", "wall time of one decoding batch", ["kind"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("nemo_lite_queue_depth", "transcription and chat requests admitted and not yet "
                                 "answered (what --max-queue bounds)", registry=r)
        self.audio_seconds = Counter("nemo_lite_audio_seconds", "seconds of audio transcribed or sent to chat",
                                     registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
