"""A page to try the model at ``/``, and the API docs at ``/docs``, served by the model's own server.

``roost_service`` (services/model.py) applies :func:`with_demo`. Routes:

    GET /              the model's demo page (services/static/<model>.html); it calls the typed routes
    GET /demo/spec     what the page needs to know: classes, colours, form fields, known users
    GET /demo/static/  the pages' CSS and JS
    GET /model         what is served: version, runtime, device, precision, the bundle file (e.g. model.int8.onnx)
    GET /docs          Swagger UI (BentoML's own copy of its files, under /static_content)
    GET /docs.json     the OpenAPI document (services/openapi.py)

Plain files, no build step and nothing fetched from elsewhere; every answer carries a
Content-Security-Policy that allows only this origin (so the pages hold no inline script or style;
the Swagger page also allows data: images, its stylesheet's icons).
BentoML serves its own Swagger page at ``/`` and its spec at ``/docs.json``; a mounted app's routes
are matched before those, so this app takes both paths.
"""

from __future__ import annotations

from pathlib import Path

from services.registry import MODELS

STATIC = Path(__file__).parent / "static"
CSP = (
    "default-src 'self'; img-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
# Swagger UI's stylesheet draws its icons from data: SVGs (inline images, not requests).
DOCS_CSP = CSP.replace("img-src 'self'", "img-src 'self' data:")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class SecurityHeaders:
    """ASGI middleware: the CSP (and friends) on every answer of the demo app, unless it set its own."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in SECURITY_HEADERS if name not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _hex(rgb) -> str:
    return "#" + "".join(f"{int(c):02x}" for c in rgb)


def demo_spec(model) -> dict:
    """What a model's page needs, read from the loaded bundle."""
    spec = model.spec
    out = {"model": model.name, "version": model.version}
    if spec.kind == "image":
        out["classes"] = list(spec.vocab)
    elif spec.kind == "segmentation":
        from services.segment import PALETTE

        out["classes"] = [{"name": c, "colour": _hex(PALETTE[3 * i:3 * i + 3])} for i, c in enumerate(spec.codes)]
    elif spec.kind == "tabular":
        out["fields"] = tabular_fields(spec)
        out["classes"] = list(spec.vocab)
    elif spec.kind == "collab":
        out["users"] = [_id(u) for u in spec.users[1:]]  # index 0 is fastai's '#na#'
        out["movies"] = [_id(m) for m in spec.items[1:]]
        out["y_range"] = list(spec.y_range)
        out["max_pairs"] = MODELS["collab"].max_request_rows  # per /predict request
    return out


def _id(text: str):
    return int(text) if text.isdigit() and str(int(text)) == text else text


def tabular_fields(spec) -> list[dict]:
    """The columns the model reads, as form fields: categories from its Categorify vocabularies,
    numbers with the bounds AdultRow enforces and a default (the example row, else the training
    median or mean)."""
    from services.tabular import AdultRow

    schema = AdultRow.model_json_schema(by_alias=True)
    props, example = schema["properties"], schema.get("example", {})
    derived = {f"{c}_na" for c in spec.fill_values}
    fields = []
    for name in [c for c in spec.cat_names if c not in derived]:
        choices = [c for c in spec.categories[name] if c != "#na#"]
        default = example.get(name)
        fields.append({"name": name, "type": "category", "choices": choices, "default": default if default in choices else None})
    for name in spec.cont_names:
        bounds = next((s for s in props.get(name, {}).get("anyOf", [props.get(name, {})]) if s.get("type") == "number"), {})
        default = example.get(name, spec.fill_values.get(name, spec.means.get(name)))
        fields.append({
            "name": name, "type": "number", "min": bounds.get("minimum"), "max": bounds.get("maximum"),
            "default": None if default is None else round(float(default)),
            "description": props.get(name, {}).get("description", ""),
        })
    return fields


def create_app(service):
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import FileResponse, JSONResponse, RedirectResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    import bentoml
    from services.oip import find_model
    from services.openapi import roost_openapi

    model_class = service.inner.model_class
    # An imported model (services/imported.py) uses its task's page where the answers are the same;
    # None: no page fits (tables of any columns, multi-label): / shows the API docs instead.
    page_name = getattr(model_class, "demo_page", model_class.name)
    page = STATIC / f"{page_name}.html" if page_name else None
    cached: dict = {}

    def model():
        return find_model(bentoml.get_current_service())

    async def index(request):
        if page is None:
            return RedirectResponse("/docs", status_code=307)
        return FileResponse(page, headers={"cache-control": "no-cache"})

    async def docs(request):
        return FileResponse(STATIC / "docs.html", headers={"cache-control": "no-cache", "content-security-policy": DOCS_CSP})

    async def docs_json(request):
        if "openapi" not in cached:
            cached["openapi"] = roost_openapi(service, model())
        return JSONResponse(cached["openapi"])

    async def spec(request):
        if "spec" not in cached:
            cached["spec"] = demo_spec(model())
        return JSONResponse(cached["spec"])

    async def model_info(request):
        """What this server runs: version, runtime, device, precision and the bundle file served."""
        return JSONResponse(model().info())

    return Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/docs", docs, methods=["GET"]),
            Route("/docs.json", docs_json, methods=["GET"]),
            Route("/demo/spec", spec, methods=["GET"]),
            Route("/model", model_info, methods=["GET"]),
            Mount("/demo/static", StaticFiles(directory=STATIC), name="demo-static"),
        ],
        middleware=[Middleware(SecurityHeaders)],
    )


def with_demo(service):
    """Serve the demo page at / and the API docs at /docs for this BentoML service."""
    service.mount_asgi_app(create_app(service), path="/", name="demo")
    return service
