"""Serving settings: every ROOST_* variable is read here, once per process, and checked at start.

Defaults per model come from the registry (services/registry.py). A bad value stops the server
with one line naming the variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from services.bundle import find_latest
from services.registry import facts_for


def _raw(name: str) -> str | None:
    raw = os.environ.get(name)
    return None if raw is None or raw.strip() == "" else raw.strip()


def _int(name: str, default: int, minimum: int = 0) -> int:
    raw = _raw(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise SystemExit(f"{name}={value} must be at least {minimum}")
    return value


def _float(name: str, default: float, minimum: float = 0.0) -> float:
    raw = _raw(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not a number") from None
    if not value >= minimum:
        raise SystemExit(f"{name}={raw} must be at least {minimum:g}")
    return value


def _choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = (_raw(name) or default).lower()
    if value not in choices:
        raise SystemExit(f"{name}={value!r}: expected one of {', '.join(choices)}")
    return value


def cores() -> int:
    return len(os.sched_getaffinity(0))


def http_host() -> str | None:
    """The address the HTTP server was told to bind (`bentoml serve --host`), as this worker sees
    it: BentoML's arbiter binds the socket and hands workers its file descriptor (`--fd N`)."""
    import socket
    import sys

    argv = sys.argv
    if "--fd" not in argv or argv.index("--fd") + 1 >= len(argv):
        return None
    try:
        fd = int(argv[argv.index("--fd") + 1])
        with socket.socket(fileno=os.dup(fd)) as sock:
            return sock.getsockname()[0]
    except (ValueError, OSError):
        return None


@dataclass(frozen=True)
class Settings:
    model: str
    bundle: Path | None  # an explicit bundle folder (ROOST_BUNDLE_<MODEL> or ROOST_BUNDLE)
    artifacts: Path  # else the newest bundle under artifacts/<model>/
    runtime: str  # "onnx" (default) or "fastai"
    precision: str  # "auto" (INT8 on CPU when the bundle has it, else FP32), "fp32" or "int8"
    trusted_key: str | None  # Ed25519 public key (PEM file or text): only bundles it signed are served
    device: str  # "auto", "cpu" or "cuda"
    workers: int  # worker processes, each with its own runtime session and batcher
    max_batch_size: int
    max_latency_ms: float
    max_queue_rows: int  # rows waiting per worker before 429
    max_in_flight: int  # requests admitted per worker (body not yet read counts) before 429
    max_queue_wait_ms: float  # queued longer than this: 503 + Retry-After, never run
    drain_s: float  # after SIGTERM: answer new work 503 (Connection: close) this long, then stop
    timeout_s: float  # a request's deadline
    ort_threads: int  # onnxruntime intra-op threads per worker
    grpc_port: int  # 0: no gRPC server
    grpc_host: str
    grpc_grace_s: float
    max_body_bytes: int  # request body limit on every route; the gRPC message limit
    max_request_pixels: int  # decoded image pixels per request

    def bundle_path(self) -> Path:
        return self.bundle if self.bundle else find_latest(self.artifacts, self.model)


def settings_for(model: str) -> Settings:
    facts = facts_for(model)
    bundle = _raw(f"ROOST_BUNDLE_{model.upper()}") or _raw("ROOST_BUNDLE")
    device = _choice("ROOST_DEVICE", "auto", ("auto", "cpu", "cuda"))
    # Measured (docs/benchmarks.md): on CPU one worker whose onnxruntime uses every core serves
    # images at least as fast as several single-threaded workers, at a fraction of the memory.
    workers = _int("ROOST_WORKERS", 1, minimum=1)
    return Settings(
        model=model,
        bundle=Path(bundle) if bundle else None,
        artifacts=Path(_raw("ROOST_ARTIFACTS") or "artifacts"),
        runtime=_choice("ROOST_RUNTIME", "onnx", ("onnx", "fastai")),
        precision=_choice("ROOST_PRECISION", "auto", ("auto", "fp32", "int8")),
        trusted_key=_raw("ROOST_TRUSTED_KEY"),
        device=device,
        workers=workers,
        max_batch_size=_int("ROOST_MAX_BATCH_SIZE", facts.max_batch_size, minimum=1),
        max_latency_ms=_float("ROOST_MAX_LATENCY_MS", facts.max_latency_ms),
        max_queue_rows=_int("ROOST_MAX_QUEUE", facts.max_queue_rows, minimum=1),
        max_in_flight=_int("ROOST_MAX_IN_FLIGHT", facts.max_in_flight, minimum=1),
        max_queue_wait_ms=_float("ROOST_MAX_QUEUE_WAIT_MS", facts.max_queue_wait_ms, minimum=1),
        drain_s=_float("ROOST_DRAIN_S", 1.0),
        timeout_s=_float("ROOST_TIMEOUT_S", facts.timeout_s, minimum=0.001),
        ort_threads=_int("ROOST_ORT_THREADS", 0) or max(1, cores() // workers),
        grpc_port=_int("ROOST_GRPC_PORT", 0),
        grpc_host=_raw("ROOST_GRPC_HOST") or http_host() or "127.0.0.1",
        grpc_grace_s=_float("ROOST_GRPC_GRACE_S", 10.0),
        max_body_bytes=int(_float("ROOST_MAX_BODY_MB", facts.max_body_mb, minimum=0.001) * (1 << 20)),
        max_request_pixels=_int("ROOST_MAX_REQUEST_PIXELS", facts.max_request_pixels),
    )
