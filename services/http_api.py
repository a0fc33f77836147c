"""The typed HTTP routes: how their requests are read and how a RoostError becomes an answer.

BentoML's new SDK reads a typed route's request through a serde chosen by Content-Type. Roost
reads it itself (:func:`read_typed_request`), for three reasons found by red-teaming the server:

- BentoML treats a *text* value of a file field as a URL and downloads it (``-F image=http://...``,
  ``file:///etc/passwd``): a request must never make the server fetch anything.
- Client mistakes (a text field where a file belongs, a wrong field name, a form body on a JSON
  route, a multipart body with no boundary) surfaced as 500s; here each is a 4xx naming the field.
- Extra top-level fields were silently ignored; here they are refused (422).

A ``RoostError`` raised while reading or by the route itself is answered by :func:`error_response`,
once, for every typed route (:func:`answer_roost_errors` wraps BentoML's endpoint). Pydantic's
field errors become 422 with ``detail[].loc`` naming each field; unreadable JSON stays 400.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.datastructures import UploadFile

from services.errors import InvalidInput, RoostError

MAX_FORM_FIELDS = 8  # the typed routes take one or two form fields
MAX_TEXT_FIELD_BYTES = 64 * 1024


class FieldErrors(InvalidInput):
    """Pydantic's validation errors: 422, every field named in ``detail[].loc``."""

    def __init__(self, exc: ValidationError):
        self.detail = exc.errors(include_context=False, include_input=False, include_url=False)
        first = self.detail[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        super().__init__(field, first["msg"], status=422)
        count = exc.error_count()
        self.message = f"{count} validation error{'s' if count > 1 else ''}: {field}: {first['msg']}"

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "detail": self.detail}


def _validated(validate, data):
    try:
        return validate(data)
    except ValidationError as exc:
        unreadable = [e for e in exc.errors() if str(e.get("type", "")).startswith("json_")]
        if unreadable:
            raise InvalidInput(None, f"the request body is not valid JSON ({unreadable[0]['msg']})") from None
        raise FieldErrors(exc) from None


def _media_type(request) -> str:
    return (request.headers.get("content-type") or "").split(";")[0].strip().lower()


async def _read_form(cls, request, file_fields: list[str]) -> dict[str, Any]:
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException

    first = file_fields[0]
    if not _media_type(request) and not await request.body():
        return {}  # nothing sent: "field required", named by validation
    if _media_type(request) != "multipart/form-data":
        raise InvalidInput(
            first,
            f"send the file as multipart/form-data field '{first}' (curl -F {first}=@photo.jpg); "
            f"got Content-Type {_media_type(request) or 'none'!r}",
            status=415,
        )
    try:
        form = await request.form(max_files=len(file_fields), max_fields=MAX_FORM_FIELDS, max_part_size=MAX_TEXT_FIELD_BYTES)
    except (MultiPartException, HTTPException) as exc:
        raise InvalidInput(None, f"the multipart body cannot be read ({getattr(exc, 'message', None) or exc.detail})") from None
    data: dict[str, Any] = {}
    for key, value in form.multi_items():
        if key in data:
            raise InvalidInput(key, "is given more than once", status=422)
        if key in file_fields:
            if not isinstance(value, UploadFile):
                raise InvalidInput(key, f"must be a file upload (curl -F {key}=@photo.jpg), not a text field", status=422)
        elif key in cls.model_fields:
            if isinstance(value, UploadFile):
                raise InvalidInput(key, "must be a text field, not a file", status=422)
        else:
            raise InvalidInput(key, f"is not a field of this route; it takes {sorted(cls.model_fields)}", status=422)
        data[key] = value
    return data


async def read_typed_request(cls, request):
    """A typed route's request -> its validated input model (``cls``), or an InvalidInput."""
    file_fields = list(getattr(cls, "multipart_fields", ()) or ())
    if file_fields:
        return _validated(cls.model_validate, await _read_form(cls, request, file_fields))
    if _media_type(request) not in ("application/json", ""):
        raise InvalidInput(None, f"send a JSON body (Content-Type: application/json), not {_media_type(request)!r}", status=415)
    return _validated(cls.model_validate_json, (await request.body()) or b"{}")


def error_response(exc: RoostError):
    """The one place a typed route's RoostError becomes an answer."""
    from starlette.responses import JSONResponse

    return JSONResponse(exc.to_json(), status_code=exc.status, headers=exc.headers())


def typed_routes(service) -> None:
    """Read every API's requests Roost's way, refuse unknown fields, fix each answer's media type."""
    for method in service.apis.values():
        spec = method.input_spec
        spec.model_config["extra"] = "forbid"
        spec.model_rebuild(force=True)
        spec.from_http_request = classmethod(lambda cls, request, serde: read_typed_request(cls, request))
        # BentoML derives a list output's media type from its JSON schema, generated anew for every
        # response (measured: 42 % of the worker's time per collab request). It never changes: fix it.
        method.output_spec.media_type = method.output_spec.mime_type()
        json_answers(method)
    answer_roost_errors()


def json_answers(method) -> None:
    """Answer a typed route's result with one pydantic-core serialization. BentoML validates a list
    result again, dumps it to Python and then to JSON (measured: 26 ms for 4096 collab ratings, on
    the event loop, against 4 ms here)."""
    import typing

    from _bentoml_impl.serde import JSONSerde
    from pydantic import TypeAdapter
    from starlette.responses import Response

    adapter = TypeAdapter(typing.get_type_hints(method.func)["return"])
    spec = method.output_spec
    fallback = spec.to_http_response

    async def to_http_response(obj, serde):
        if isinstance(obj, Response) or not isinstance(serde, JSONSerde):
            return await fallback(obj, serde)
        return Response(adapter.dump_json(obj), media_type="application/json")

    spec.to_http_response = to_http_response


_patched = False


def answer_roost_errors() -> None:
    """BentoML answers any exception it does not know with a 500: answer RoostErrors ourselves."""
    global _patched
    if _patched:
        return
    from _bentoml_impl.server.app import ServiceAppFactory

    endpoint = ServiceAppFactory.api_endpoint

    async def api_endpoint(self, name, request):
        try:
            return await endpoint(self, name, request)
        except RoostError as exc:
            return error_response(exc)

    ServiceAppFactory.api_endpoint = api_endpoint
    _patched = True
