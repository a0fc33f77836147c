"""Benchmarks: `make bench-<model>` (`python -m tests.bench <model> --artifacts artifacts`).

One invocation measures, for each of --rounds rounds (default 2), on the model's newest bundle:

- **inprocess**: the limit. The same decode -> resize -> ONNX Runtime pipeline in this process, no
  HTTP (image models: services.preprocessing + services.runtime.OnnxRuntime at batch 1 and 8, and
  ORT alone at batch 8; tables: the service's own model class, preprocess -> runtime -> postprocess,
  at batch 1, 8 and the batch route's size), in rows/s and rows per CPU second; measured at the start
  and at the end of each round (other work on a shared machine drifts), the better pass is the limit.
- **fastai** (tabular, collab): `learn.predict` on a few dozen rows, one row per call, rows/s
  (collab's plain Learner.predict takes no table row: a one-row test_dl + get_preds instead).
- **baseline**: a plain FastAPI + onnxruntime server on the same bundle (tests/bench_baseline.py),
  no batching, started with uvicorn on 127.0.0.1 in its own process group.
- **typed**, **rest**, **grpc**: Roost's typed route, OIP REST (binary tensor extension) and OIP
  gRPC (raw contents), against one `bentoml serve` started with tests/server.py:start_server; its
  cold start (spawn to /readyz 200) is recorded each round.
- **batch** (tabular, collab): Roost's batch route (tabular /predict_batch with 256 rows, collab
  /predict with 1024 pairs), rows/s.
- image models whose bundle has `model.int8.onnx`: the in-process rows again with the INT8 model, and
  **typed_int8**, **rest_int8**: a second Roost server with ROOST_PRECISION=int8 (the FP32 peers run
  with ROOST_PRECISION=fp32).
- **large** (image models): phone-size photos (shared photos upscaled to 4000x3000, JPEG quality 90),
  in process at batch 1 through FP32 ONNX Runtime: full decode (what the baseline does) vs Roost's
  draft-mode decode (services/preprocessing.py), images/s and label agreement.

Every server peer runs closed loops at each --concurrency (default 1, 4, 16, 64) for --seconds
(default 10) after a warm-up: requests/s, p50/p95/p99 latency of the answered requests, errors
(non-200 answers and exceptions), the server process tree's CPU seconds (and answered requests per
CPU second) and peak memory (PSS summed over the tree, sampled every 0.2 s with psutil), and the load
generator's own CPU seconds. The order of the two servers alternates between rounds. The load
generator is one asyncio loop (raw HTTP/1.1 keep-alive connections / grpc.aio) with pre-encoded request bodies; it
shares the machine's cores with the server, which the output says.

    python -m tests.bench bird --rounds 1 --seconds 2 --out /tmp/bench.md     # a smoke run
    make bench-bird BENCH_ARGS="--workers 2"                                   # 2 workers x 1 ORT thread
    make bench-tabular BENCH_ARGS="--only typed,baseline --concurrency 4,16"
    make bench-bird RECORD=1                                                   # also append to docs/benchmarks.md

The markdown section is printed and written to --out (default bench-results/<model>-<UTC time>.md, an
ignored folder, so a try leaves the tree clean); --record (RECORD=1) also appends it to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import csv
import dataclasses
import datetime as dt
import json
import math
import os
import platform
import shlex
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import httpx
import numpy as np
import psutil

from services.bundle import find_latest, open_bundle
from tests.server import free_port, start_server

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("ROOST_SHARED_DATASETS", ROOT.parent / "shared" / "datasets"))  # as training/data.py
PEERS = ("inprocess", "fastai", "baseline", "typed", "rest", "grpc", "batch", "typed_int8", "rest_int8", "large")
ROOST_PEERS = ("typed", "rest", "grpc", "batch")
INT8_PEERS = ("typed_int8", "rest_int8")
LARGE_SIZE, LARGE_PHOTOS = (4000, 3000), 8
TABLES = ("tabular", "collab")
BATCH_ROWS = {"tabular": 256, "collab": 1024}
PREAMBLE_MARK = "<!-- bench-peers -->"
PREAMBLE = f"""# Benchmarks

{PREAMBLE_MARK}
Appended by `make bench-<model> RECORD=1` (`python -m tests.bench <model> --record`, tests/bench.py;
extra options via `BENCH_ARGS`; without RECORD=1 results go only to the ignored bench-results/). Newest last. Sections from 2026-12 on compare, in one run on one machine:

- **in-process limit**: decode -> resize -> ONNX Runtime (image models) or the model's preprocess ->
  runtime -> postprocess (tables) in one process, no HTTP, no server; batch 8 is the reference.
- **baseline**: a plain FastAPI + onnxruntime server on the same bundle (tests/bench_baseline.py): no
  batching, multipart upload for images, JSON for tables, ORT threads = cores (÷ workers).
- **Roost typed**: the model's typed route (`POST /predict`) on a real `bentoml serve`.
- **Roost OIP REST**: `POST /v2/models/<model>/infer` with Triton's binary tensor extension.
- **Roost OIP gRPC**: `inference.GRPCInferenceService/ModelInfer` with raw contents.
- tabular/collab also: fastai `learn.predict` (one row per call) and Roost's batch route, in rows/s.

