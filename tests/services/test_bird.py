"""The bird service for real: `bentoml serve` on 127.0.0.1, real HTTP clients, a real quick model."""

import asyncio
import base64
import re

import httpx
import numpy as np
import pytest

from tests.conftest import BIRD_EXAMPLES, SHARED
from tests.server import metric_sum, start_server

pytestmark = pytest.mark.slow

EXAMPLES = {"bird": BIRD_EXAMPLES / "bird.jpg", "forest": BIRD_EXAMPLES / "forest.jpg"}


@pytest.fixture(scope="module")
def server(server_of):
    return server_of("bird")


@pytest.fixture(scope="module")
def learner(learner_of):
    return learner_of("bird")


def post_image(url, path, **kw):
    return httpx.post(f"{url}/predict", files={"image": (path.name, path.read_bytes())}, timeout=60, **kw)


def batch_sizes(metrics_text: str) -> tuple[float, float]:
    """(number of batches, number of batches of exactly one row) from roost_batch_size."""
    count = float(re.search(r'^roost_batch_size_count\{model="bird"\} (\S+)', metrics_text, re.M).group(1))
    ones = float(re.search(r'^roost_batch_size_bucket\{le="1.0",model="bird"\} (\S+)', metrics_text, re.M).group(1))
    return count, ones


def test_served_probabilities_equal_learn_predict(server, learner, bird_bundle):
    from fastai.vision.core import PILImage

    for label, path in EXAMPLES.items():
        got = post_image(server.url, path).json()
        pred, _, probs = learner.predict(PILImage.create(path))
        expected = dict(zip(learner.dls.vocab, probs.tolist()))
        assert got["label"] == pred
        for name, p in expected.items():
            assert abs(got["probabilities"][name] - p) <= 1e-3, (name, got, expected)
        assert got["model_version"] == bird_bundle.name


def test_concurrent_requests_are_batched_and_correct(server):
    before_batches, before_ones = batch_sizes(server.metrics())
    files = [EXAMPLES["bird"], EXAMPLES["forest"]] * 12

    async def fire():
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*[
                client.post(f"{server.url}/predict", files={"image": (p.name, p.read_bytes())}) for p in files
            ])

    responses = asyncio.run(fire())
    assert [r.status_code for r in responses] == [200] * len(files)
    assert [r.json()["label"] for r in responses] == [p.stem for p in files]
    batches, ones = batch_sizes(server.metrics())
    rows_batched = batches - before_batches
    assert rows_batched < len(files), "every request ran alone: no batching happened"
    assert (batches - before_batches) > (ones - before_ones), "no batch of more than one row was seen"


def test_batch_endpoint_takes_base64_images(server):
    images = [base64.b64encode(EXAMPLES[k].read_bytes()).decode() for k in ("forest", "bird", "forest")]
    r = httpx.post(f"{server.url}/predict_batch", json={"images": images}, timeout=60)
    assert r.status_code == 200
    assert [p["label"] for p in r.json()] == ["forest", "bird", "forest"]


@pytest.mark.parametrize(
    "send, field",
    [
        (lambda url: httpx.post(f"{url}/predict", files={"image": ("x.jpg", b"this is not an image")}), "image"),
        (lambda url: httpx.post(f"{url}/predict", files={"image": ("x.jpg", b"")}), "image"),
        (lambda url: httpx.post(f"{url}/predict"), "image"),
        (lambda url: httpx.post(f"{url}/predict", content=b"\xff\xd8garbage", headers={"content-type": "image/jpeg"}), None),
        (lambda url: httpx.post(f"{url}/predict_batch", json={"images": ["%%%not base64"]}), "images[0]"),
        (lambda url: httpx.post(f"{url}/predict_batch", json={"images": [base64.b64encode(b"text").decode()]}), "images[0]"),
        (lambda url: httpx.post(f"{url}/predict_batch", json={"images": []}), "images"),
        (lambda url: httpx.post(f"{url}/predict_batch", json={"images": ["a"] * 65}), "images"),
        (lambda url: httpx.post(f"{url}/predict_batch", json={"pictures": []}), "images"),
        (lambda url: httpx.post(f"{url}/predict_batch", content=b"{not json", headers={"content-type": "application/json"}), None),
    ],
)
def test_bad_input_gets_a_4xx_json_error_and_the_server_stays_healthy(server, send, field):
    r = send(server.url)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    body = r.json()
    text = str(body)
    assert "error" in text
    if field:
        assert field in text
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    assert post_image(server.url, EXAMPLES["bird"]).status_code == 200


