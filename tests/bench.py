"""Benchmarks: `make bench-<model>` (results appended to docs/benchmarks.md with machine and date).

For a model's newest bundle (or --bundle):
- in-process runtime latency at batch 1 and 32 (ONNX Runtime, CPU unless a GPU is present);
- a real `bentoml serve` on 127.0.0.1 under a bounded closed-loop load (C concurrent clients for
  T seconds), once with adaptive batching and once with ROOST_MAX_BATCH_SIZE=1: requests/s, p50, p95.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from services.bundle import find_latest, open_bundle
from services.runtime import OnnxRuntime
from tests.server import start_server

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "datasets"


def _bird_requests():
    photos = sorted((SHARED / "bird_or_forest" / "bird").iterdir())[:20] + sorted((SHARED / "bird_or_forest" / "forest").iterdir())[:20]
    payloads = [p.read_bytes() for p in photos]
    return "/predict", lambda i: {"files": {"image": ("x.jpg", payloads[i % len(payloads)])}}


def _segment_requests():
    images = sorted((SHARED / "fastai_samples" / "camvid_tiny" / "images").iterdir())[:20]
    payloads = [p.read_bytes() for p in images]
    return "/predict", lambda i: {"files": {"image": ("x.png", payloads[i % len(payloads)])}}


def _cell(text: str):
    """A CSV cell as JSON would carry it: numbers as numbers, empty as null."""
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return text


def _tabular_requests():
    import csv

    with open(SHARED / "fastai_samples" / "adult_sample" / "adult.csv") as fh:
        rows = [{k.strip(): _cell(v) for k, v in r.items() if k != "salary"} for r, _ in zip(csv.DictReader(fh), range(50))]
    return "/predict", lambda i: {"json": {"row": rows[i % len(rows)]}}


def _collab_requests():
    import csv

    with open(SHARED / "fastai_samples" / "movie_lens_sample" / "ratings.csv") as fh:
        pairs = [{"user": int(r["userId"]), "movie": int(r["movieId"])} for r, _ in zip(csv.DictReader(fh), range(50))]
    return "/predict", lambda i: {"json": {"pairs": [pairs[i % len(pairs)]]}}


REQUESTS = {"bird": _bird_requests, "segment": _segment_requests, "tabular": _tabular_requests, "collab": _collab_requests}


def runtime_latency(bundle_path: Path, batch: int, repeats: int = 20) -> float:
    bundle = open_bundle(bundle_path)
    rt = OnnxRuntime(bundle)
    spec = bundle.spec
    fixed = {"height": getattr(spec, "height", 32), "width": getattr(spec, "width", 32)}
    feeds = {}
    for info in bundle.manifest.onnx_inputs:
        # dynamic axes: the batch, and for the U-Net height/width (served at the training size)
        shape = [batch if d == "batch" else d if isinstance(d, int) else fixed["height"] if i == 2 else fixed["width"]
                 for i, d in enumerate(info.shape)]
        if info.dtype.startswith("int"):
            feeds[info.name] = np.ones(shape, dtype=np.int64)
        else:
            feeds[info.name] = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    rt.run(feeds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        rt.run(feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


async def closed_loop(url: str, route: str, make, clients: int, seconds: float) -> dict:
    latencies, codes, i = [], {}, 0
    deadline = time.monotonic() + seconds

    async def worker(client):
        nonlocal i
        while time.monotonic() < deadline:
            i += 1
            start = time.perf_counter()
            r = await client.post(url + route, **make(i))
            latencies.append(time.perf_counter() - start)
            codes[r.status_code] = codes.get(r.status_code, 0) + 1

    async with httpx.AsyncClient(timeout=60) as client:
        began = time.monotonic()
        await asyncio.gather(*[worker(client) for _ in range(clients)])
        elapsed = time.monotonic() - began
    q = statistics.quantiles(latencies, n=20)
    return {"rps": len(latencies) / elapsed, "p50": statistics.median(latencies) * 1000, "p95": q[18] * 1000, "codes": codes}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", choices=sorted(REQUESTS))
    parser.add_argument("--artifacts", type=Path, default=ROOT / "artifacts")
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    bundle = args.bundle or find_latest(args.artifacts, args.model)
    route, make = REQUESTS[args.model]()
    b1, b32 = runtime_latency(bundle, 1), runtime_latency(bundle, 32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, env in (("adaptive batching (max 32)", {"ROOST_MAX_BATCH_SIZE": "32"}), ("no batching (max 1)", {"ROOST_MAX_BATCH_SIZE": "1"})):
            srv = start_server(f"services.{args.model}:{args.model.capitalize()}", bundle, Path(tmp), {**env, "ROOST_MAX_LATENCY_MS": "5000"})
            try:
                asyncio.run(closed_loop(srv.url, route, make, 2, 2))  # warm-up
                result = asyncio.run(closed_loop(srv.url, route, make, args.clients, args.seconds))
            finally:
                srv.stop()
            rows.append((label, result))
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    lines = [
        f"\n## {args.model} — {dt.date.today().isoformat()}",
        f"Machine: {os.cpu_count()} cores ({cpu}), no GPU, Python {platform.python_version()}; bundle `{bundle.name}` "
        f"({open_bundle(bundle).manifest.arch}). Command: `make bench-{args.model}`.",
        "",
        f"ONNX Runtime in-process latency (median of 20): batch 1 **{b1:.3f} ms**, batch 32 **{b32:.3f} ms** "
        f"({b32 / 32:.3f} ms per row).",
        "",
        f"HTTP `{route}` on 127.0.0.1, {args.clients} concurrent clients for {args.seconds:g} s (one row per request):",
        "",
        "| server | requests/s | p50 ms | p95 ms | status codes |",
        "|---|---|---|---|---|",
    ]
    for label, r in rows:
        lines.append(f"| {label} | {r['rps']:.1f} | {r['p50']:.1f} | {r['p95']:.1f} | {r['codes']} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.out.exists():
        args.out.write_text("# Benchmarks\n\nWritten by `make bench-<model>` (tests/bench.py). Newest last.\n")
    with open(args.out, "a") as fh:
        fh.write(text)


if __name__ == "__main__":
    main()
