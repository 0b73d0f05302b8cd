"""The HTTP API's request and response bodies as pydantic models: the OpenAPI document's
schemas are generated from them (:mod:`bot.interfaces.openapi`), request bodies are parsed
with them, and a validation error answers the API's usual 422 ``{"error", "detail"}``.

Responses may carry more fields than a model names (extra fields are fine for a client);
the fields named here are the contract (DESIGN.md §3).
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError

from bot.domain.declarations import MAX_ITEM_LENGTH, MAX_ITEMS
from bot.domain.errors import InvalidInput
from bot.domain.models import DeliveryState, IncidentStatus, Severity, StatementStatus

Body = TypeVar("Body", bound=BaseModel)


class Strict(BaseModel):
    """A request body: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Shape(BaseModel):
    """A response body: the named fields are there, others may be."""

    model_config = ConfigDict(extra="allow")


# --- requests ------------------------------------------------------------------------------
ItemList = list[str] | str


class Declaration(Strict):
    """``POST /api/v1/incidents``. The declaration's own rules (non-empty items, bounds, known
    audiences and claims) are the domain's (:class:`bot.domain.declarations.IncidentDraft`),
    shared with Slack, Telegram and the CLI; a lone string stands for a one-item list."""

    title: str = Field(max_length=200)
    systems: ItemList = Field(description=f"At least one; at most {MAX_ITEMS} items")
    severity: Severity
    unaffected: ItemList = []
    impact: ItemList = []
    sites: ItemList = []
    cause: str = Field("unknown", max_length=MAX_ITEM_LENGTH)
    locale: str | None = None
    audiences: list[str] | None = Field(None, max_length=MAX_ITEMS)
    claims: ItemList = Field(
        [], description="Claim keys: no_patient_impact, not_a_cyberattack, unaffected:SAMU…"
    )


class IncidentUpdate(Strict):
    """``POST /api/v1/incidents/{id}/updates``: a status change and/or a message."""

    status: str | None = Field(None, description="investigating, identified or monitoring")
    message: str | None = None


class Resolution(BaseModel):
    """``POST /api/v1/incidents/{id}/resolve`` (the body is optional)."""

    model_config = ConfigDict(frozen=True)

    message: str | None = None


class StatementEdit(Strict):
    """``PUT /api/v1/statements/{id}``: the new version's text."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    text: str


class Retraction(Strict):
    """``POST /api/v1/incidents/{id}/claims/{key}/retract``."""

    reason: str = ""


# Messages the API has always given for these bodies (clients and tests read them).
_MESSAGES: dict[type[BaseModel], tuple[str, dict[str, str]]] = {
    StatementEdit: ("text is required", {"text": "a non-empty string"}),
    Retraction: ('the body must be {"reason": ...}', {"reason": "required"}),
}


def parse(model: type[Body], data: Any) -> Body:
    """``data`` (parsed JSON) as ``model``, or :class:`InvalidInput` (422) saying why."""
    if model in _MESSAGES and not isinstance(data, dict):
        message, detail = _MESSAGES[model]
        raise InvalidInput(message, detail=detail)
    if not isinstance(data, dict):
        raise InvalidInput("the body must be an object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        if model in _MESSAGES:
            message, detail = _MESSAGES[model]
            raise InvalidInput(message, detail=detail) from None
        errors = exc.errors()
        unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
        if unknown:
            raise InvalidInput(
                "unknown field(s)", detail=dict.fromkeys(unknown, "unknown field")
            ) from None
        key = str(errors[0]["loc"][0]) if errors[0]["loc"] else "body"
        raise InvalidInput(f"{key} must be a string", detail={key: "a string"}) from None


# --- responses -----------------------------------------------------------------------------
class Error(BaseModel):
    """Every refusal: what went wrong, and per field why (or null)."""

    error: str
    detail: Any = None


class TimelineEntry(Shape):
    """One entry of an incident's timeline."""

    seq: int
    at: str | None
    actor: str
    action: str
    detail: dict[str, Any]


class Incident(Shape):
    """An incident; ``timeline`` where one incident is asked for."""

    id: str
    title: str
    status: IncidentStatus
    severity: Severity
    systems: list[str]
    unaffected: list[str]
    impact: list[str]
    sites: list[str]
    cause: str
    locale: str
    claims: list[str]
    audiences: list[str]
    declared_by: str
    created_at: str | None
    updated_at: str | None
    resolved_at: str | None
    timeline: list[TimelineEntry] | None = None


class IncidentList(Shape):
    """``GET /api/v1/incidents``."""

    incidents: list[Incident]


class Statement(Shape):
    """A statement version."""

    id: str
    incident_id: str
    kind: str
    locale: str
    status: StatementStatus
    version: int
    text: str
    author: str
    approved_by: str | None


class StatementList(Shape):
    """``GET /api/v1/incidents/{id}/statements``."""

    statements: list[Statement]


class StatementVersions(Shape):
    """``GET /api/v1/statements/{id}/versions``: every version and a diff."""

    versions: list[Statement]
    diff: Any


class Correction(Statement):
    """The correction draft a retraction opens, with its translations."""

    audiences: list[str]
    translations: list[Statement]


class Attempt(Shape):
    """One attempt at a delivery (errors masked)."""

    at: str | None
    outcome: str
    provider_id: str | None
    error: str | None


class Delivery(Shape):
    """One delivery (a member's address masked)."""

    id: int
    audience: str
    channel: str
    recipient: str
    state: DeliveryState
    attempts: list[Attempt]
    failover_of: int | None


class Deliveries(Shape):
    """``GET /api/v1/incidents/{id}/deliveries``: a page of rows, counts over all rows."""

    counts: dict[str, int]
    deliveries: list[Delivery]


class Claim(Shape):
    """A claim made in the incident's statements, and who received it."""

    key: str
    text: str
    status: str
    audiences: list[str]
    recipients: int


class ClaimList(Shape):
    """``GET /api/v1/incidents/{id}/claims``."""

    claims: list[Claim]


class Site(Shape):
    """Per-site confirmations."""

    site: str
    confirmed: int
    by: list[str]


class Sites(RootModel[list[Site]]):
    """``GET /api/v1/incidents/{id}/sites``."""


class Report(RootModel[dict[str, Any]]):
    """``GET /api/v1/incidents/{id}/report`` as JSON (``format=md`` or ``html``: text)."""


class ChannelState(Shape):
    """A provider's health."""

    name: str
    state: Literal["up", "down", "probing"]
    since: str | None


class Channels(RootModel[list[ChannelState]]):
    """``GET /api/v1/channels``."""


class AlertAnswer(Shape):
    """What an Alertmanager notification did."""

    action: str
    incident: str | None


class Health(Shape):
    """``GET /healthz``."""

    status: Literal["ok"]


class Readiness(Shape):
    """``GET /readyz`` (503 when either is false)."""

    store: bool
    worker: bool


class Document(RootModel[dict[str, Any]]):
    """``GET /api/openapi.json``: this document."""
