"""The OpenAPI 3.1 document of the API (GET /v1/openapi.json), made from the routes and their
wire models, so it cannot drift from what the server takes; and a docs page for it
(GET /v1/docs: Swagger UI from the copy powertools ships, inlined — no CDN needed)."""

from __future__ import annotations

import functools
import json
import re
from importlib import resources
from typing import Any

from . import request as rq
from .request import Response
from .routing import ROUTES, route

ERROR = {
    "type": "object",
    "required": ["status_code", "detail"],
    "properties": {"status_code": {"type": "integer"}, "detail": {}},
}
TAGS = [
    {"name": "indexes", "description": "Create, describe, train, rotate the key of and delete indexes."},
    {"name": "vectors", "description": "Write, read and search an index's rows (by vector, text or both)."},
    {"name": "users", "description": "API keys scoped to one index (create, list, revoke)."},
    {"name": "batch loads", "description": "Load a file from S3 into an index, and follow the job."},
    {"name": "service", "description": "Health and the embedding models this deployment runs."},
]


def _schema(model: Any, components: dict[str, Any]) -> dict[str, Any]:
    """A reference to ``model``'s JSON schema, which goes into ``components`` with its parts."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


@functools.cache
def document() -> dict[str, Any]:
    """Paths grouped by tag, each with its summary and description (the route function's
    docstring), request and answer bodies (the pydantic wire models' JSON schemas) and the
    error shape."""
    paths: dict[str, dict[str, Any]] = {}
    components: dict[str, Any] = {"Error": ERROR}
    for entry in ROUTES:
        if not entry.documented:
            continue
        method, template, body = entry.method, entry.template, entry.body
        path = re.sub(r"<(\w+)>", r"{\1}", template)
        # The docstring's ``literals`` as the page shows them: plain in the one-line summary
        # (Swagger UI prints it as text), Markdown code in the description.
        doc = (entry.fn.__doc__ or "").strip()
        summary, _, description = doc.replace("``", "`").partition("\n\n")
        summary = summary.replace("`", "")
        answer = _schema(entry.answer, components) if entry.answer is not None else {}
        ok = {"description": "success", "content": {"application/json": {"schema": answer}}}
        code = str(entry.status)
        if entry.answer is None and method == "DELETE":
            code, ok = "204", {"description": "deleted (no body)"}
        responses: dict[str, Any] = {code: ok}
        if entry.accepted:
            responses["202"] = {**ok, "description": "accepted: the work goes on in the background"}
        responses["default"] = {
            "description": "an error",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        operation: dict[str, Any] = {
            "tags": [entry.tag],
            "summary": " ".join(summary.split()),
            "operationId": f"{method.lower()}_{re.sub(r'[^a-z0-9]+', '_', path.lower()).strip('_')}",
            "responses": responses,
        }
        if description.strip():
            operation["description"] = " ".join(description.split())
        names = re.findall(r"{(\w+)}", path)
        if names:
            operation["parameters"] = [
                {"name": n, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
                for n in names
            ]
        if body is not None:
            ref = _schema(body, components)
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref}}}
        if template != "/v1/health":
            operation["security"] = [{"apiKey": []}]
        paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "ciphervec (CyborgDB REST v1 compatible)", "version": rq.package_version()},
        "tags": TAGS,
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
        },
    }


@route("GET", "/v1/openapi.json", documented=False)
def openapi() -> Response:
    return rq.ok(document())


@functools.cache
def page() -> str:
    """The Swagger UI page over ``document()``, its script and styles inlined (powertools'
    Swagger UI module is imported here, not at start: it is a quarter of a cold start)."""
    from aws_lambda_powertools.event_handler.openapi.swagger_ui.html import generate_swagger_html

    assets = resources.files("aws_lambda_powertools.event_handler.openapi.swagger_ui")
    spec = json.dumps(document()).replace("</", "<\\/")  # cannot close the script element
    html = generate_swagger_html(
        spec,
        assets.joinpath("swagger-ui-bundle.min.js").read_text(encoding="utf-8"),
        assets.joinpath("swagger-ui.min.css").read_text(encoding="utf-8"),
        "",
        None,
    )
    html = html.replace("<title>Swagger UI</title>", "<title>ciphervec API</title>")
    return html.replace('currentUrl.pathname + "?format=json"', '"openapi.json"')


@route("GET", "/v1/docs", documented=False)
def docs() -> Response:
    return Response(200, "text/html; charset=utf-8", page())
