"""Nothing accepted is lost on shutdown: SIGTERM while an HTTP + gRPC burst is in flight; every
request is answered."""

import asyncio
import os
import signal

import httpx
import numpy as np
import pytest

from tests.conftest import SHARED
from tests.server import start_server

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("who", ["arbiter", "process_group"])
def test_sigterm_during_a_burst_answers_every_accepted_request(bird_bundle, tmp_path, who):
    srv = start_server("services.bird:Bird", bird_bundle, tmp_path)
    photos = sorted((SHARED / "bird_or_forest" / "forest").iterdir())[:24]

    async def grpc_infer(client, data: bytes):
        import tritonclient.grpc.aio as grpcclient

        inp = grpcclient.InferInput("image", [1], "BYTES")
        inp.set_data_from_numpy(np.array([data], dtype=object))
        result = await client.infer("bird", [inp], client_timeout=60)
        return result.as_numpy("label")

    async def burst_then_terminate():
        import tritonclient.grpc.aio as grpcclient

        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{srv.grpc_port}")
        async with httpx.AsyncClient(timeout=60) as client:
            tasks = [asyncio.create_task(client.post(f"{srv.url}/predict", files={"image": (p.name, p.read_bytes())}))
                     for p in photos[:16]]
            tasks += [asyncio.create_task(grpc_infer(grpc, p.read_bytes())) for p in photos[16:]]
            await asyncio.sleep(0.3)  # all sent and accepted; most still being preprocessed or batched
            if who == "arbiter":  # what Kubernetes does: SIGTERM to the container's main process
                os.kill(srv.proc.pid, signal.SIGTERM)
            else:
                os.killpg(srv.proc.pid, signal.SIGTERM)
            return await asyncio.gather(*tasks, return_exceptions=True)

    try:
        results = asyncio.run(burst_then_terminate())
        codes = [getattr(r, "status_code", repr(r)) for r in results[:16]]
        assert codes == [200] * 16, codes
        labels = [r if isinstance(r, Exception) else r.tolist() for r in results[16:]]
        assert all(not isinstance(r, Exception) for r in results[16:]), labels
        assert srv.proc.wait(60) == 0
    finally:
        srv.stop()
