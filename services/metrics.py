"""Roost's Prometheus metrics, served on /metrics beside BentoML's own.

BentoML runs every worker process with PROMETHEUS_MULTIPROC_DIR set, so these plain
prometheus_client objects are aggregated across workers: counters and histograms add up, and
every gauge says how (``livesum`` for amounts, ``livemax`` for the info gauge), so several
workers never overwrite each other. Names here are a public interface: dashboards, alerts and
the chart's HPA use them.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram

STAGE_SECONDS = Histogram(
    "roost_stage_seconds",
    "Time spent in each stage of a request: preprocess, infer (one batch), postprocess.",
    ["model", "stage"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
BATCH_SIZE = Histogram(
    "roost_batch_size",
    "Rows in each batch the model executed (after adaptive batching).",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
PREDICTIONS = Counter(
    "roost_predictions_total", "Predictions returned, by predicted label.", ["model", "label"]
)
REQUESTS = Counter(
    "roost_requests_total",
    "Requests answered, by protocol (http, oip_rest, oip_grpc) and outcome (ok, client_error, "
    "rejected, error).",
    ["model", "protocol", "outcome"],
)
IN_FLIGHT = Gauge(
    "roost_requests_in_flight",
    "Requests accepted and not yet answered, per pod; the custom autoscaling metric.",
    ["model"],
    multiprocess_mode="livesum",
)
REJECTED = Counter(
    "roost_rejected_total",
    "Requests refused or dropped before inference, by reason (queue_full, timeout, shutting_down, "
    "not_ready).",
    ["model", "reason"],
)
MODEL_INFO = Gauge(
    "roost_model_info",
    "The model this process serves (value 1): precision fp32/int8 and the bundle file it runs.",
    ["model", "version", "runtime", "arch", "device", "precision", "file"],
    multiprocess_mode="livemax",
)
REQUEST_SECONDS = Histogram(
    "roost_request_seconds",
    "Whole time a work-carrying request (a POST on HTTP, an OIP ModelInfer on gRPC) spent in the "
    "server process, from admission to the answer sent, refusals included; by protocol (http, "
    "oip_rest, oip_grpc).",
    ["model", "protocol"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
QUEUE_ROWS = Gauge(
    "roost_queue_rows",
    "Rows waiting in the model's batcher queue (summed over workers).",
    ["model"],
    multiprocess_mode="livesum",
)
QUEUE_SECONDS = Histogram(
    "roost_queue_seconds",
    "Time a request's rows waited in the batcher queue before their batch started.",
    ["model"],
    buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
BATCHES = Counter(
    "roost_batches_total",
    "Batches dispatched, by why: full (max_batch_size rows), idle (the model was free: ran at once), "
    "latency (waited max_latency_ms for more rows).",
    ["model", "reason"],
)

METRIC_NAMES = (
    "roost_stage_seconds",
    "roost_batch_size",
    "roost_predictions_total",
    "roost_requests_total",
    "roost_request_seconds",
    "roost_requests_in_flight",
    "roost_rejected_total",
    "roost_model_info",
    "roost_queue_rows",
    "roost_queue_seconds",
    "roost_batches_total",
)


@contextmanager
def _observed(histogram: Histogram, *labels: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        histogram.labels(*labels).observe(time.perf_counter() - start)


def request_timer(model: str, protocol: str):
    """Observe roost_request_seconds for one request, however it ends (answer, refusal, error)."""
    return _observed(REQUEST_SECONDS, model, protocol)


def timed(model: str, stage: str):
    return _observed(STAGE_SECONDS, model, stage)
