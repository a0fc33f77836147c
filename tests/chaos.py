"""`make chaos`: bad input, overload, shutdown, crashes and tampered bundles, against real servers.

    python -m tests.chaos [--quick] [--models bird,segment,tabular,collab] [--out FILE]

Everything targets servers this script starts on 127.0.0.1, with bounded counts and durations, and
stops only what it started (by process group). It writes a report (default
bench-results/reliability-<time>.md; ``--record`` also writes docs/reliability.md): cases tried and
failed (must be 0), shed / goodput / p99 under overload, requests lost on SIGTERM, what a killed
worker looks like from outside, peak memory. ``--quick`` is the short version CI runs
(tests/test_chaos.py).

A bad-input case fails when the answer is a 5xx (gRPC: INTERNAL/UNKNOWN), not JSON, carries a
traceback or a file path, differs from the expected status, or when the server is not healthy
(``/livez`` within 1 s) right after it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import gzip
import io
import json
import os
import shutil
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import httpx
import numpy as np

from tests.bench import SHARED, RawHttp, TreeMonitor, closed_loop, machine, workload
from tests.server import ROOT, BENTOML, free_port, start_server

MODELS = ("bird", "segment", "tabular", "collab")
SERVICES = {"bird": "services.bird:Bird", "segment": "services.segment:Segment",
            "tabular": "services.tabular:Tabular", "collab": "services.collab:Collab"}
BIRD_JPG = SHARED / "bird_or_forest_examples" / "bird.jpg"
CAMVID = SHARED / "fastai_samples" / "camvid_tiny" / "images"


# --- bad input -------------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    model: str
    protocol: str  # http | oip_rest | oip_grpc
    name: str
    expect: int | str  # HTTP status, or a gRPC status code name
    send: Callable  # (server) -> (status, body text)


@dataclasses.dataclass
class Outcome:
    case: Case
    status: int | str
    problem: str | None
    seconds: float


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height (a decompression bomb's header; no pixel data needed)."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def _big_gray_png(side: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (side, side), 128).save(buffer, format="PNG")
    return buffer.getvalue()


def _post(path: str, **kwargs):
    def send(server):
        r = httpx.post(f"{server.url}{path}", timeout=60, **kwargs)
        return r.status_code, r.text

    return send


def _raw(path: str, head: str, body: bytes):
    """A request written byte for byte (what httpx would not send: a lying header, a chunked body)."""

    def send(server):
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{head}\r\n".encode() + body)
            data = b""
            with contextlib.suppress(OSError):
                while chunk := sock.recv(65536):
                    data += chunk
        head_bytes, _, text = data.partition(b"\r\n\r\n")
        status = int(head_bytes.split(b" ", 2)[1]) if head_bytes.startswith(b"HTTP/") else 0
        return status, text.decode("utf-8", "replace")

    return send


def _chunked(data: bytes, piece: int = 1 << 20) -> bytes:
    out = b"".join(f"{len(data[i:i + piece]):x}\r\n".encode() + data[i:i + piece] + b"\r\n" for i in range(0, len(data), piece))
    return out + b"0\r\n\r\n"


def _oip_json(model: str, inputs: list[dict], **headers):
    return _post(f"/v2/models/{model}/infer", content=json.dumps({"inputs": inputs}).encode(),
                 headers={"content-type": "application/json", **headers})


def _grpc(build):
    def send(server):
        import grpc

        from services.oip.proto import grpc_predict_v2_pb2 as pb

        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}", options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                       request_serializer=pb.ModelInferRequest.SerializeToString,
                                       response_deserializer=pb.ModelInferResponse.FromString)
            try:
                call(build(pb), timeout=60)
                return "OK", ""
            except grpc.RpcError as exc:
                return exc.code().name, exc.details() or ""

    return send


def _grpc_tensor(pb, model, name, datatype, shape, **contents):
    return pb.ModelInferRequest(model_name=model, inputs=[pb.ModelInferRequest.InferInputTensor(
        name=name, datatype=datatype, shape=shape, contents=pb.InferTensorContents(**contents))])


ADULT_ROW = {"age": 49, "workclass": "Private", "fnlwgt": 101320, "education": "Assoc-acdm", "education-num": 12,
             "marital-status": "Married-civ-spouse", "occupation": "Sales", "relationship": "Wife", "race": "White"}


def cases(model: str, server_limits: dict) -> list[Case]:
    body_limit = server_limits["max_body_bytes"]
    out: list[Case] = []

    def add(protocol, name, expect, send):
        out.append(Case(model, protocol, name, expect, send))

    json_route = "/predict_batch" if model in ("bird", "segment", "tabular") else "/predict"
    add("http", "pickle body", 415, _post("/predict", content=b"\x80\x04K\x01.", headers={"content-type": "application/vnd.bentoml+pickle"}))
    add("http", "body over the limit (Content-Length)", 413, _raw(json_route, f"Content-Type: application/json\r\nContent-Length: {body_limit + 1}\r\n", b"{}"))
    add("http", "chunked body over the limit", 413, _raw(json_route, "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n",
                                                      _chunked(b"[" * (body_limit + 1024))))
    # refused by the HTTP parser (uvicorn) before any app code: a plain-text 400, which is the protocol's own answer
    add("http_parser", "Content-Length not a number", 400, _raw(json_route, "Content-Type: application/json\r\nContent-Length: 12x\r\n", b""))
    add("http", "not JSON", 400, _post(json_route, content=b"{not json", headers={"content-type": "application/json"}))
    add("http", "JSON nested 100k deep", 400, _post(json_route, content=b"[" * 100_000, headers={"content-type": "application/json"}))
    add("http", "form body on a JSON route", 415, _post(json_route, data={"x": "1"}))
    add("http", "extra top-level field", 422, _post(json_route, json={"nonsense": 1}))

    if model in ("bird", "segment"):
        photo = BIRD_JPG.read_bytes() if model == "bird" else sorted(CAMVID.iterdir())[0].read_bytes()
        add("http", "-F image=hello (text, not a file)", 422, _post("/predict", files={"image": (None, "hello")}))
        add("http", "-F image=file:///etc/passwd", 422, _post("/predict", files={"image": (None, "file:///etc/passwd")}))
        add("http", "-F image=<a URL> (must not be fetched)", 422, _post("/predict", files={"image": (None, f"http://127.0.0.1:{free_port()}/x.jpg")}))
        add("http", "-d image=hello (urlencoded)", 415, _post("/predict", data={"image": "hello"}))
        add("http", "-F img=@photo (wrong field name)", 422, _post("/predict", files={"img": ("p.jpg", photo)}))
        add("http", "no field at all", 422, _post("/predict"))
        add("http", "multipart without a boundary", 400, _post("/predict", content=photo, headers={"content-type": "multipart/form-data"}))
        add("http", "multipart with a wrong boundary", 400, _post("/predict", content=photo, headers={"content-type": "multipart/form-data; boundary=nope"}))
        add("http", "file name of 300 bytes", 200, _post("/predict", files={"image": ("a" * 296 + ".jpg", photo)}))
        add("http", "a text file as the image", 400, _post("/predict", files={"image": ("notes.txt", b"hello, not a picture")}))
        add("http", "empty file", 400, _post("/predict", files={"image": ("e.jpg", b"")}))
        add("http", "truncated JPEG", 400, _post("/predict", files={"image": ("t.jpg", BIRD_JPG.read_bytes()[:600])}))
        add("http", "PNG bomb (30000x30000 header)", 413, _post("/predict", files={"image": ("bomb.png", _png_header(30000, 30000))}))
        add("http", "PNG past Pillow's own limit (20000x20000)", 413, _post("/predict", files={"image": ("bomb.png", _png_header(20000, 20000))}))
        add("http", "batch: no images", 422, _post("/predict_batch", json={"images": []}))
        add("http", "batch: not base64", 400, _post("/predict_batch", json={"images": ["%%%"]}))
        add("http", "batch: 65 images", 422, _post("/predict_batch", json={"images": ["aGk="] * 65}))
        add("http", "batch: a number for an image", 422, _post("/predict_batch", json={"images": [12]}))
        gray = base64.b64encode(_big_gray_png(4000)).decode()
        add("http", "batch: 4 gray 4000x4000 PNGs (pixel budget)", 413 if model == "segment" else 200,
            _post("/predict_batch", json={"images": [gray] * 4, **({"format": "raw"} if model == "segment" else {})}))
        add("oip_rest", "BYTES shape [1] holding 1M elements", 400, _oip_json(model, [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["a"] * 1_000_000}]))
        add("oip_rest", "gzip body inflating past the limit", 413, _post(
            f"/v2/models/{model}/infer", content=gzip.compress(b" " * (body_limit + 1)),
            headers={"content-type": "application/json", "content-encoding": "gzip"}))
        add("oip_rest", "pixels of the wrong shape", 400, _oip_json(model, [{"name": "pixels", "datatype": "FP32", "shape": [1, 3, 2, 2], "data": [0.0] * 12}]))
        add("oip_grpc", "BYTES contents: 1M elements for shape [1]", "INVALID_ARGUMENT",
            _grpc(lambda pb: _grpc_tensor(pb, model, "image", "BYTES", [1], bytes_contents=[b"a"] * 1_000_000)))
        add("oip_grpc", "not an image", "INVALID_ARGUMENT", _grpc(lambda pb: _grpc_tensor(pb, model, "image", "BYTES", [1], bytes_contents=[b"hello"])))
        if model == "segment":
            add("http", "format=gif", 422, _post("/predict", files={"image": ("p.png", photo)}, data={"format": "gif"}))
            add("http", "format=raw past the raw-mask limit", 413, _post("/predict", params={"format": "raw"}, files={"image": ("g.png", _big_gray_png(1200))}))
    if model == "tabular":
        add("http", "fnlwgt 1e308", 422, _post("/predict", json={"row": {**ADULT_ROW, "fnlwgt": 1e308}}))
        add("http", "age as text", 422, _post("/predict", json={"row": {**ADULT_ROW, "age": "old"}}))
        add("http", "unknown column", 422, _post("/predict", json={"row": {**ADULT_ROW, "salary_guess": 1}}))
        add("http", "extra field beside row", 422, _post("/predict", json={"row": ADULT_ROW, "debug": True}))
        add("http", "no age", 422, _post("/predict", json={"row": {k: v for k, v in ADULT_ROW.items() if k != "age"}}))
        add("http", "1025 rows", 422, _post("/predict_batch", json={"rows": [ADULT_ROW] * 1025}))
        add("oip_rest", "fnlwgt 1e308 (FP64)", 400, _oip_json(model, [{"name": "age", "datatype": "FP64", "shape": [1], "data": [40]},
                                                                     {"name": "fnlwgt", "datatype": "FP64", "shape": [1], "data": [1e308]}]))
        add("oip_rest", "rows of different lengths", 400, _oip_json(model, [{"name": "age", "datatype": "FP32", "shape": [2], "data": [40, 41]},
                                                                           {"name": "fnlwgt", "datatype": "FP32", "shape": [1], "data": [1.0]}]))
        add("oip_grpc", "fnlwgt 1e308 (FP64)", "INVALID_ARGUMENT", _grpc(lambda pb: pb.ModelInferRequest(model_name="tabular", inputs=[
            pb.ModelInferRequest.InferInputTensor(name="age", datatype="FP64", shape=[1], contents=pb.InferTensorContents(fp64_contents=[40])),
            pb.ModelInferRequest.InferInputTensor(name="fnlwgt", datatype="FP64", shape=[1], contents=pb.InferTensorContents(fp64_contents=[1e308]))])))
    if model == "collab":
        add("http", "pairs empty", 422, _post("/predict", json={"pairs": []}))
        add("http", "user as an object", 422, _post("/predict", json={"pairs": [{"user": {"a": 1}, "movie": 1}]}))
        add("http", "recommend: extra field", 422, _post("/recommend", json={"user": 73, "n": 5, "sort": "asc"}))
        add("http", "recommend: n = -1", 422, _post("/recommend", json={"user": 73, "n": -1}))
        add("http", "recommend: unknown user", 404, _post("/recommend", json={"user": 99999999, "n": 5}))
        add("oip_rest", "INT64 shape [1] holding 1M elements", 400, _oip_json(model, [{"name": "user", "datatype": "INT64", "shape": [1], "data": [1] * 1_000_000},
                                                                                     {"name": "movie", "datatype": "INT64", "shape": [1], "data": [1]}]))
        add("oip_grpc", "user INT64 contents: 2 for shape [1]", "INVALID_ARGUMENT", _grpc(lambda pb: pb.ModelInferRequest(model_name="collab", inputs=[
            pb.ModelInferRequest.InferInputTensor(name="user", datatype="INT64", shape=[1], contents=pb.InferTensorContents(int64_contents=[1, 2])),
            pb.ModelInferRequest.InferInputTensor(name="movie", datatype="INT64", shape=[1], contents=pb.InferTensorContents(int64_contents=[1]))])))
    add("oip_rest", "unknown model", 404, _oip_json("nosuchmodel", []))
    add("oip_rest", "not JSON", 400, _post(f"/v2/models/{model}/infer", content=b"{nope", headers={"content-type": "application/json"}))
    add("oip_rest", "JSON nested 100k deep", 400, _post(f"/v2/models/{model}/infer", content=b"[" * 100_000, headers={"content-type": "application/json"}))
    add("oip_rest", "nested data list 100k deep", 400, _post(f"/v2/models/{model}/infer",
        content=b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":' + b"[" * 900 + b"1" + b"]" * 900 + b"}]}",
        headers={"content-type": "application/json"}))
    add("oip_rest", "an unknown datatype", 400, _oip_json(model, [{"name": "x", "datatype": "FP128", "shape": [1], "data": [1]}]))
    add("oip_rest", "binary size beyond the body", 400, _post(f"/v2/models/{model}/infer",
        content=b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"parameters":{"binary_data_size":400}}]}',
        headers={"content-type": "application/octet-stream", "inference-header-content-length": "86"}))
    add("oip_rest", "header length not a number", 400, _post(f"/v2/models/{model}/infer", content=b"{}",
        headers={"content-type": "application/octet-stream", "inference-header-content-length": "x"}))
    add("oip_grpc", "unknown model", "NOT_FOUND", _grpc(lambda pb: pb.ModelInferRequest(model_name="nosuchmodel")))
    add("oip_grpc", "raw contents count mismatch", "INVALID_ARGUMENT", _grpc(lambda pb: pb.ModelInferRequest(
        model_name=model, inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1])], raw_input_contents=[b"", b""])))
    return out


LEAKS = ("Traceback", 'File "', "/site-packages/", str(ROOT))


def check(case: Case, status, text: str) -> str | None:
    if case.protocol == "oip_grpc":
        if status in ("INTERNAL", "UNKNOWN"):
            return f"{status}: {text[:120]}"
    else:
        if status >= 500 or status == 0:
            return f"HTTP {status}: {text[:120]}"
        if case.protocol == "http_parser":
            return None if status == case.expect else f"expected {case.expect}, got {status}"
        try:
            body = json.loads(text)
        except ValueError:
            return f"HTTP {status} with a body that is not JSON: {text[:80]!r}"
        if status >= 400 and not (isinstance(body, dict) and isinstance(body.get("error"), str)):
            return f"HTTP {status} without an 'error' message: {text[:120]}"
    if any(leak in text for leak in LEAKS):
        return f"the answer leaks internals: {text[:160]}"
    if status != case.expect:
        return f"expected {case.expect}, got {status}: {text[:160]}"
    return None


def healthy(server) -> bool:
    try:
        return httpx.get(f"{server.url}/livez", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def bad_input(server, model: str) -> list[Outcome]:
    from services.settings import settings_for

    limits = {"max_body_bytes": settings_for(model).max_body_bytes}
    outcomes = []
    for case in cases(model, limits):
        began = time.perf_counter()
        try:
            status, text = case.send(server)
            problem = check(case, status, text)
        except Exception as exc:  # noqa: BLE001 - a client-side failure is the server's failure here
            status, problem = "no answer", f"{type(exc).__name__}: {exc}"
        seconds = time.perf_counter() - began
        if problem is None and not healthy(server):
            problem = "the server was not healthy right after"
        outcomes.append(Outcome(case, status, problem, seconds))
    return outcomes


# --- health while the worst allowed request runs --------------------------------------------------


def worst_request(model: str):
    """The costliest request the server must accept (within every limit)."""
    from services.settings import settings_for

    s = settings_for(model)
    if model in ("bird", "segment"):
        side = int((s.max_request_pixels / 4) ** 0.5) - 1  # four images that use the pixel budget
        gray = base64.b64encode(_big_gray_png(min(side, 6000))).decode()
        return _post("/predict_batch", json={"images": [gray] * 4})
    if model == "tabular":
        return _post("/predict_batch", json={"rows": [ADULT_ROW] * 1024})
    return _post("/predict", json={"pairs": [{"user": 73, "movie": 1097}] * 4096})


def health_during_worst(server, model: str, repeats: int) -> dict:
    latencies: list[float] = []
    done = threading.Event()
    statuses = []

    def worst():
        for _ in range(repeats):
            statuses.append(worst_request(model)(server)[0])
        done.set()

    thread = threading.Thread(target=worst)
    thread.start()
    with httpx.Client(timeout=5) as client:
        while not done.is_set():
            began = time.perf_counter()
            with contextlib.suppress(httpx.HTTPError):
                client.get(f"{server.url}/livez")
            latencies.append((time.perf_counter() - began) * 1000)
            time.sleep(0.02)
    thread.join()
    return {"statuses": statuses, "probes": len(latencies), "max_ms": max(latencies, default=0),
            "p99_ms": float(np.percentile(latencies, 99)) if latencies else 0}


# --- overload -----------------------------------------------------------------------------------


async def _load(url: str, bodies, clients: int, seconds: float, honour_retry_after: bool = True):
    """Closed-loop clients; a shed request (429/503) waits its Retry-After (1 s), as a good client does."""
    client = RawHttp(url, bodies)

    async def send(i: int, k: int):
        status = await client.send(i, k)
        if status in (429, 503) and honour_retry_after:
            await asyncio.sleep(1)
        return status

    try:
        return await closed_loop(send, clients, seconds)
    finally:
        await client.close()


def overload(server, model: str, seconds: float, loads: tuple[int, ...], many: int) -> dict:
    """Goodput and accepted latency at each of ``loads`` clients (the best of them is "best load"),
    then at ``many`` clients."""
    work = workload(model)
    url = f"{server.url}/predict"
    monitor = TreeMonitor(server.proc.pid)
    points = []
    try:
        asyncio.run(_load(url, work.typed, 4, 1.5))  # warm up
        for clients in (*loads, many):
            monitor.begin()
            ok, elapsed, latencies, errors = asyncio.run(_load(url, work.typed, clients, seconds))
            _, peak = monitor.end()
            points.append({
                "clients": clients, "goodput": ok / elapsed, "p50_ms": float(np.percentile(latencies, 50)) if latencies else 0,
                "p99_ms": float(np.percentile(latencies, 99)) if latencies else 0,
                "shed": sum(v for k, v in errors.items() if k in ("429", "503")),
                "errors": {k: v for k, v in errors.items() if k not in ("429", "503")}, "peak_mb": peak / 2**20,
            })
    finally:
        monitor.close()
    return {"points": points, "best": max(points[:-1], key=lambda p: p["goodput"]), "overload": points[-1]}


# --- shutdown and crashes -------------------------------------------------------------------------


def sigterm_under_load(model: str, bundle: Path, tmp: Path, clients: int = 16) -> dict:
    """SIGTERM while keep-alive clients send; a client stops after its 503 (it would go elsewhere).
    Lost: a request that was sent and never answered."""
    import http.client

    server = start_server(SERVICES[model], bundle, tmp)
    work = workload(model)
    body, headers = work.typed[0]
    stats = {"ok": 0, "503": 0, "lost": 0, "other": 0}
    lock = threading.Lock()
    stop_at = time.time() + 30

    def client():
        conn = None
        while time.time() < stop_at:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
                    conn.connect()
            except OSError:
                return  # not accepted: nothing was sent
            try:
                conn.request("POST", "/predict", body, headers)
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                with lock:
                    stats["lost"] += 1
                return
            key = "ok" if response.status == 200 else "503" if response.status == 503 else "other"
            with lock:
                stats[key] += 1
            if response.status == 503:
                return
            if (response.getheader("connection") or "").lower() == "close":
                conn.close()
                conn = None

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(2)
    began = time.perf_counter()
    os.killpg(server.proc.pid, signal.SIGTERM)
    for t in threads:
        t.join()
    try:
        code = server.proc.wait(60)
    except Exception:  # noqa: BLE001
        code = None
    stats["exit_s"] = time.perf_counter() - began
    stats["exit_code"] = code
    server.stop()
    return stats


def kill_worker_under_load(model: str, bundle: Path, tmp: Path, clients: int = 8) -> dict:
    """kill -9 of the worker while clients send: what clients see, and /readyz while it is gone."""
    import psutil

    server = start_server(SERVICES[model], bundle, tmp)
    work = workload(model)
    seen: dict[str, int] = {}
    readyz: list[int | str] = []
    stop = threading.Event()

    async def load():
        client = RawHttp(f"{server.url}/predict", work.typed)

        async def one(k):
            i = k
            while not stop.is_set():
                try:
                    status = str(await asyncio.wait_for(client.send(i, k), 10))
                except Exception as exc:  # noqa: BLE001
                    status = type(exc).__name__
                    await asyncio.sleep(0.1)
                seen[status] = seen.get(status, 0) + 1
                i += clients

        await asyncio.gather(*(one(k) for k in range(clients)))
        await client.close()

    thread = threading.Thread(target=lambda: asyncio.run(load()))
    thread.start()
    time.sleep(2)
    workers = psutil.Process(server.proc.pid).children()
    killed_at = time.perf_counter()
    for w in workers:
        os.kill(w.pid, signal.SIGKILL)
    ready_again = None
    while time.perf_counter() - killed_at < 40:
        try:
            status = httpx.get(f"{server.url}/readyz", timeout=1).status_code
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        readyz.append(status)
        if status == 200:
            ready_again = time.perf_counter() - killed_at
            break
        time.sleep(0.2)
    time.sleep(1)
    stop.set()
    thread.join(30)
    server.stop()
    return {"clients_saw": seen, "readyz_while_down": sorted({str(s) for s in readyz if s != 200}),
            "ready_again_s": ready_again}


# --- bundles and settings that must not serve ---------------------------------------------------


def _flip_byte(folder: Path, name: str) -> None:
    data = bytearray((folder / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / name).write_bytes(bytes(data))


def _kill_marked(marker: str) -> None:
    """SIGKILL every process whose environment carries ``marker`` (only ones this script started)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if f"ROOST_CHAOS_RUN={marker}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


