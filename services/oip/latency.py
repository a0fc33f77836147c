"""Per-protocol latency at batch 1 against a running image-model server (needs tritonclient, a dev extra).

    python -m services.oip.latency --http 127.0.0.1:3000 --grpc 127.0.0.1:8001 --model bird \\
        --image ../shared/datasets/bird_or_forest_examples/bird.jpg -n 100

Sends the same one-image request n times per protocol, sequentially and interleaved (so load from
elsewhere hits every protocol alike), after 10 warm-up calls each, and prints p50/p90 in ms:
typed HTTP (`POST /predict`, multipart), OIP REST (tritonclient.http, binary BYTES), OIP gRPC
(tritonclient.grpc, raw BYTES), and both OIP protocols with pre-processed UINT8 `pixels` (NHWC).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    import httpx
    import tritonclient.grpc as tg
    import tritonclient.http as th

    parser = argparse.ArgumentParser(prog="python -m services.oip.latency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--http", default="127.0.0.1:3000")
    parser.add_argument("--grpc", default="127.0.0.1:8001")
    parser.add_argument("--model", default="bird")
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("-n", type=int, default=100)
    args = parser.parse_args(argv)

    image = args.image.read_bytes()
    web = httpx.Client(timeout=60)
    rest = th.InferenceServerClient(args.http)
    grpc = tg.InferenceServerClient(args.grpc)
    meta = rest.get_model_metadata(args.model)
    pixel_shape = next([1, *t["shape"][1:]] for t in meta["inputs"] if t["name"] == "pixels")
    pixels = np.random.default_rng(0).integers(0, 256, pixel_shape, dtype=np.uint8)
    images = np.array([image], dtype=object)

    def typed():
        r = web.post(f"http://{args.http}/predict", files={"image": (args.image.name, image)})
        r.raise_for_status()

    def oip(client, module, name, datatype, array):
        def call():
            inp = module.InferInput(name, list(array.shape), datatype)
            inp.set_data_from_numpy(array)
            client.infer(args.model, [inp])
        return call

    calls = {
        "typed HTTP /predict": typed,
        "OIP REST image": oip(rest, th, "image", "BYTES", images),
        "OIP gRPC image": oip(grpc, tg, "image", "BYTES", images),
        "OIP REST pixels": oip(rest, th, "pixels", "UINT8", pixels),
        "OIP gRPC pixels": oip(grpc, tg, "pixels", "UINT8", pixels),
    }
    for call in calls.values():
        for _ in range(10):
            call()
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(args.n):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - start) * 1000)
    for name, values in times.items():
        values.sort()
        print(f"{name:22s} p50 {statistics.median(values):7.2f} ms   p90 {values[int(0.9 * len(values))]:7.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
