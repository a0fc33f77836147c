"""422 for invalid fields on the typed routes.

BentoML answers a request whose JSON parses but whose fields fail pydantic validation (wrong type,
impossible value, unknown or missing field) with 400. Roost's typed APIs answer such requests with
422 Unprocessable Content, naming the fields in ``detail[].loc`` as BentoML does, and keep 400 for
requests that cannot be read at all. The Open Inference Protocol routes (/v2) keep the protocol's 400.
"""

from __future__ import annotations

import json


def _is_field_validation_error(body: bytes) -> bool:
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return (
        isinstance(data, dict)
        and "validation error" in str(data.get("error", ""))
        and isinstance(data.get("detail"), list)
        and all(isinstance(d, dict) and d.get("loc") for d in data["detail"])  # a field is named
        and not any(str(d.get("type", "")).startswith("json_") for d in data["detail"])  # unreadable JSON stays 400
    )


class ValidationErrorsAs422:
    """ASGI middleware: hold a 400 response's start until its body shows what kind of 400 it is."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path", "").startswith("/v2"):
            return await self.app(scope, receive, send)
        held: dict = {}

        async def send_or_hold(message):
            if message["type"] == "http.response.start" and message["status"] == 400:
                held["start"], held["body"] = message, b""
                return
            if "start" in held and message["type"] == "http.response.body":
                held["body"] += message.get("body", b"")
                if message.get("more_body"):
                    return
                start = held.pop("start")
                if _is_field_validation_error(held["body"]):
                    start = {**start, "status": 422}
                await send(start)
                await send({"type": "http.response.body", "body": held.pop("body"), "more_body": False})
                return
            await send(message)

        return await self.app(scope, receive, send_or_hold)


class RefusePickle:
    """ASGI middleware: a pickle body is refused before anything reads it, on every route.

    BentoML can decode ``application/vnd.bentoml+pickle`` request bodies (its service-to-service
    format); nothing in Roost takes pickles from a network, and unpickling runs code.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            content_type = dict(scope.get("headers") or []).get(b"content-type", b"").decode("latin-1").lower()
            if "pickle" in content_type:
                body = json.dumps({"error": f"Content-Type {content_type.split(';')[0]!r} is not accepted; send JSON or multipart/form-data"}).encode()
                await send({"type": "http.response.start", "status": 415,
                            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        return await self.app(scope, receive, send)