def broken_starts(bundles: dict[str, Path], tmp: Path) -> list[dict]:
    """Each case must exit non-zero within 30 s and say why in one line (naming the problem)."""
    from services.signing import keygen, sign

    bird = bundles["bird"]
    keys = keygen(tmp / "keys")
    other = keygen(tmp / "other-keys")

    def copy(tag: str) -> Path:
        dest = tmp / f"broken-{tag}"
        shutil.copytree(bird, dest)
        return dest

    def flipped():
        b = copy("flip")
        _flip_byte(b, "model.onnx")
        return b, {}, "does not match its manifest"

    def foreign_pickle():
        b = copy("foreign")
        (b / "learner.pkl").write_bytes((bundles["tabular"] / "learner.pkl").read_bytes())
        sign(b, keys[0])
        return b, {"ROOST_RUNTIME": "fastai", "ROOST_TRUSTED_KEY": str(keys[1])}, "does not match its manifest"

    def not_json():
        b = copy("notjson")
        (b / "manifest.json").write_text("{ this is not json")
        return b, {}, "not a valid manifest"

    def no_preprocess():
        b = copy("nopre")
        (b / "preprocess.json").unlink()
        return b, {}, "preprocess.json"

    def missing():
        return tmp / "no-such-bundle", {}, "manifest.json"

    def unsigned():
        return copy("unsigned"), {"ROOST_TRUSTED_KEY": str(keys[1])}, "not signed"

    def wrong_key():
        b = copy("wrongkey")
        sign(b, other[0])
        return b, {"ROOST_TRUSTED_KEY": str(keys[1])}, "signature does not match"

    def fastai_unsigned():
        return copy("fastai"), {"ROOST_RUNTIME": "fastai"}, "needs a signed bundle"

    def model_file_not_onnx():  # consistent hashes (so past the manifest check): the runtime refuses it
        import hashlib

        b = copy("notonnx")
        manifest = json.loads((b / "manifest.json").read_text())
        for name in ("model.onnx", "model.int8.onnx"):  # whichever precision is served
            if name in manifest["files"]:
                (b / name).write_bytes(b"not an onnx model")
                manifest["files"][name] = hashlib.sha256(b"not an onnx model").hexdigest()
        (b / "manifest.json").write_text(json.dumps(manifest))
        return b, {}, "onnx"

    def no_trained_bundle():  # `make serve-bird` before `make train-bird`
        return "", {"ROOST_ARTIFACTS": str(tmp / "empty-artifacts")}, "run `make train-bird` first"

    def bad_setting():
        return bird, {"ROOST_MAX_QUEUE": "lots"}, "ROOST_MAX_QUEUE"

    results = []
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()

    def grpc_port_busy():
        return bird, {"ROOST_GRPC_PORT": str(busy.getsockname()[1])}, "cannot listen for gRPC"

    try:
        for make in (no_trained_bundle, flipped, foreign_pickle, not_json, no_preprocess, missing, unsigned, wrong_key,
                     fastai_unsigned, model_file_not_onnx, bad_setting, grpc_port_busy):
            bundle, env, expect = make()
            env = {**os.environ, "ROOST_BUNDLE": str(bundle), "ROOST_GRPC_PORT": str(free_port()),
                   "BENTOML_HOME": str(tmp / "bentoml"), "BENTOML_DO_NOT_TRACK": "True", "PYTHONPATH": str(ROOT), **env}
            began = time.perf_counter()
            import subprocess

            marker = f"{os.getpid()}-{make.__name__}-{time.monotonic_ns()}"
            env["ROOST_CHAOS_RUN"] = marker  # finds every process this case started, workers included
            log = tmp / f"start-{make.__name__}.log"
            with open(log, "wb") as out:  # a file, not a pipe: a stray worker cannot hold the read open
                proc = subprocess.Popen([str(BENTOML), "serve", "services.bird:Bird", "--host", "127.0.0.1", "--port", str(free_port())],
                                        cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
                try:
                    code = proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    code = None
            _kill_marked(marker)
            proc.wait(10)
            text = log.read_text(errors="replace")
            lines = [line for line in text.splitlines() if line.startswith("roost: cannot serve")]
            problem = None
            if code in (0, None):
                problem = "did not exit" if code is None else "exited 0"
            elif not lines:
                problem = "no 'roost: cannot serve' line"
            elif expect.lower() not in lines[-1].lower():
                problem = f"the line does not say {expect!r}: {lines[-1][:160]}"
            elif "Traceback" in text:
                problem = "a traceback was printed"
            results.append({"case": make.__name__.replace("_", " "), "exit": code, "seconds": time.perf_counter() - began,
                            "line": lines[-1] if lines else text[-200:], "problem": problem})
    finally:
        busy.close()
    return results


# --- the report ---------------------------------------------------------------------------------


def report(args, info, outcomes, health, overloads, sigterms, kills, starts, elapsed) -> str:
    failures = [o for o in outcomes if o.problem]
    start_failures = [s for s in starts if s["problem"]]
    lost = sum(s["lost"] for s in sigterms)
    lines = [
        f"## Chaos run {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC ({'quick' if args.quick else 'full'}; {elapsed:.0f} s)",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores; vector flags: {info['flags']}. Command: `{info['command']}`.",
        "",
        f"**Bad input: {len(outcomes)} cases, {len(failures)} failures. Broken starts: {len(starts)} cases, "
        f"{len(start_failures)} failures. SIGTERM under load: {lost} requests lost.**",
        "",
        "### Bad input (every model, every protocol)",
        "",
        "| model | protocol | case | expected | answer | time | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        lines.append(f"| {o.case.model} | {o.case.protocol} | {o.case.name} | {o.case.expect} | {o.status} | "
                     f"{o.seconds * 1000:.0f} ms | {'ok' if not o.problem else 'FAIL: ' + o.problem.replace('|', '/')} |")
    if health:
        lines += ["", "### Health while the worst allowed request runs", "",
                  "| model | worst request answered | /livez probes | p99 | max |", "|---|---|---|---|---|"]
        for model, h in health.items():
            lines.append(f"| {model} | {h['statuses']} | {h['probes']} | {h['p99_ms']:.1f} ms | {h['max_ms']:.1f} ms |")
    if overloads:
        lines += ["", "### Overload (typed `/predict`, closed loop; a shed client waits its Retry-After)", "",
                  "| model | clients | goodput req/s | p50 | p99 | shed (429/503) | other errors | peak PSS |",
                  "|---|---|---|---|---|---|---|---|"]
        for model, o in overloads.items():
            for r in o["points"]:
                lines.append(f"| {model} | {r['clients']} | {r['goodput']:.1f} | {r['p50_ms']:.0f} ms | {r['p99_ms']:.0f} ms | "
                             f"{r['shed']} | {r['errors'] or 0} | {r['peak_mb']:.0f} MB |")
            b, v = o["best"], o["overload"]
            lines.append(f"| {model} | {v['clients']} vs best ({b['clients']}) | **{v['goodput'] / b['goodput']:.2f}×** | | "
                         f"**{v['p99_ms'] / b['p99_ms']:.2f}×** | | | |")
    lines += ["", "### SIGTERM under keep-alive load (16 clients; each stops after its 503)", "",
              "| run | answered 200 | answered 503 | lost | other | exit code | exit after SIGTERM |", "|---|---|---|---|---|---|---|"]
    for i, s in enumerate(sigterms, 1):
        lines.append(f"| {i} | {s['ok']} | {s['503']} | {s['lost']} | {s['other']} | {s['exit_code']} | {s['exit_s']:.1f} s |")
    if kills:
        lines += ["", "### kill -9 of the worker under load (8 clients)", "",
                  "| what clients saw | /readyz while it was down | ready again after |", "|---|---|---|"]
        for k in kills:
            lines.append(f"| {k['clients_saw']} | {k['readyz_while_down']} | "
                         f"{'%.1f s' % k['ready_again_s'] if k['ready_again_s'] else 'not within 40 s'} |")
    lines += ["", "### Bundles and settings that must not serve (exit ≠ 0, one line)", "",
              "| case | exit | after | the line | verdict |", "|---|---|---|---|---|"]
    for s in starts:
        lines.append(f"| {s['case']} | {s['exit']} | {s['seconds']:.1f} s | `{s['line'][:150]}` | {'ok' if not s['problem'] else 'FAIL: ' + s['problem']} |")
    return "\n".join(lines) + "\n"


@dataclasses.dataclass
class Summary:
    failures: int
    start_failures: int
    lost: int
    text: str


def run(args) -> Summary:
    from tests.conftest import train_quick

    began = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="roost-chaos-"))
    info = machine()
    info["command"] = "python -m tests.chaos" + (" --quick" if args.quick else "")
    bundles = {}
    for model in args.models:
        override = os.environ.get(f"ROOST_TEST_BUNDLE_{model.upper()}")
        bundles[model] = Path(override) if override else train_quick(model, tmp / "bundles")
    if "tabular" not in bundles:
        bundles["tabular"] = Path(os.environ.get("ROOST_TEST_BUNDLE_TABULAR") or train_quick("tabular", tmp / "bundles"))
    outcomes, health, overloads, sigterms, kills = [], {}, {}, [], []
    try:
        for model in args.models:
            server = start_server(SERVICES[model], bundles[model], tmp / f"serve-{model}")
            try:
                print(f"[chaos] {model}: bad input", file=sys.stderr, flush=True)
                outcomes += bad_input(server, model)
                print(f"[chaos] {model}: health during the worst request", file=sys.stderr, flush=True)
                health[model] = health_during_worst(server, model, repeats=1 if args.quick else 3)
                if model == "bird" or (not args.quick and model == "tabular"):
                    print(f"[chaos] {model}: overload", file=sys.stderr, flush=True)
                    overloads[model] = overload(server, model, args.seconds, (4, 16) if args.quick else (4, 8, 16, 32), args.clients)
            finally:
                server.stop()
        model = "bird" if "bird" in args.models else args.models[0]
        for i in range(1 if args.quick else 3):
            print(f"[chaos] SIGTERM under load, run {i + 1}", file=sys.stderr, flush=True)
            sigterms.append(sigterm_under_load(model, bundles[model], tmp / f"sigterm-{i}"))
        print("[chaos] kill -9 under load", file=sys.stderr, flush=True)
        kills.append(kill_worker_under_load(model, bundles[model], tmp / "kill"))
        print("[chaos] broken starts", file=sys.stderr, flush=True)
        starts = broken_starts(bundles, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = report(args, info, outcomes, health, overloads, sigterms, kills, starts, time.perf_counter() - began)
    return Summary(sum(1 for o in outcomes if o.problem), sum(1 for s in starts if s["problem"]),
                   sum(s["lost"] for s in sigterms), text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the short version CI runs")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--seconds", type=float, default=None, help="per overload point")
    parser.add_argument("--clients", type=int, default=300, help="overload clients")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--record", action="store_true", help="also write docs/reliability.md")
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.seconds = args.seconds or (6 if args.quick else 15)
    summary = run(args)
    out = args.out or ROOT / "bench-results" / f"reliability-{dt.datetime.now():%Y%m%d-%H%M%S}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(summary.text)
    print(summary.text)
    print(f"wrote {out}", file=sys.stderr)
    if args.record:
        record = ROOT / "docs" / "reliability.md"
        header = record.read_text().split("\n## Chaos run", 1)[0] if record.exists() else "# Reliability\n"
        record.write_text(header.rstrip() + "\n\n" + summary.text)
        print(f"wrote {record}", file=sys.stderr)
    return 1 if summary.failures or summary.start_failures or summary.lost else 0


if __name__ == "__main__":
    sys.exit(main())