Closed loops of 1-64 concurrent clients, one row per request; the load generator (one asyncio
process) runs on the same cores as the server, so absolute numbers are low-side: compare peers
within one section, as ratios. Requests per server CPU second (and the in-process rows per CPU
second) hold up better than requests/s when other work shares the machine. Sections dated
2026-11 were written by the earlier bench (two BentoML services; batching on vs off) and are kept
for history.
"""


# --- machine ---------------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    import onnxruntime as ort

    cpu, flags = None, []
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and cpu is None:
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = [f for f in line.split(":", 1)[1].split() if f.startswith("avx") or "vnni" in f or f.startswith("amx")]
                break
    versions = {"Python": platform.python_version(), "onnxruntime": ort.__version__}
    for name in ("bentoml", "fastapi", "uvicorn", "httpx", "grpc"):
        with contextlib.suppress(Exception):
            versions[name] = __import__(name).__version__
    gpu = "CUDAExecutionProvider" in ort.get_available_providers()
    return {
        "cores": str(len(os.sched_getaffinity(0))),
        "cpu": cpu or platform.processor() or "unknown CPU",
        "flags": " ".join(flags) or "none",
        "gpu": "CUDA available to ORT" if gpu else "no GPU",
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


# --- request bodies ------------------------------------------------------------------------------


@dataclasses.dataclass
class Workload:
    """Pre-encoded requests for one model: bodies are cycled by request number."""

    rows: list[Any]  # raw rows: image bytes, table records (dicts) or (user, movie) pairs
    typed: list[tuple[bytes, dict]]  # (body, headers) for POST /predict (typed route and baseline)
    rest: list[tuple[bytes, dict]]  # OIP REST binary
    grpc: list[bytes]  # serialized ModelInferRequest
    batch: tuple[str, bytes, dict, int] | None = None  # (route, body, headers, rows) of the batch route


def _multipart(data: bytes, filename: str, content_type: str) -> tuple[bytes, dict]:
    boundary = "roostbench7d3f9a"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), {"content-type": f"multipart/form-data; boundary={boundary}"}


def _bytes_tensor(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(x)) + x for x in items)


def _oip(model: str, tensors: list[tuple[str, str, list[int], bytes]]) -> tuple[tuple[bytes, dict], bytes]:
    """(name, datatype, shape, raw) tensors -> (REST binary body + headers, gRPC request bytes)."""
    from services.oip.proto import grpc_predict_v2_pb2 as pb

    head = json.dumps({
        "inputs": [{"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": len(r)}} for n, d, s, r in tensors],
        "parameters": {"binary_data_output": True},
    }).encode()
    rest = (head + b"".join(r for *_, r in tensors),
            {"content-type": "application/octet-stream", "inference-header-content-length": str(len(head))})
    request = pb.ModelInferRequest(
        model_name=model,
        inputs=[pb.ModelInferRequest.InferInputTensor(name=n, datatype=d, shape=s) for n, d, s, _ in tensors],
        raw_input_contents=[r for *_, r in tensors],
    )
    return rest, request.SerializeToString()


def _image_workload(model: str, files: list[Path], content_type: str) -> Workload:
    rows = [p.read_bytes() for p in files]
    typed, rest, grpc = [], [], []
    for p, data in zip(files, rows):
        typed.append(_multipart(data, p.name, content_type))
        r, g = _oip(model, [("image", "BYTES", [1], _bytes_tensor([data]))])
        rest.append(r)
        grpc.append(g)
    return Workload(rows, typed, rest, grpc)


def _cell(text: str):
    """A CSV cell as JSON would carry it: numbers as numbers, empty as null."""
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return text


ADULT_TEXT = ("workclass", "education", "marital-status", "occupation", "relationship", "race")
ADULT_NUMBERS = ("age", "fnlwgt", "education-num")


def _tabular_workload(n: int) -> Workload:
    with open(SHARED / "fastai_samples" / "adult_sample" / "adult.csv") as fh:
        rows = [{k.strip(): _cell(v) for k, v in r.items() if k.strip() != "salary"} for r, _ in zip(csv.DictReader(fh), range(n))]
    typed, rest, grpc = [], [], []
    for row in rows[:64]:
        typed.append((json.dumps({"row": row}).encode(), {"content-type": "application/json"}))
        tensors = [(c, "BYTES", [1], _bytes_tensor([str(row.get(c) or "").encode()])) for c in ADULT_TEXT]
        tensors += [(c, "FP32", [1], np.array([row.get(c) if row.get(c) is not None else np.nan], dtype="<f4").tobytes())
                    for c in ADULT_NUMBERS]
        r, g = _oip("tabular", tensors)
        rest.append(r)
        grpc.append(g)
    batch = rows[: BATCH_ROWS["tabular"]]
    return Workload(rows, typed, rest, grpc,
                    ("/predict_batch", json.dumps({"rows": batch}).encode(), {"content-type": "application/json"}, len(batch)))


def _collab_workload(n: int) -> Workload:
    with open(SHARED / "fastai_samples" / "movie_lens_sample" / "ratings.csv") as fh:
        rows = [(int(r["userId"]), int(r["movieId"])) for r, _ in zip(csv.DictReader(fh), range(n))]
    typed, rest, grpc = [], [], []
    for user, movie in rows[:64]:
        typed.append((json.dumps({"pairs": [{"user": user, "movie": movie}]}).encode(), {"content-type": "application/json"}))
        r, g = _oip("collab", [("user", "INT64", [1], np.array([user], "<i8").tobytes()),
                               ("movie", "INT64", [1], np.array([movie], "<i8").tobytes())])
        rest.append(r)
        grpc.append(g)
    batch = [{"user": u, "movie": m} for u, m in rows[: BATCH_ROWS["collab"]]]
    return Workload(rows, typed, rest, grpc,
                    ("/predict", json.dumps({"pairs": batch}).encode(), {"content-type": "application/json"}, len(batch)))


def workload(model: str) -> Workload:
    if model == "bird":
        folder = SHARED / "bird_or_forest"
        files = sorted((folder / "bird").iterdir())[:20] + sorted((folder / "forest").iterdir())[:20]
        return _image_workload("bird", files, "image/jpeg")
    if model == "segment":
        return _image_workload("segment", sorted((SHARED / "fastai_samples" / "camvid_tiny" / "images").iterdir())[:20], "image/png")
    if model == "tabular":
        return _tabular_workload(1024)
    return _collab_workload(1024)


# --- in-process ------------------------------------------------------------------------------------


def _rate(step: Callable[[int], int], seconds: float, min_calls: int = 3) -> tuple[float, float]:
    """Calls step(i) -> rows until `seconds` pass (at least min_calls): (rows per second, rows per
    CPU second of this process), the second unaffected by other work on the machine."""
    step(0)  # warm
    rows, calls, start, cpu = 0, 0, time.perf_counter(), time.process_time()
    while calls < min_calls or time.perf_counter() - start < seconds:
        rows += step(calls)
        calls += 1
    return rows / (time.perf_counter() - start), rows / max(1e-9, time.process_time() - cpu)


def in_process(model: str, bundle_path: Path, work: Workload, seconds: float, threads: int) -> dict[str, tuple[float, float]]:
    """(rows/s, rows per CPU s) of the serving pipeline in this process, by batch ('B=8': the FP32
    limit); image bundles with model.int8.onnx also 'INT8 B=8' and 'INT8 ORT only, B=8'."""
    bundle = open_bundle(bundle_path)
    spec = bundle.spec
    out: dict[str, tuple[float, float]] = {}
    if model in ("bird", "segment"):
        from services.preprocessing import decode_image, image_pixels, segmentation_pixels, softmax
        from services.runtime import OnnxRuntime

        tensor = image_pixels if model == "bird" else segmentation_pixels
        images = work.rows
        for precision in ("fp32", "int8") if bundle.manifest.has_int8() else ("fp32",):
            rt = OnnxRuntime(bundle, device="cpu", threads=threads, precision=precision)
            name = rt.input_names[0]
            tag = "" if precision == "fp32" else "INT8 "

            def pipeline(batch: int):
                def step(i: int) -> int:
                    chunk = [images[(i * batch + k) % len(images)] for k in range(batch)]
                    x = np.stack([tensor(decode_image(b), spec) for b in chunk])
                    y = rt.run({name: x})[0]
                    softmax(y, axis=1).argmax(1)  # labels (bird) / class-index masks (segment)
                    return batch
                return step

            if not tag:
                out["B=1"] = _rate(pipeline(1), seconds / 4)
            out[f"{tag}B=8"] = _rate(pipeline(8), seconds / 2)
            x8 = np.stack([tensor(decode_image(b), spec) for b in images[:8]])
            out[f"{tag}ORT only, B=8"] = _rate(lambda i: (rt.run({name: x8}), 8)[1], seconds / 4)
        return out

    if model == "tabular":
        from services.tabular import TabularModel as cls
    else:
        from services.collab import CollabModel as cls
    from services.settings import settings_for

    settings = dataclasses.replace(settings_for(model), bundle=bundle_path, runtime="onnx", device="cpu", ort_threads=threads)
    roost = cls(settings=settings).load()
    requests = work.rows if model == "tabular" else [{"user": u, "movie": m} for u, m in work.rows]

    def pipeline(batch: int):
        def step(i: int) -> int:
            start = (i * batch) % max(1, len(requests) - batch)
            request = requests[start : start + batch]
            roost.postprocess(roost.run_batch(roost.preprocess(request)), request)
            return batch
        return step

    for batch in (1, 8, BATCH_ROWS[model]):
        out[f"B={batch}"] = _rate(pipeline(batch), seconds / 6)
    return out


def large_photos(model: str, work: Workload, n: int = LARGE_PHOTOS) -> list[bytes]:
    """Phone-size JPEGs made from the workload's photos: upscaled to 4000x3000, quality 90."""
    import io

    from PIL import Image

    out = []
    for data in work.rows[:: max(1, len(work.rows) // n)][:n]:
        buffer = io.BytesIO()
        Image.open(io.BytesIO(data)).convert("RGB").resize(LARGE_SIZE, Image.BICUBIC).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def large_decode(model: str, bundle_path: Path, photos: list[bytes], seconds: float, threads: int) -> dict:
    """Images/s of decode -> resize -> FP32 ORT at batch 1 on phone-size JPEGs: full decode vs draft decode."""
    from services.preprocessing import decode_image, draft_size, image_pixels, segmentation_pixels
    from services.runtime import OnnxRuntime

    bundle = open_bundle(bundle_path)
    spec = bundle.spec
    rt = OnnxRuntime(bundle, device="cpu", threads=threads, precision="fp32")
    name = rt.input_names[0]
    tensor = image_pixels if model == "bird" else segmentation_pixels
    out: dict = {"photos": len(photos), "bytes": int(np.mean([len(p) for p in photos]))}
    labels = {}
    for how, draft in (("full decode", None), ("draft decode", draft_size(spec))):
        def step(i: int, draft=draft) -> int:
            rt.run({name: tensor(decode_image(photos[i % len(photos)], draft=draft), spec)[None]})
            return 1
        out[how] = _rate(step, seconds / 2)
        labels[how] = [rt.run({name: tensor(decode_image(p, draft=draft), spec)[None]})[0].argmax(1) for p in photos]
    out["agreement"] = float(np.mean([(a == b).mean() for a, b in zip(labels["full decode"], labels["draft decode"])]))
    return out


def fastai_predict(model: str, bundle_path: Path, work: Workload, rows: int = 40) -> float:
    """fastai `learn.predict`, one row per call, rows/s (the lesson's way of serving)."""
    import warnings

    import pandas as pd
    from fastai.learner import load_learner

    warnings.filterwarnings("ignore", module=r"(fastai|torch)\.")  # pickle / deprecation notices
    learn = load_learner(bundle_path / "learner.pkl", cpu=True)
    if model == "tabular":
        frame = pd.DataFrame(work.rows[:rows]).replace({None: np.nan})
    else:
        frame = pd.DataFrame(work.rows[:rows], columns=list(learn.dls.classes)[:2])  # userId, movieId
    if model == "tabular":
        def predict(i: int):
            return learn.predict(frame.iloc[i])
    else:  # collab_learner's plain Learner.predict takes no table row: one-row test_dl + get_preds instead
        def predict(i: int):
            return learn.get_preds(dl=learn.dls.test_dl(frame.iloc[[i]]), reorder=False)  # one row: a 0-d output
    with learn.no_bar(), learn.no_logging():
        predict(0)
        start = time.perf_counter()
        for i in range(len(frame)):
            predict(i)
        return len(frame) / (time.perf_counter() - start)


# --- the server's process tree -------------------------------------------------------------------


class TreeMonitor:
    """CPU seconds and peak memory (PSS) of a process and its descendants, sampled every `interval` s."""

    def __init__(self, pid: int, interval: float = 0.2):
        self.root = psutil.Process(pid)
        self.interval = interval
        self.lock = threading.Lock()
        self.cpu: dict[int, float] = {}  # pid -> last seen user+system seconds
        self.base: dict[int, float] = {}
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _procs(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return []

    def sample(self) -> None:
        rss = 0
        seen: dict[int, float] = {}
        for p in self._procs():
            with contextlib.suppress(psutil.Error):
                with p.oneshot():
                    t = p.cpu_times()
                    seen[p.pid] = t.user + t.system
                    # PSS: shared pages (libraries, the forked workers' common memory) counted once
                    # across the tree, as a pod's cgroup counts them; RSS would count them per process.
                    try:
                        rss += p.memory_full_info().pss
                    except (psutil.AccessDenied, AttributeError):
                        rss += p.memory_info().rss
        with self.lock:
            self.cpu.update(seen)
            self.peak = max(self.peak, rss)

    def _loop(self) -> None:
        while not self.stop.wait(self.interval):
            self.sample()

    def begin(self) -> None:
        self.sample()
        with self.lock:
            self.base = dict(self.cpu)
            self.peak = 0
        self.sample()

    def end(self) -> tuple[float, int]:
        self.sample()
        with self.lock:
            return sum(v - self.base.get(pid, 0.0) for pid, v in self.cpu.items()), self.peak

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)


# --- closed-loop load ------------------------------------------------------------------------------


@dataclasses.dataclass
class Point:
    peer: str
    round: int
    clients: int
    ok: int
    seconds: float
    latencies_ms: list[float]
    errors: dict[str, int]
    server_cpu_s: float
    peak_rss_mb: float
    client_cpu_s: float
    rows_per_request: int = 1

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def per_cpu(self) -> float:
        """Answered requests per CPU second of the server's process tree."""
        return self.ok / self.server_cpu_s if self.server_cpu_s > 0 else float("nan")

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


Send = Callable[[int], Awaitable[Any]]


async def closed_loop(send: Send, clients: int, seconds: float) -> tuple[int, float, list[float], dict[str, int]]:
    """`clients` workers, each sending its next request as soon as the previous one is answered
    (``send(i, k)``: request i from client k)."""
    latencies: list[float] = []
    errors: collections.Counter = collections.Counter()
    deadline = time.perf_counter() + seconds

    async def worker(k: int) -> None:
        i = k
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                status = await send(i, k)
            except Exception as exc:  # noqa: BLE001 - every failure is counted, by type
                status = type(exc).__name__
            if status == 200:
                latencies.append((time.perf_counter() - start) * 1000)
            else:
                errors[str(status)] += 1
            i += clients

    began = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(clients)))
    return len(latencies), time.perf_counter() - began, latencies, dict(errors)


