"""The demo's channel stand-ins beyond e-mail and webhooks (Slack, Telegram, SMS)."""

from __future__ import annotations

from typing import Any

from rich.console import Console

FACTORIES: list[tuple[str, Any]] = []


def configure(config: dict[str, Any], boxes: Any) -> None:
    """Point the configuration's channels at the running stand-ins."""


async def after_fan_out(runtime: Any, boxes: Any, incident_id: str, console: Console) -> None:
    """Channel-specific acknowledgements (buttons, SMS replies)."""
