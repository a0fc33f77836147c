"""Admission and body limits for every HTTP route, before anything reads or parses a body.

:class:`RequestGuard` runs before every other middleware, BentoML's own included
(:func:`install`): a request it sheds costs no tracing span, metrics middleware or access-log line.
On every route a pickle body is
refused (415): BentoML can decode ``application/vnd.bentoml+pickle`` (its service-to-service
format), nothing in Roost takes pickles from a network, and unpickling runs code. For a request
that carries work (any POST: the typed routes and OIP infer):

1. **Admission first.** A draining or not-yet-ready model answers 503, a worker already holding
   ``max_in_flight`` requests answers 429, both with ``Retry-After``, before one byte of the body is
   read: shedding costs a header parse, not a multipart spool or a JSON parse.
2. **A byte limit while reading.** ``Content-Length`` over the limit is refused at once; a chunked
   body is counted as it arrives and refused the moment it passes the limit (413). The body is read
   into memory (bounded) and replayed to the route.
3. **Draining connections close.** While the server drains (after SIGTERM), every answer carries
   ``Connection: close``, so no keep-alive client reuses a connection the server is about to shut.

The model's in-flight count (admitted, unanswered) is released when the answer has been sent.
Every such request's whole time here, refusals included, is observed as
``roost_request_seconds{protocol="http"|"oip_rest"}`` (OIP gRPC times itself: oip/grpc_server.py).
"""

from __future__ import annotations

import json

from services import metrics
from services.errors import InvalidInput, RoostError

_CLOSE = (b"connection", b"close")


def protocol_of(path: str) -> str:
    return "oip_rest" if path.startswith("/v2") else "http"


async def _answer(send, exc: RoostError, close: bool) -> None:
    body = json.dumps(exc.to_json()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers().items()]
    if close:
        headers.append(_CLOSE)
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class RequestGuard:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        from services.model import served_model

        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        content_type = dict(scope.get("headers") or []).get(b"content-type", b"").decode("latin-1").lower()
        if "pickle" in content_type:
            refused = InvalidInput(None, f"Content-Type {content_type.split(';')[0]!r} is not accepted; send JSON or multipart/form-data", status=415)
            return await _answer(send, refused, close=True)
        model = served_model()
        if model is None:
            return await self.app(scope, receive, send)
        if scope["method"] != "POST":
            return await self.app(scope, receive, self._closing_when_draining(model, send))

        protocol = protocol_of(scope.get("path", ""))
        with metrics.request_timer(model.name, protocol):
            await self._guarded(model, protocol, scope, receive, send)

    async def _guarded(self, model, protocol: str, scope, receive, send):
        try:
            model.admit(protocol)
        except RoostError as exc:
            # The body is not parsed. A small one is read past (cheaper than the client's reconnect),
            # so the connection stays open; after a large or unbounded one the connection closes.
            keep = not model.draining and await _skip_small_body(scope, receive)
            return await _answer(send, exc, close=not keep)
        try:
            try:
                body = await self._read_body(scope, receive, model.settings.max_body_bytes)
            except InvalidInput as exc:
                metrics.REQUESTS.labels(model.name, protocol, exc.outcome).inc()
                return await _answer(send, exc, close=True)
            if body is None:  # the client went away while sending
                return
            await self.app(scope, _replay(body, receive), self._closing_when_draining(model, send))
        finally:
            model.release()

    @staticmethod
    async def _read_body(scope, receive, limit: int) -> bytes | None:
        for name, value in scope.get("headers") or ():
            if name == b"content-length":
                declared = value.decode("latin-1").strip()
                if not declared.isdigit():
                    raise InvalidInput(None, f"Content-Length {declared!r} is not a number")
                if int(declared) > limit:
                    raise InvalidInput(None, f"request body is {declared} bytes; the limit is {limit}", status=413)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise InvalidInput(None, f"request body passed the limit of {limit} bytes", status=413)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    @staticmethod
    def _closing_when_draining(model, send):
        async def send_with_close(message):
            if message["type"] == "http.response.start" and model.draining:
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"connection"]
                message = {**message, "headers": [*headers, _CLOSE]}
            await send(message)

        return send_with_close


SKIP_BODY_BYTES = 1 << 20


async def _skip_small_body(scope, receive) -> bool:
    """Read and drop a body that declares at most SKIP_BODY_BYTES; False if it is larger or chunked."""
    declared = dict(scope.get("headers") or []).get(b"content-length", b"").decode("latin-1").strip()
    if not declared.isdigit() or int(declared) > SKIP_BODY_BYTES:
        return False
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return False
        size += len(message.get("body", b""))
        if size > SKIP_BODY_BYTES:
            return False
        if not message.get("more_body", False):
            return True


def _replay(body: bytes, receive):
    """A receive() that hands the route the body already read, then the client's later messages."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay



_installed = False


def install() -> None:
    """Put RequestGuard in front of BentoML's middleware stack (metrics, tracing, access log, ...),
    which `add_asgi_middleware` would put it behind."""
    global _installed
    if _installed:
        return
    from _bentoml_impl.server.app import ServiceAppFactory
    from starlette.middleware import Middleware

    stack = ServiceAppFactory.middlewares
    ServiceAppFactory.middlewares = property(lambda self: [Middleware(RequestGuard), *stack.fget(self)])
    _installed = True
