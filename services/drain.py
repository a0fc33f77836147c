"""Graceful shutdown across the two processes of a model server.

On SIGTERM every process of `bentoml serve` starts shutting down at once (Kubernetes signals the
arbiter, which signals its workers; `kill` of the process group signals all). The front must keep
reaching the inference service until its own accepted requests are answered, so the inference
service defers its shutdown: it keeps serving until the front worker has exited and nothing is in
flight here, bounded by a deadline. Then uvicorn's own graceful shutdown proceeds.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

log = logging.getLogger("roost.drain")


class InFlight:
    """ASGI middleware counting HTTP requests in flight (and when the last one came or went)."""

    count = 0
    last_seen = time.monotonic()

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        InFlight.count += 1
        InFlight.last_seen = time.monotonic()
        try:
            return await self.app(scope, receive, send)
        finally:
            InFlight.count -= 1
            InFlight.last_seen = time.monotonic()


def front_workers_alive(own_service: str) -> bool:
    """Is any other BentoML worker of this server (the front) still running? Siblings under the
    same arbiter, told apart by their `--service-name`."""
    import os

    import psutil

    for proc in psutil.Process(os.getppid()).children():
        try:
            cmd = proc.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if proc.pid != os.getpid() and "--service-name" in cmd:
            name = cmd[cmd.index("--service-name") + 1] if cmd.index("--service-name") + 1 < len(cmd) else ""
            if name and name != own_service and proc.status() != psutil.STATUS_ZOMBIE:
                return True
    return False


def defer_sigterm(own_service: str, deadline_s: float = 60.0) -> None:
    """Wrap the current SIGTERM handler (uvicorn's) so it runs only once the front has exited
    (it answers everything it accepted, over every protocol, first) and nothing is in flight here."""
    if threading.current_thread() is not threading.main_thread():
        return
    server_handler = signal.getsignal(signal.SIGTERM)
    if not callable(server_handler):
        return
    started = threading.Event()

    def drain_then_stop(sig, frame):
        if started.is_set():
            return
        started.set()
        begin = time.monotonic()

        def wait():
            while time.monotonic() - begin < deadline_s:
                if InFlight.count == 0:
                    try:
                        if not front_workers_alive(own_service):
                            break
                    except Exception:  # cannot see the siblings: wait for a quiet second instead
                        log.exception("cannot list the front workers")
                        if time.monotonic() - InFlight.last_seen >= 1.0:
                            break
                time.sleep(0.05)
            log.info("drained in %.2f s; shutting down", time.monotonic() - begin)
            server_handler(sig, frame)

        threading.Thread(target=wait, name="roost-drain", daemon=True).start()

    signal.signal(signal.SIGTERM, drain_then_stop)
