"""Fail fast: a server that cannot serve exits at once, non-zero, with one line that says why.

BentoML's process manager restarts a worker that dies, forever, while its socket keeps accepting
connections that nobody answers. Roost stops that twice over:

- :func:`preflight` runs in the `bentoml serve` process before any worker starts: settings, the
  bundle (found, complete, every sha256, signature where required) and the gRPC port. A failure
  prints ``roost: cannot serve '<model>': <why>`` and exits 2.
- :func:`fatal` is for what only a worker can find (the runtime refusing the model file, a port
  taken in between): the worker writes its line where the serve process will read it
  (``ROOST_FATAL_FILE``, in the arbiter's private folder), stops the serve process and exits; the
  serve process then prints the line and exits 3 (services/listeners.py reads :func:`worker_failure`).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from pathlib import Path

log = logging.getLogger("roost.startup")

FATAL_FILE_ENV = "ROOST_FATAL_FILE"
SERVE_PID_ENV = "ROOST_SERVE_PID"


def _say(model: str, why: object) -> str:
    text = str(why).strip().splitlines()[0] if str(why).strip() else type(why).__name__
    return f"roost: cannot serve '{model}': {text}"


def is_serve_process() -> bool:
    """True in the `bentoml serve` process itself (not in its workers, not in an importing test)."""
    argv = sys.argv
    if not argv or "--fd" in argv:
        return False
    program = Path(argv[0])
    is_bentoml = program.name == "bentoml" or (program.name == "__main__.py" and program.parent.name == "bentoml")
    return is_bentoml and "serve" in argv[1:3]


def _port_free(host: str, port: int) -> str | None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return f"cannot listen for gRPC on {host}:{port} ({exc.strerror or exc}); set ROOST_GRPC_PORT to a free port"
    return None


def check(model: str) -> None:
    """Everything a worker will need, checked without starting one; raises with the reason."""
    from services.bundle import open_bundle
    from services.settings import settings_for
    from services.signing import check_signature

    settings = settings_for(model)
    path = settings.bundle_path()
    check_signature(path, settings)
    bundle = open_bundle(path)
    if bundle.name != model:
        raise RuntimeError(f"{path} holds model '{bundle.name}', not '{model}'")
    from services.runtime import model_file

    model_file(bundle, settings.precision, cuda=settings.device == "cuda", runtime=settings.runtime)  # ROOST_PRECISION=int8 without one
    if settings.grpc_port:
        problem = _port_free(settings.grpc_host, settings.grpc_port)
        if problem:
            raise RuntimeError(problem)


def preflight(model: str) -> None:
    """In the serve process: check, or print the one line and exit 2."""
    try:
        check(model)
    except BaseException as exc:  # noqa: BLE001 - SystemExit from settings too: one line, one exit code
        print(_say(model, exc), file=sys.stderr, flush=True)
        os._exit(2)


def fatal(model: str, why: object) -> None:
    """In a worker: report ``why`` to the serve process, stop it, and exit."""
    line = _say(model, why)
    path = os.environ.get(FATAL_FILE_ENV)
    serve_pid = os.environ.get(SERVE_PID_ENV, "")
    if path and serve_pid == str(os.getppid()):  # only the serve process that started this worker
        log.error(line)
        try:
            Path(path).write_text(line)
        except OSError:
            pass
        os.kill(os.getppid(), signal.SIGTERM)
    else:
        print(line, file=sys.stderr, flush=True)
    os._exit(3)


def worker_failure(path: str) -> str | None:
    """In the serve process, at exit: the line a worker wrote before it stopped the server, if any."""
    try:
        return Path(path).read_text() or None
    except OSError:
        return None