class RawHttp:
    """A cheap HTTP/1.1 load generator: one keep-alive connection per client, requests pre-built
    as bytes, responses read by Content-Length. httpx costs about a millisecond of CPU per request,
    which on this 2-core machine would cap what the client can send below what the servers answer."""

    def __init__(self, url: str, bodies: list[tuple[bytes, dict]]):
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.requests = []
        for body, headers in bodies:
            head = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.hostname}:{parts.port}", f"Content-Length: {len(body)}"]
            head += [f"{k}: {v}" for k, v in headers.items() if k.lower() not in ("content-length", "host")]
            self.requests.append(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        self.connections: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}

    async def send(self, i: int, k: int):
        conn = self.connections.get(k)
        if conn is None:
            conn = self.connections[k] = await asyncio.open_connection(self.host, self.port)
        reader, writer = conn
        try:
            writer.write(self.requests[i % len(self.requests)])
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
                elif name.strip().lower() == b"connection" and value.strip().lower() == b"close":
                    self.connections.pop(k, None)
            await reader.readexactly(length)
            return status
        except Exception:
            self.connections.pop(k, None)
            writer.close()
            raise

    async def close(self) -> None:
        for _, writer in self.connections.values():
            writer.close()
        self.connections.clear()


def http_sender(client: RawHttp, url: str = "", bodies=None) -> Send:
    return client.send


