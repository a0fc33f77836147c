"""Start a real `bentoml serve` on 127.0.0.1 for a test, and stop exactly that process group."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BENTOML = Path(sys.executable).parent / "bentoml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric_sum(text: str, series: str) -> float:
    """The sum of the values of every sample line of a /metrics text whose name and labels match the
    regex `series` (0 if none does): compare two scrapes' sums, since a server may be shared."""
    return sum(float(v) for v in re.findall(rf"^{series} (\S+)", text, re.M))


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, grpc_port: int, log: Path):
        self.proc, self.port, self.grpc_port, self.log = proc, port, grpc_port, log
        self.url = f"http://127.0.0.1:{port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=10).text

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode


def start_server(service: str, bundle: Path, tmp: Path, extra_env: dict | None = None, ready_timeout: float = 120) -> Server:
    """`bentoml serve services.<m>:<Name>` on free ports; returns once /readyz answers 200."""
    port = free_port()
    grpc_port = free_port()
    while grpc_port == port:  # the OS may hand the same free port out twice
        grpc_port = free_port()
    env = {
        **os.environ,
        "ROOST_BUNDLE": str(bundle),
        "ROOST_GRPC_PORT": str(grpc_port),
        "BENTOML_HOME": str(tmp / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "True",
        "PYTHONPATH": str(ROOT),
        **(extra_env or {}),
    }
    tmp.mkdir(parents=True, exist_ok=True)
    log = tmp / f"server-{port}.log"
    proc = subprocess.Popen(
        [str(BENTOML), "serve", service, "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    server = Server(proc, port, grpc_port, log)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return server
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"server not ready after {ready_timeout} s:\n{server.log_text()[-3000:]}")
