import asyncio
import json

import pytest

from services.validation import ValidationErrorsAs422

FIELD_ERROR = {"error": "1 validation error for Input", "detail": [{"type": "float_parsing", "loc": ["row", "age"], "msg": "..."}]}
JSON_ERROR = {"error": "1 validation error for Input", "detail": [{"type": "json_invalid", "loc": [], "msg": "..."}]}


def run(status: int, body: dict, path: str = "/predict", chunks: int = 1) -> tuple[int, bytes]:
    raw = json.dumps(body).encode()

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": status, "headers": []})
        step = max(1, len(raw) // chunks)
        parts = [raw[i:i + step] for i in range(0, len(raw), step)]
        for i, part in enumerate(parts):
            await send({"type": "http.response.body", "body": part, "more_body": i < len(parts) - 1})

    sent = []

    async def send(message):
        sent.append(message)

    asyncio.run(ValidationErrorsAs422(app)({"type": "http", "path": path}, None, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


@pytest.mark.parametrize("chunks", [1, 3])
def test_invalid_fields_become_422_with_the_same_body(chunks):
    status, body = run(400, FIELD_ERROR, chunks=chunks)
    assert status == 422 and json.loads(body) == FIELD_ERROR


@pytest.mark.parametrize("status, body, path", [
    (400, JSON_ERROR, "/predict"),  # unreadable JSON is a bad request
    (400, {"error": "image: is not a readable image", "field": "image"}, "/predict"),
    (400, FIELD_ERROR, "/v2/models/bird/infer"),  # the Open Inference Protocol says 400
    (200, {"label": "bird"}, "/predict"),
    (404, {"error": "nope"}, "/predict"),
])
def test_everything_else_passes_through(status, body, path):
    assert run(status, body, path) == (status, json.dumps(body).encode())
