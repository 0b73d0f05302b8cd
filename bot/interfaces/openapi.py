"""The OpenAPI 3.1 document served at ``/api/openapi.json``, generated from the application's
route table and the API models (:mod:`bot.interfaces.api_models`).

A handler says what it is with :func:`operation` (who may call it, its body, its answer);
:func:`document` walks the routes the application actually serves, so a route cannot be
served undocumented nor documented without being served.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel

from bot import __version__
from bot.domain.models import Role
from bot.interfaces.api_models import Error

H = TypeVar("H", bound=Callable[..., Any])

_REF = "#/components/schemas/{model}"
_ERROR = {"$ref": _REF.format(model="Error")}
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": (
        "A unique key per request (1 to 255 printable characters). Within 24 h, the same key "
        "with the same request answers the first answer again (header `Idempotent-Replayed: "
        "true`) and sends nothing twice; the same key with another request answers 422."
    ),
    "schema": {"type": "string", "maxLength": 255},
}
PAGED = (
    ("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 1000}),
    ("offset", {"type": "integer", "minimum": 0, "maximum": 1_000_000_000, "default": 0}),
)


@dataclass(frozen=True)
class Operation:
    """What the document says of one handler."""

    summary: str
    response: type[BaseModel]
    status: int = 200
    role: Role | None = None
    body: type[BaseModel] | None = None
    body_required: bool = True
    query: tuple[tuple[str, dict[str, Any]], ...] = ()
    idempotent: bool = False
    # Other representations of the answer (``?format=md``): media type → schema.
    also: tuple[tuple[str, dict[str, Any]], ...] = ()


_OPERATIONS: dict[Callable[..., Any], Operation] = {}


def operation(summary: str, response: type[BaseModel], **details: Any) -> Callable[[H], H]:
    """Document the decorated handler (see :class:`Operation` for ``details``)."""

    def register(handler: H) -> H:
        _OPERATIONS[handler] = Operation(summary, response, **details)
        return handler

    return register


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _ref(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=_REF)
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema
    return {"$ref": _REF.format(model=model.__name__)}


def _describe(path: str, method: str, op: Operation, schemas: dict[str, Any]) -> dict[str, Any]:
    content = _json(_ref(op.response, schemas))
    content.update({media: {"schema": schema} for media, schema in op.also})
    responses: dict[str, Any] = {
        str(op.status): {"description": "OK", "content": content},
        "400": {"description": "Malformed request", "content": _json(_ERROR)},
        "422": {"description": "Invalid input", "content": _json(_ERROR)},
    }
    described: dict[str, Any] = {"summary": op.summary, "responses": responses}
    if op.role is not None:
        described["security"] = [{"bearer": []}]
        described["description"] = f"Requires the `{op.role.value}` role."
        responses["401"] = {"description": "No or unknown token", "content": _json(_ERROR)}
        responses["403"] = {"description": "Token without the role", "content": _json(_ERROR)}
        responses["429"] = {
            "description": "Too many failed tokens from this client (see Retry-After)",
            "content": _json(_ERROR),
        }
    if "{" in path:
        responses["404"] = {"description": "Not found", "content": _json(_ERROR)}
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _path_names(path)
    ]
    parameters += [{"name": n, "in": "query", "schema": s} for n, s in op.query]
    if op.idempotent:
        parameters.append(_IDEMPOTENCY_KEY)
    if parameters:
        described["parameters"] = parameters
    if op.body is not None:
        described["requestBody"] = {
            "required": op.body_required,
            "content": _json(_ref(op.body, schemas)),
        }
    return described


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def documented(app: web.Application) -> list[tuple[str, str, Operation]]:
    """(method, path, operation) of every route the application serves with a documented
    handler (``HEAD``, which aiohttp adds to each ``GET``, aside)."""
    found = []
    for route in app.router.routes():
        op = _OPERATIONS.get(route.handler)
        if op is not None and route.method != "HEAD":
            found.append((route.method.lower(), route.resource.canonical, op))  # type: ignore[union-attr]
    return found


def document(app: web.Application) -> dict[str, Any]:
    """The OpenAPI 3.1 description of the HTTP API this application serves."""
    schemas: dict[str, Any] = {}
    _ref(Error, schemas)
    paths: dict[str, Any] = {}
    for method, path, op in sorted(documented(app), key=lambda m: (m[1], m[0])):
        paths.setdefault(path, {})[method] = _describe(path, method, op, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Tocsin", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
