"""The OpenAPI 3 document served at ``/api/openapi.json``."""

from __future__ import annotations

from typing import Any

from bot import __version__

_ERROR = {"$ref": "#/components/schemas/Error"}
_STR_LIST = {"type": "array", "items": {"type": "string"}}
# Requests a client may retry safely with the same Idempotency-Key.
IDEMPOTENT = {("post", "/api/v1/incidents"), ("post", "/api/v1/incidents/{id}/updates")}
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
# A declaration's lists: each item goes into every message.
_BOUNDED_LIST = {
    "type": "array",
    "maxItems": 50,
    "items": {"type": "string", "minLength": 1, "maxLength": 500},
}

# (method, path, role or None, summary, request schema or None, success status, response schema)
ROUTES: list[tuple[str, str, str | None, str, dict[str, Any] | None, int, dict[str, Any]]] = [
    (
        "post",
        "/api/v1/incidents",
        "responder",
        "Declare an incident",
        {"$ref": "#/components/schemas/Declaration"},
        201,
        {"$ref": "#/components/schemas/Incident"},
    ),
    (
        "get",
        "/api/v1/incidents",
        "viewer",
        "List incidents",
        None,
        200,
        {
            "type": "object",
            "properties": {
                "incidents": {"type": "array", "items": {"$ref": "#/components/schemas/Incident"}}
            },
        },
    ),
    (
        "get",
        "/api/v1/incidents/{id}",
        "viewer",
        "One incident with its timeline",
        None,
        200,
        {"$ref": "#/components/schemas/Incident"},
    ),
    (
        "post",
        "/api/v1/incidents/{id}/updates",
        "responder",
        "Status change and/or message",
        {
            "type": "object",
            "additionalProperties": False,
            "properties": {"status": {"type": "string"}, "message": {"type": "string"}},
        },
        201,
        {"$ref": "#/components/schemas/Incident"},
    ),
    (
        "post",
        "/api/v1/incidents/{id}/resolve",
        "responder",
        "Resolve an incident",
        {"type": "object", "properties": {"message": {"type": "string"}}},
        201,
        {"$ref": "#/components/schemas/Incident"},
    ),
    (
        "post",
        "/api/v1/incidents/{id}/confirm",
        "responder",
        "Confirm a draft incident",
        None,
        201,
        {"$ref": "#/components/schemas/Incident"},
    ),
    (
        "get",
        "/api/v1/incidents/{id}/statements",
        "viewer",
        "Rendered statements",
        None,
        200,
        {
            "type": "object",
            "properties": {
                "statements": {"type": "array", "items": {"$ref": "#/components/schemas/Statement"}}
            },
        },
    ),
    (
        "put",
        "/api/v1/statements/{id}",
        "press",
        "Edit a draft (new version)",
        {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
        200,
        {"$ref": "#/components/schemas/Statement"},
    ),
    (
        "post",
        "/api/v1/statements/{id}/approve",
        "press",
        "Approve a draft (four-eyes: not its author)",
        None,
        200,
        {"$ref": "#/components/schemas/Statement"},
    ),
    (
        "get",
        "/api/v1/incidents/{id}/deliveries",
        "viewer",
        "Deliveries and counts by state",
        None,
        200,
        {"$ref": "#/components/schemas/Deliveries"},
    ),
    ("get", "/healthz", None, "Liveness", None, 200, {"type": "object"}),
    (
        "get",
        "/readyz",
        None,
        "Readiness (store reachable, worker alive)",
        None,
        200,
        {"type": "object"},
    ),
]

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}, "detail": {}},
    },
    "Declaration": {
        "type": "object",
        "required": ["title", "systems", "severity"],
        "additionalProperties": False,
        "properties": {
            "title": {"type": "string", "maxLength": 200},
            "systems": {**_BOUNDED_LIST, "minItems": 1},
            "unaffected": _BOUNDED_LIST,
            "impact": _BOUNDED_LIST,
            "sites": _BOUNDED_LIST,
            "severity": {"type": "string", "enum": ["minor", "major", "critical"]},
            "cause": {"type": "string"},
            "locale": {"type": "string"},
            "audiences": {"type": "array", "maxItems": 50, "items": {"type": "string"}},
            "claims": _BOUNDED_LIST,
        },
    },
    "Incident": {
        "type": "object",
        "required": ["id", "title", "status", "severity"],
        "properties": {
            "id": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "string"},
            "severity": {"type": "string"},
            "systems": _STR_LIST,
            "unaffected": _STR_LIST,
            "timeline": {"type": "array", "items": {"type": "object"}},
        },
    },
    "Statement": {
        "type": "object",
        "required": ["id", "kind", "locale", "status", "version"],
        "properties": {
            "id": {"type": "string"},
            "kind": {"type": "string"},
            "locale": {"type": "string"},
            "status": {"type": "string"},
            "version": {"type": "integer"},
            "text": {"type": "string"},
            "author": {"type": "string"},
            "approved_by": {"type": ["string", "null"]},
        },
    },
    "Deliveries": {
        "type": "object",
        "properties": {
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            "deliveries": {"type": "array", "items": {"type": "object"}},
        },
    },
}


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of the HTTP API."""
    paths: dict[str, Any] = {}
    for method, path, role, summary, body, status, response in ROUTES:
        op: dict[str, Any] = {
            "summary": summary,
            "responses": {
                str(status): {
                    "description": "OK",
                    "content": {"application/json": {"schema": response}},
                },
                "400": {
                    "description": "Malformed request",
                    "content": {"application/json": {"schema": _ERROR}},
                },
                "422": {
                    "description": "Invalid input",
                    "content": {"application/json": {"schema": _ERROR}},
                },
            },
        }
        if role is not None:
            op["security"] = [{"bearer": []}]
            op["description"] = f"Requires the `{role}` role."
            op["responses"]["401"] = {
                "description": "No or unknown token",
                "content": {"application/json": {"schema": _ERROR}},
            }
            op["responses"]["403"] = {
                "description": "Token without the role",
                "content": {"application/json": {"schema": _ERROR}},
            }
            op["responses"]["429"] = {
                "description": "Too many failed tokens from this client (see Retry-After)",
                "content": {"application/json": {"schema": _ERROR}},
            }
        if "{id}" in path:
            op["parameters"] = [
                {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
            ]
        if (method, path) in IDEMPOTENT:
            op.setdefault("parameters", []).append(_IDEMPOTENCY_KEY)
        if body is not None:
            op["requestBody"] = {
                "required": method != "post" or "resolve" not in path,
                "content": {"application/json": {"schema": body}},
            }
        paths.setdefault(path, {})[method] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Tocsin", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
