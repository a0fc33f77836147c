"""Graceful shutdown across the two processes of a model server.

On SIGTERM every process of `bentoml serve` starts shutting down at once (Kubernetes signals the
arbiter, which signals its workers; `kill` of the process group signals all). The front must keep
reaching the inference service until its own accepted requests are answered, so the inference
service defers its shutdown: it keeps serving until it has no request in flight and has seen none
for a quiet period, bounded by a deadline. Then uvicorn's own graceful shutdown proceeds.
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


def front_in_flight(model: str) -> float:
    """The front process's `roost_requests_in_flight`, read from the shared multiprocess metrics."""
    import os

    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return 0.0
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return registry.get_sample_value("roost_requests_in_flight", {"model": model}) or 0.0


def defer_sigterm(model: str, quiet_s: float = 0.5, deadline_s: float = 60.0) -> None:
    """Wrap the current SIGTERM handler (uvicorn's) so it runs only once traffic has drained:
    nothing in flight here, nothing in flight in the front, and a quiet moment."""
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
                if InFlight.count == 0 and time.monotonic() - InFlight.last_seen >= quiet_s:
                    try:
                        if front_in_flight(model) <= 0:
                            break
                    except Exception:  # metrics unreadable: fall back to the quiet period alone
                        log.exception("cannot read the front's in-flight count")
                        break
                time.sleep(0.05)
            log.info("drained in %.2f s; shutting down", time.monotonic() - begin)
            server_handler(sig, frame)

        threading.Thread(target=wait, name="roost-drain", daemon=True).start()

    signal.signal(signal.SIGTERM, drain_then_stop)