def grpc_sender(channel, bodies: list[bytes]) -> Send:
    import grpc

    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # bytes in, bytes out

    async def send(i: int, k: int = 0):
        try:
            await call(bodies[i % len(bodies)], timeout=120)
            return 200
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
    return send


async def run_points(peer: str, round_no: int, target: str, work: Workload, monitor: TreeMonitor,
                     concurrency: list[int], seconds: float, warmup: float, model: str) -> list[Point]:
    """Warm-up, then one closed loop per concurrency; a fresh client per point."""
    points = []
    for clients in [0, *concurrency]:  # 0: the warm-up
        n = clients or 4
        rows = 1
        async with contextlib.AsyncExitStack() as stack:
            if peer == "grpc":
                import grpc

                channel = await stack.enter_async_context(grpc.aio.insecure_channel(
                    target, options=[("grpc.max_receive_message_length", 256 << 20), ("grpc.max_send_message_length", 256 << 20)]))
                send = grpc_sender(channel, work.grpc)
            else:
                if peer == "rest":
                    client = RawHttp(f"{target}/v2/models/{model}/infer", work.rest)
                elif peer == "batch":
                    route, body, headers, rows = work.batch
                    client = RawHttp(target + route, [(body, headers)])
                else:  # typed, baseline
                    client = RawHttp(f"{target}/predict", work.typed)
                stack.push_async_callback(client.close)
                send = http_sender(client)
            if not clients:
                await closed_loop(send, n, warmup)
                continue
            monitor.begin()
            me = psutil.Process()
            c0 = sum(me.cpu_times()[:2])
            ok, elapsed, latencies, errors = await closed_loop(send, clients, seconds)
            client_cpu = sum(me.cpu_times()[:2]) - c0
            cpu, peak = monitor.end()
        point = Point(peer, round_no, clients, ok, elapsed, latencies, errors, cpu, peak / 2**20, client_cpu, rows)
        print(f"  {peer:8s} round {round_no} c={clients:<3d} {point.rps * rows:9.1f} rows/s  p50 {point.pct(50):8.1f} ms  "
              f"errors {errors or 0}  server CPU {cpu:.1f} s  PSS {point.peak_rss_mb:.0f} MB", file=sys.stderr, flush=True)
        points.append(point)
    return points