def test_metrics_describe_stages_labels_and_model(server):
    counted = [  # each grows with the two requests below (deltas: the server is shared)
        r'roost_predictions_total\{label="forest",model="bird"\}',
        r'roost_requests_total\{model="bird",outcome="client_error",protocol="http"\}',
        r'roost_requests_total\{model="bird",outcome="ok",protocol="http"\}',
    ]
    before = server.metrics()
    post_image(server.url, EXAMPLES["forest"])
    httpx.post(f"{server.url}/predict", files={"image": ("x.png", b"not a png")})
    text = server.metrics()
    for stage in ("preprocess", "infer", "postprocess"):
        assert f'roost_stage_seconds_count{{model="bird",stage="{stage}"}}' in text
    for series in counted:
        assert metric_sum(text, series) - metric_sum(before, series) >= 1, series
    # server_of serves FP32 (ROOST_PRECISION=fp32): the file and precision labels say so
    assert re.search(r'roost_model_info\{arch="[^"]+",device="cpu",file="model\.onnx",model="bird",precision="fp32",runtime="onnx"', text)
    assert "bentoml_service_request_total" in text or "bentoml_service_request_duration_seconds" in text
    assert httpx.get(f"{server.url}/livez").status_code == 200


def test_fastai_runtime_serves_the_verified_pickle_with_the_same_answers(server, bird_bundle, signed_copy, tmp_path):
    bundle, trust = signed_copy(bird_bundle)
    fastai_srv = start_server("services.bird:Bird", bundle, tmp_path, {"ROOST_RUNTIME": "fastai", **trust})
    try:
        for path in EXAMPLES.values():
            onnx = post_image(server.url, path).json()
            pkl = post_image(fastai_srv.url, path).json()
            assert pkl["label"] == onnx["label"]
            assert np.allclose(list(pkl["probabilities"].values()), list(onnx["probabilities"].values()), atol=1e-4)
        assert 'runtime="fastai"' in fastai_srv.metrics()
    finally:
        fastai_srv.stop()


def test_a_tampered_pickle_stops_the_server_from_starting(bird_bundle, signed_copy, tmp_path):
    copy, trust = signed_copy(bird_bundle)
    with open(copy / "learner.pkl", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(RuntimeError, match="does not match its manifest"):
        start_server("services.bird:Bird", copy, tmp_path, {"ROOST_RUNTIME": "fastai", **trust}, ready_timeout=90)


def test_a_full_queue_answers_429_with_retry_after(bird_bundle, tmp_path):
    srv = start_server("services.bird:Bird", bird_bundle, tmp_path, {"ROOST_MAX_QUEUE": "2"})
    try:
        photos = sorted((SHARED / "bird_or_forest" / "bird").iterdir())[:30]

        async def burst():
            async with httpx.AsyncClient(timeout=120) as client:
                return await asyncio.gather(*[
                    client.post(f"{srv.url}/predict", files={"image": (p.name, p.read_bytes())}) for p in photos
                ])

        responses = asyncio.run(burst())
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 429, 503}, codes
        rejected = [r for r in responses if r.status_code in (429, 503)]
        assert rejected and 200 in codes, codes
        assert all(r.headers.get("retry-after") for r in rejected)
        assert all("error" in r.json() for r in rejected)
        assert 'roost_rejected_total{model="bird",reason="queue_full"}' in srv.metrics()
    finally:
        srv.stop()


def test_sustained_concurrent_load_answers_every_request(server):
    """Past BentoML's client session refresh (every 100 calls), which used to cut off requests in flight."""
    photos = sorted((SHARED / "bird_or_forest" / "forest").iterdir())[:20]
    total, clients = 240, 12

    async def load():
        queue = list(range(total))
        codes = []

        async def worker(client):
            while queue:
                i = queue.pop()
                p = photos[i % len(photos)]
                r = await client.post(f"{server.url}/predict", files={"image": (p.name, p.read_bytes())})
                codes.append(r.status_code)

        async with httpx.AsyncClient(timeout=120) as client:
            await asyncio.gather(*[worker(client) for _ in range(clients)])
        return codes

    codes = asyncio.run(load())
    assert len(codes) == total and set(codes) == {200}, {c: codes.count(c) for c in set(codes)}
