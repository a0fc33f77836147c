"""RequestGuard (ASGI, in-process): admission before the body is read, byte limits while reading,
pickles refused, and Connection: close while draining. The route behind it is a small real ASGI app."""

import asyncio
import dataclasses
import json

import pytest

import services.model
from services.guard import SKIP_BODY_BYTES, RequestGuard
from services.model import RoostModel
from services.settings import settings_for


class Served(RoostModel):
    name = "bird"
    spec_kind = "image"


@pytest.fixture
def model(monkeypatch):
    m = Served(dataclasses.replace(settings_for("bird"), max_body_bytes=1000, max_in_flight=2))
    m.bundle = object()  # loaded, as far as readiness goes
    monkeypatch.setattr(services.model, "_served", m)
    return m


def route():
    """Echo the body's length; records what it was handed."""
    seen = []

    async def app(scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        seen.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": json.dumps({"bytes": len(body)}).encode()})

    return app, seen


def call(app, body_chunks, headers=None, method="POST", path="/predict"):
    """Run one request through ``app``; returns (status, headers, body, how many receive() calls)."""
    messages = [{"type": "http.request", "body": c, "more_body": i < len(body_chunks) - 1} for i, c in enumerate(body_chunks)]
    received = []
    sent = []

    async def receive():
        received.append(1)
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": [(k.encode(), v.encode()) for k, v in (headers or {}).items()]}
    asyncio.run(app(scope, receive, send))
    start = sent[0]
    return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in sent[1:]), len(received)


def test_a_body_within_the_limit_reaches_the_route_whole_even_in_chunks(model):
    app, seen = route()
    status, _, body, _ = call(RequestGuard(app), [b"a" * 400, b"b" * 400])
    assert status == 200 and json.loads(body) == {"bytes": 800} and seen == [b"a" * 400 + b"b" * 400]
    assert model.admitted == 0  # released after the answer


def test_a_declared_length_over_the_limit_is_refused_before_reading(model):
    app, seen = route()
    status, headers, body, receives = call(RequestGuard(app), [b"x"], {"content-length": "1001"})
    assert status == 413 and receives == 0 and seen == []
    assert headers[b"connection"] == b"close"
    assert "limit is 1000" in json.loads(body)["error"]


def test_a_chunked_body_is_refused_the_moment_it_passes_the_limit(model):
    app, seen = route()
    status, _, _, receives = call(RequestGuard(app), [b"x" * 600, b"x" * 600, b"x" * 600, b"x" * 600])
    assert status == 413 and receives == 2 and seen == []


def test_past_max_in_flight_a_request_gets_429_before_its_body_is_read(model):
    app, seen = route()
    model.admitted = 2
    big = str(SKIP_BODY_BYTES + 1)
    status, headers, body, receives = call(RequestGuard(app), [b"x" * 2000], {"content-length": big})
    assert status == 429 and headers[b"retry-after"] == b"1" and seen == [] and receives == 0
    assert headers[b"connection"] == b"close"  # a body it will not read: the connection ends
    assert "error" in json.loads(body)


def test_a_small_refused_body_is_skipped_so_the_connection_stays_open(model):
    app, _ = route()
    model.admitted = 2
    status, headers, _, receives = call(RequestGuard(app), [b"x" * 500], {"content-length": "500"})
    assert status == 429 and b"connection" not in headers and receives == 1
    assert SKIP_BODY_BYTES >= 500


def test_a_draining_server_answers_503_and_closes_every_connection(model):
    app, seen = route()
    model.draining = True
    status, headers, _, receives = call(RequestGuard(app), [b"{}"], {"content-length": "2"})
    assert status == 503 and headers[b"retry-after"] == b"1" and headers[b"connection"] == b"close" and seen == []
    status, headers, _, _ = call(RequestGuard(app), [b""], method="GET", path="/livez")
    assert status == 200 and headers[b"connection"] == b"close"


@pytest.mark.parametrize("content_type", ["application/vnd.bentoml+pickle", "Application/VND.BentoML+Pickle; x=1"])
def test_a_pickle_is_refused_on_every_route_before_anything_reads_it(model, content_type):
    app, seen = route()
    status, _, body, receives = call(RequestGuard(app), [b"\x80\x04."], {"content-type": content_type}, path="/v2/models/bird/infer")
    assert status == 415 and receives == 0 and seen == [] and "pickle" in json.loads(body)["error"]


def test_get_requests_pass_without_admission(model):
    app, seen = route()
    model.admitted = 2
    status, _, _, _ = call(RequestGuard(app), [b""], method="GET", path="/readyz")
    assert status == 200