# --- the baseline server ---------------------------------------------------------------------------


class Baseline:
    def __init__(self, bundle: Path, tmp: Path, threads: int, workers: int, ready_timeout: float = 120):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"baseline-{self.port}.log"
        spawned = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.bench_baseline", "--bundle", str(bundle), "--port", str(self.port),
             "--threads", str(threads), "--workers", str(workers)],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"baseline exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    self.cold_start = time.perf_counter() - spawned
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"baseline not ready after {ready_timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


# --- one round -------------------------------------------------------------------------------------


def run_round(args, round_no: int, bundle: Path, work: Workload, tmp: Path, results: dict) -> None:
    cores = len(os.sched_getaffinity(0))
    only = args.only
    results["load"][round_no] = [os.getloadavg()[0]]

    def inprocess(when: str):  # at the start and at the end of the round: other work on the machine drifts
        if "inprocess" in only:
            print(f"round {round_no}: in-process ({when})", file=sys.stderr, flush=True)
            results["inprocess"].setdefault(round_no, {})[when] = in_process(args.model, bundle, work, args.seconds, cores)

    inprocess("start")
    if "large" in only and args.model not in TABLES:
        print(f"round {round_no}: large photos (full vs draft decode)", file=sys.stderr, flush=True)
        results["large"][round_no] = large_decode(args.model, bundle, large_photos(args.model, work), args.seconds, cores)
    if "fastai" in only and args.model in TABLES:
        print(f"round {round_no}: fastai learn.predict", file=sys.stderr, flush=True)
        results["fastai"][round_no] = fastai_predict(args.model, bundle, work)

    def baseline():
        if "baseline" not in only:
            return
        threads = args.ort_threads or max(1, cores // args.workers)
        server = Baseline(bundle, tmp, threads, args.workers)
        results["cold"].setdefault("baseline", {})[round_no] = server.cold_start
        monitor = TreeMonitor(server.proc.pid)
        try:
            results["points"] += asyncio.run(run_points("baseline", round_no, server.url, work, monitor, args.concurrency,
                                                        args.seconds, args.warmup, args.model))
        finally:
            monitor.close()
            server.stop()

    def roost(precision: str = "fp32"):
        if precision == "int8":
            peers = [p for p in INT8_PEERS if p in only and open_bundle(bundle, verify=False).manifest.has_int8()]
        else:
            peers = [p for p in ROOST_PEERS if p in only and (p != "batch" or args.model in TABLES)]
        if not peers:
            return
        env = {"ROOST_PRECISION": precision}
        if args.workers != 1:
            env["ROOST_WORKERS"] = str(args.workers)
        if args.ort_threads:
            env["ROOST_ORT_THREADS"] = str(args.ort_threads)
        spawned = time.perf_counter()
        server = start_server(f"services.{args.model}:{args.model.capitalize()}", bundle, tmp, env)
        results["cold"].setdefault("roost" if precision == "fp32" else "roost_int8", {})[round_no] = time.perf_counter() - spawned
        monitor = TreeMonitor(server.proc.pid)
        try:
            for peer in peers:
                target = f"127.0.0.1:{server.grpc_port}" if peer == "grpc" else server.url
                protocol = peer.removesuffix("_int8")
                concurrency = ([c for c in args.concurrency if c <= 4] or args.concurrency[:1]) if peer == "batch" else args.concurrency
                points = asyncio.run(run_points(protocol, round_no, target, work, monitor, concurrency,
                                                args.seconds, args.warmup, args.model))
                for point in points:
                    point.peer = peer
                results["points"] += points
        finally:
            monitor.close()
            code = server.stop()
            if code not in (0, None, -signal.SIGTERM):
                print(f"roost server exited with {code}; log tail:\n{server.log_text()[-2000:]}", file=sys.stderr)

    def roost_int8():
        roost("int8")

    # alternate the order of the servers between rounds, so drift in the machine's load hits both alike
    for step in ((baseline, roost, roost_int8) if round_no % 2 else (roost_int8, roost, baseline)):
        print(f"round {round_no}: {step.__name__}", file=sys.stderr, flush=True)
        step()
    inprocess("end")
    results["load"][round_no].append(os.getloadavg()[0])


# --- report ----------------------------------------------------------------------------------------


LABELS = {"baseline": "baseline (FastAPI + onnxruntime)", "typed": "Roost typed `POST /predict`",
          "rest": "Roost OIP REST (binary)", "grpc": "Roost OIP gRPC (raw)", "batch": "Roost batch route",
          "typed_int8": "Roost INT8 typed `POST /predict`", "rest_int8": "Roost INT8 OIP REST (binary)"}


SHORT = {"baseline": "baseline", "typed": "Roost typed", "rest": "OIP REST", "grpc": "OIP gRPC",
         "typed_int8": "INT8 typed", "rest_int8": "INT8 OIP REST"}


def _ratio(x: float) -> str:
    return f"{x:.2f}" if x >= 0.1 else f"{x:.2g}"


def _fmt(x: float, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def best(points: list[Point], peer: str, round_no: int, min_clients: int = 4, per_cpu: bool = False) -> float | None:
    """The peer's best rows/s (or answered rows per server CPU second) at >= min_clients in a round."""
    rates = [(p.per_cpu if per_cpu else p.rps) * p.rows_per_request
             for p in points if p.peer == peer and p.round == round_no and p.clients >= min_clients]
    rates = [x for x in rates if not math.isnan(x)]
    return max(rates) if rates else None


def p50_at(points: list[Point], peer: str, round_no: int, clients: int = 1) -> float | None:
    return next((p.pct(50) for p in points if p.peer == peer and p.round == round_no and p.clients == clients), None)


def report(args, bundle: Path, info: dict, results: dict, rounds: list[int], started: dt.datetime, elapsed: float) -> str:
    b = open_bundle(bundle, verify=False)
    unit = "images/s" if args.model in ("bird", "segment") else "rows/s"
    cores = info["cores"]
    command = "python -m tests.bench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    config = f"ROOST_WORKERS={args.workers}, ORT threads per worker {args.ort_threads or max(1, int(cores) // args.workers)}"
    lines = [
        f"\n## {args.model} — {started:%Y-%m-%d %H:%M} UTC",
        "",
        f"- Machine: {cores} cores, {info['cpu']}, {info['gpu']}; vector flags: {info['flags']}; load average at start "
        f"{info['load']}, at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}.",
        f"- Versions: {info['versions']}.",
        f"- Bundle: `{b.name}` version `{b.version}` ({b.manifest.arch}); {config}.",
        *([f"- INT8 (`model.int8.onnx`): {b.manifest.quantization.status}; {b.manifest.quantization.reason}; held-out "
           f"figures {b.manifest.quantization.agreement}."] if b.manifest.quantization and b.manifest.quantization.status != "none" else []),
        f"- Command: `{command}` ({len(rounds)} round(s), {args.seconds:g} s per point after a {args.warmup:g} s warm-up; "
        f"{elapsed:.0f} s in all).",
        f"- The load generator (one asyncio process: raw HTTP/1.1 keep-alive connections / grpc.aio, pre-encoded bodies) shares the "
        f"{cores} cores with the server: server peers are measured with less than the whole machine.",
        "",
    ]
    heads = " | ".join(f"round {r}" for r in rounds)
    inproc = results["inprocess"]
    if inproc:
        keys = list(next(iter(next(iter(inproc.values())).values())))
        lines += [f"In-process limit (no HTTP; ORT threads = {cores}), {unit} at the start / end of each round "
                  f"(in brackets: {unit.split('/')[0]} per CPU second of the process):", "",
                  f"| pipeline | {heads} |", "|---|" + "---|" * len(rounds)]
        what = "decode → resize → ORT" if args.model in ("bird", "segment") else "preprocess → ORT → postprocess"
        for k in keys:
            label = k if "ORT" in k else f"{what}, {k}"
            cells = []
            for r in rounds:
                passes = [inproc.get(r, {}).get(w, {}).get(k) for w in ("start", "end")]
                cells.append(" / ".join(f"{v[0]:.1f} ({v[1]:.0f})" for v in passes if v) or "–")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    if results["load"]:
        lines += ["1-minute load average at the start → end of each round (other work on the machine): "
                  + "; ".join(f"round {r} {v[0]:.2f} → {v[-1]:.2f}" for r, v in results["load"].items()) + ".", ""]
    if results["fastai"]:
        how = "`learn.predict`" if args.model == "tabular" else "one-row `learn.get_preds(dl=learn.dls.test_dl(row))`"
        lines += [f"fastai {how} (one row per call, learner.pkl on CPU): "
                  + ", ".join(f"round {r} **{_fmt(results['fastai'][r])} rows/s**" for r in rounds if r in results["fastai"]) + ".", ""]
    if results["cold"]:
        lines.append("Cold start, spawn to `/readyz` 200: " + "; ".join(
            f"{ {'roost': 'Roost `bentoml serve`', 'roost_int8': 'Roost INT8'}.get(k, 'baseline')} " + ", ".join(f"{v:.1f} s" for v in d.values())
            for k, d in results["cold"].items()) + " (Roost's is polled every 0.5 s by tests/server.py, the baseline's every 0.1 s).")
        lines.append("")

    points: list[Point] = results["points"]
    large = results.get("large", {})
    if large:
        lines += [f"Large photos ({LARGE_PHOTOS} shared photos upscaled to {LARGE_SIZE[0]}x{LARGE_SIZE[1]}, JPEG quality 90; "
                  "decode → resize → FP32 ORT in process, batch 1), images/s (per CPU second):", "",
                  "| decode | " + " | ".join(f"round {r}" for r in large) + " |", "|---|" + "---|" * len(large)]
        for how in ("full decode", "draft decode"):
            lines.append(f"| {how} | " + " | ".join(f"{v[how][0]:.1f} ({v[how][1]:.1f})" for v in large.values()) + " |")
        lines.append("| draft ÷ full | " + " | ".join(f"**{v['draft decode'][0] / v['full decode'][0]:.2f}×** "
                                                     f"(labels agree {100 * v['agreement']:.1f} %)" for v in large.values()) + " |")
        lines.append("")
    peers = [p for p in ("baseline", "typed", "rest", "grpc", "batch", *INT8_PEERS) if any(q.peer == p for q in points)]
    if peers:
        lines += ["Requests/s by concurrency (" + ", ".join(f"round {r}" for r in rounds) + " in each cell):", "",
                  "| peer | " + " | ".join(f"c={c}" for c in args.concurrency) + " |", "|---|" + "---|" * len(args.concurrency)]
        for peer in peers:
            cells = []
            for c in args.concurrency:
                vals = [next((p for p in points if p.peer == peer and p.round == r and p.clients == c), None) for r in rounds]
                cells.append(" / ".join(_fmt(v.rps) if v else "–" for v in vals))
            lines.append(f"| {LABELS[peer]} | " + " | ".join(cells) + " |")
        lines.append("")
    for peer in peers:
        mine = sorted((p for p in points if p.peer == peer), key=lambda p: (p.clients, p.round))
        extra = f" ({mine[0].rows_per_request} rows per request; rows/s = req/s × rows)" if peer == "batch" else ""
        lines += [f"**{LABELS[peer]}**{extra}:", "",
                  "| clients | round | req/s | p50 ms | p95 ms | p99 ms | errors | server CPU s | server CPU % of cores | req per server CPU s | peak PSS MB | client CPU s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for p in mine:
            share = 100 * p.server_cpu_s / (p.seconds * int(cores)) if p.seconds else float("nan")
            errors = ", ".join(f"{k}: {v}" for k, v in sorted(p.errors.items())) or "0"
            lines.append(f"| {p.clients} | {p.round} | {_fmt(p.rps)} | {_fmt(p.pct(50))} | {_fmt(p.pct(95))} | {_fmt(p.pct(99))} "
                         f"| {errors} | {_fmt(p.server_cpu_s)} | {share:.0f} | {_fmt(p.per_cpu)} | {p.peak_rss_mb:.0f} | {_fmt(p.client_cpu_s)} |")
        lines.append("")

    summary = []
    for r in rounds:
        passes = [v["B=8"] for v in inproc.get(r, {}).values() if "B=8" in v]
        limit = max((v[0] for v in passes), default=None)  # the better of the round's two passes
        limit_cpu = max((v[1] for v in passes), default=None)
        base = best(points, "baseline", r)
        parts = []
        for peer in ("typed", "rest", "grpc"):
            got = best(points, peer, r)
            if got is None:
                continue
            ratios = []
            if limit:
                ratios.append(f"{_ratio(got / limit)}× in-process B=8")
            if base:
                ratios.append(f"{_ratio(got / base)}× baseline")
            parts.append(f"{SHORT[peer]} {got:.1f} req/s = " + (", ".join(ratios) or "–"))
        if base and limit:
            parts.append(f"baseline {base:.1f} req/s = {_ratio(base / limit)}× in-process B=8")
        typed, int8 = best(points, "typed", r), best(points, "typed_int8", r)
        if int8 is not None:
            int8_rest = best(points, "rest_int8", r)
            parts.append(f"INT8 typed {int8:.1f} req/s = " + ", ".join(
                ([f"**{_ratio(int8 / limit)}×** FP32 in-process B=8"] if limit else [])
                + ([f"**{_ratio(int8 / typed)}×** Roost FP32 typed"] if typed else []))
                + (f"; INT8 OIP REST {int8_rest:.1f} req/s" + (f" = {_ratio(int8_rest / limit)}× FP32 in-process B=8" if limit else "")
                   if int8_rest else ""))
        roost1, base1 = p50_at(points, "typed", r), p50_at(points, "baseline", r)
        if roost1 is not None and base1 is not None:
            parts.append(f"p50 at 1 client: Roost {roost1:.1f} ms vs baseline {base1:.1f} ms ({roost1 - base1:+.1f} ms)")
        fastai = results["fastai"].get(r)
        batch = best(points, "batch", r, min_clients=1)
        if fastai and batch:
            parts.append(f"Roost batch route {batch:.0f} rows/s = {batch / fastai:.0f}× fastai one-row predict ({fastai:.1f} rows/s)")
        if fastai and best(points, "typed", r, 1):
            parts.append(f"Roost typed one-row requests = {best(points, 'typed', r, 1) / fastai:.1f}× fastai one-row predict")
        if parts:
            summary.append(f"- Round {r}: best at ≥ 4 clients: " + "; ".join(parts) + ".")
        effs = [(SHORT.get(peer, peer), e) for peer in ("baseline", "typed", "rest", "grpc", *INT8_PEERS)
                if (e := best(points, peer, r, per_cpu=True)) is not None]
        if effs and limit_cpu:
            summary.append(f"- Round {r}, per CPU second (robust to other work on the machine; best at ≥ 4 clients): in-process "
                           f"B=8 {limit_cpu:.0f} rows; " + "; ".join(f"{n} {e:.0f} req = {_ratio(e / limit_cpu)}×" for n, e in effs) + ".")
    if summary:
        lines += ["Summary (ratios within the round):", "", *summary, ""]
    return "\n".join(lines)


def write(out: Path, text: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    old = out.read_text() if out.exists() else ""
    if PREAMBLE_MARK not in old:
        body = old.split("\n", 1)[1] if old.startswith("# Benchmarks") else old
        body = body.replace("\nWritten by `make bench-<model>` (tests/bench.py). Newest last.\n", "", 1)
        old = PREAMBLE + body
    out.write_text(old.rstrip("\n") + "\n" + text.rstrip("\n") + "\n")


RESULTS_DIR = ROOT / "bench-results"  # git-ignored
RECORD_FILE = ROOT / "docs" / "benchmarks.md"


def output_paths(model: str, out: Path | None, record: bool, now: dt.datetime) -> list[Path]:
    """Where a run's section goes: --out, else a fresh file under bench-results/; plus the tracked
    docs/benchmarks.md only when recording."""
    paths = [out or RESULTS_DIR / f"{model}-{now.strftime('%Y%m%d-%H%M%S')}.md"]
    if record and all(p.resolve() != RECORD_FILE for p in paths):
        paths.append(RECORD_FILE)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=("bird", "segment", "tabular", "collab"))
    parser.add_argument("--artifacts", type=Path, default=ROOT / "artifacts")
    parser.add_argument("--bundle", type=Path, help="a bundle folder (default: the newest under --artifacts)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10, help="per concurrency point")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per peer (default: min(2, seconds / 2))")
    parser.add_argument("--concurrency", default="1,4,16,64", help="comma-separated client counts")
    parser.add_argument("--workers", type=int, default=1, help="ROOST_WORKERS (and uvicorn workers of the baseline)")
    parser.add_argument("--ort-threads", type=int, default=0, help="ORT threads per worker (default: cores / workers)")
    parser.add_argument("--only", default=",".join(PEERS), help=f"comma-separated subset of {','.join(PEERS)}")
    parser.add_argument("--out", type=Path, help="write the section here (default: bench-results/<model>-<time>.md)")
    parser.add_argument("--record", action="store_true", help="also append the section to docs/benchmarks.md")
    args = parser.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    args.only = {p.strip() for p in args.only.split(",") if p.strip()}
    if unknown := args.only - set(PEERS):
        parser.error(f"--only: unknown peer(s) {sorted(unknown)}; choose from {','.join(PEERS)}")
    if args.warmup is None:
        args.warmup = min(2.0, args.seconds / 2)
    bundle = (args.bundle or find_latest(args.artifacts, args.model)).resolve()
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")

    info = machine()
    started, t0 = dt.datetime.now(dt.timezone.utc), time.perf_counter()
    work = workload(args.model)
    results: dict = {"inprocess": {}, "fastai": {}, "cold": {}, "points": [], "load": {}, "large": {}}
    rounds = list(range(1, args.rounds + 1))
    with tempfile.TemporaryDirectory(prefix="roost-bench-") as tmp:
        for r in rounds:
            run_round(args, r, bundle, work, Path(tmp), results)
    text = report(args, bundle, info, results, rounds, started, time.perf_counter() - t0)
    print(text)
    for path in output_paths(args.model, args.out, args.record, started):
        write(path, text)
        print(f"appended to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
