"""Serving settings, read from the environment once per process (ROOST_* variables)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from services.bundle import find_latest


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not an integer") from None


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not a number") from None


@dataclass(frozen=True)
class Settings:
    model: str
    bundle: Path | None  # an explicit bundle folder (ROOST_BUNDLE_<MODEL> or ROOST_BUNDLE)
    artifacts: Path  # else the newest bundle under artifacts/<model>/
    runtime: str  # "onnx" (default) or "fastai"
    device: str  # "auto", "cpu" or "cuda"
    max_batch_size: int
    max_latency_ms: int
    max_concurrency: int  # requests in flight per service before 429
    timeout_s: float
    ort_threads: int  # 0: let onnxruntime decide
    grpc_port: int  # 0: no gRPC server

    def bundle_path(self) -> Path:
        return self.bundle if self.bundle else find_latest(self.artifacts, self.model)


def settings_for(model: str, *, max_batch_size: int = 32, max_latency_ms: int = 1000) -> Settings:
    upper = model.upper()
    bundle = os.environ.get(f"ROOST_BUNDLE_{upper}") or os.environ.get("ROOST_BUNDLE")
    runtime = os.environ.get("ROOST_RUNTIME", "onnx").strip().lower()
    if runtime not in ("onnx", "fastai"):
        raise SystemExit(f"ROOST_RUNTIME={runtime!r}: expected 'onnx' or 'fastai'")
    device = os.environ.get("ROOST_DEVICE", "auto").strip().lower()
    if device not in ("auto", "cpu", "cuda"):
        raise SystemExit(f"ROOST_DEVICE={device!r}: expected 'auto', 'cpu' or 'cuda'")
    return Settings(
        model=model,
        bundle=Path(bundle) if bundle else None,
        artifacts=Path(os.environ.get("ROOST_ARTIFACTS", "artifacts")),
        runtime=runtime,
        device=device,
        max_batch_size=_int("ROOST_MAX_BATCH_SIZE", max_batch_size),
        max_latency_ms=_int("ROOST_MAX_LATENCY_MS", max_latency_ms),
        max_concurrency=_int("ROOST_MAX_CONCURRENCY", 256),
        timeout_s=_float("ROOST_TIMEOUT_S", 30.0),
        ort_threads=_int("ROOST_ORT_THREADS", 0),
        grpc_port=_int("ROOST_GRPC_PORT", 0),
    )
