"""Nothing accepted is lost on shutdown: SIGTERM while a burst is in flight, every request answered."""

import asyncio
import os
import signal

import httpx
import pytest

from tests.conftest import SHARED
from tests.server import start_server

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("who", ["arbiter", "process_group"])
def test_sigterm_during_a_burst_answers_every_accepted_request(bird_bundle, tmp_path, who):
    srv = start_server("services.bird:Bird", bird_bundle, tmp_path, {"ROOST_MAX_LATENCY_MS": "3000"})
    photos = sorted((SHARED / "bird_or_forest" / "forest").iterdir())[:24]

    async def burst_then_terminate():
        async with httpx.AsyncClient(timeout=60) as client:
            tasks = [asyncio.create_task(client.post(f"{srv.url}/predict", files={"image": (p.name, p.read_bytes())}))
                     for p in photos]
            await asyncio.sleep(0.3)  # all sent and accepted; most still being preprocessed or batched
            if who == "arbiter":  # what Kubernetes does: SIGTERM to the container's main process
                os.kill(srv.proc.pid, signal.SIGTERM)
            else:
                os.killpg(srv.proc.pid, signal.SIGTERM)
            return await asyncio.gather(*tasks, return_exceptions=True)

    try:
        results = asyncio.run(burst_then_terminate())
        codes = [getattr(r, "status_code", repr(r)) for r in results]
        assert codes == [200] * len(photos), codes
        assert srv.proc.wait(60) == 0
    finally:
        srv.stop()
