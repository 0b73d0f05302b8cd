"""The one text-command parser shared by Slack, Telegram and the CLI, and its execution.

``declare <system> <severity> <text>`` · ``status [id]`` · ``update <id> <status> <text>`` ·
``resolve <id> [text]`` · ``confirm <id>`` · ``press <id>`` · ``help``
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.domain.declarations import IncidentDraft, parse_status
from bot.domain.errors import InvalidInput
from bot.domain.models import (
    PENDING_STATES,
    Actor,
    Incident,
    Severity,
    Statement,
    StatementKind,
    StatementStatus,
)
from bot.domain.services import IncidentService

USAGE = (
    "Usage:\n"
    "  declare <system> <minor|major|critical> <text>\n"
    "  status [incident-id]\n"
    "  update <incident-id> <investigating|identified|monitoring|resolved> <text>\n"
    "  resolve <incident-id> [text]\n"
    "  confirm <incident-id>   (a draft opened by monitoring)\n"
    "  press <incident-id>     (the press statement draft)\n"
    "  help"
)

VERBS = ("declare", "status", "update", "resolve", "confirm", "press", "help")


@dataclass(frozen=True)
class Command:
    """A parsed command."""

    verb: str
    incident_id: str | None = None
    system: str | None = None
    severity: Severity | None = None
    status: str | None = None
    text: str = ""


def parse_command(raw: str) -> Command:
    """Parse a command line; InvalidInput carries the usage on any error."""
    words = raw.strip().split()
    if not words:
        return Command("help")
    verb, args = words[0].lower().lstrip("/"), words[1:]
    if verb not in VERBS:
        raise InvalidInput(f"unknown command {words[0]!r}", detail=USAGE)
    if verb == "help":
        return Command("help")
    if verb == "declare":
        if not args:
            return Command("declare")  # interactive (a Slack modal)
        if len(args) < 3:
            raise InvalidInput("declare needs <system> <severity> <text>", detail=USAGE)
        try:
            severity = Severity(args[1].lower())
        except ValueError:
            raise InvalidInput(f"unknown severity {args[1]!r}", detail=USAGE) from None
        return Command("declare", system=args[0], severity=severity, text=" ".join(args[2:]))
    if verb == "status":
        return Command("status", incident_id=args[0].upper() if args else None)
    if not args:
        raise InvalidInput(f"{verb} needs an incident id", detail=USAGE)
    incident_id = args[0].upper()
    if verb == "update":
        if len(args) < 2:
            raise InvalidInput("update needs <incident-id> <status> [text]", detail=USAGE)
        parse_status(args[1])  # reject unknown statuses before anything happens
        return Command("update", incident_id, status=args[1].lower(), text=" ".join(args[2:]))
    return Command(verb, incident_id, text=" ".join(args[1:]))


@dataclass(frozen=True)
class Reply:
    """What an interface shows back: plain text, plus the objects for richer formatting."""

    text: str
    incident: Incident | None = None
    statement: Statement | None = None


async def execute(command: Command, actor: Actor, service: IncidentService) -> Reply:
    """Run a parsed command as ``actor`` (authorisation happens in the domain services)."""
    store = service.store
    if command.verb == "help":
        return Reply(USAGE)
    if command.verb == "declare":
        if command.system is None or command.severity is None:
            return Reply(USAGE)
        draft = IncidentDraft(
            title=command.text, systems=(command.system,), severity=command.severity
        )
        incident = await service.declare(actor, draft)
        return Reply(
            f"Declared {incident.id}: {incident.title} ({incident.severity.value}). "
            f"Sending to {', '.join(incident.audiences)}.",
            incident,
        )
    if command.verb == "status":
        if command.incident_id is None:
            open_ = [i for i in await store.list_incidents() if i.status.value != "resolved"]
            if not open_:
                return Reply("No open incident.")
            return Reply(
                "\n".join(
                    f"{i.id} [{i.status.value}, {i.severity.value}] {i.title}" for i in open_[:10]
                )
            )
        incident = await service.get(command.incident_id)
        counts = await store.delivery_counts(incident.id)
        pending = sum(n for s, n in counts.items() if s in {p.value for p in PENDING_STATES})
        summary = ", ".join(f"{s} {n}" for s, n in sorted(counts.items())) or "no delivery"
        return Reply(
            f"{incident.id} [{incident.status.value}, {incident.severity.value}] "
            f"{incident.title}\nDeliveries: {summary} ({pending} pending)",
            incident,
        )
    assert command.incident_id is not None
    if command.verb == "update":
        incident = await service.update(
            actor, command.incident_id, command.status, command.text or None
        )
        return Reply(f"{incident.id} updated: {incident.status.value}.", incident)
    if command.verb == "resolve":
        incident = await service.resolve(actor, command.incident_id, command.text or None)
        return Reply(f"{incident.id} resolved.", incident)
    if command.verb == "confirm":
        incident = await service.confirm(actor, command.incident_id)
        return Reply(f"{incident.id} confirmed and sent.", incident)
    # press: the latest press draft in the incident's locale
    incident = await service.get(command.incident_id)
    drafts = [
        s
        for s in await store.statements(incident.id)
        if s.kind == StatementKind.PRESS
        and s.locale == incident.locale
        and s.status in (StatementStatus.DRAFT, StatementStatus.PUBLISHED)
    ]
    if not drafts:
        return Reply(f"No press statement for {incident.id}.", incident)
    latest = max(drafts, key=lambda s: (s.seq, s.version))
    return Reply(
        f"Press statement {latest.id} (v{latest.version}, {latest.status.value}, "
        f"by {latest.author}):\n{latest.text}",
        incident,
        latest,
    )
