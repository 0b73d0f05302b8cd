"""Channel health: a circuit breaker per provider (SMTP server, Slack, each webhook host…).

Consecutive transport failures (connection errors, timeouts, 5xx) open the breaker: sending
stops at once, so no per-recipient timeouts pile up. After a cool-down one delivery goes
through as a probe; its success closes the breaker, its failure opens it again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any


class HealthState(StrEnum):
    """What the dashboard and ``GET /api/v1/channels`` show."""

    UP = "up"
    DOWN = "down"
    PROBING = "probing"


class Admission(StrEnum):
    """The breaker's answer for one delivery."""

    SEND = "send"
    PROBE = "probe"
    BLOCKED = "blocked"


@dataclass
class ProviderHealth:
    """The health of one provider."""

    name: str
    state: HealthState
    since: datetime
    failures: int = 0
    probe_at: datetime | None = None
    probing: bool = False
    last_error: str | None = None
    changed: bool = field(default=False, repr=False)


class CircuitBreakers:
    """Breakers by provider key; ``on_change`` hears every state change."""

    def __init__(
        self,
        now: Callable[[], datetime],
        *,
        threshold: int = 3,
        cooldown: float = 5.0,
        max_cooldown: float = 60.0,
    ) -> None:
        self._now = now
        self.threshold = threshold
        self.cooldown = cooldown
        self.max_cooldown = max_cooldown
        self._providers: dict[str, ProviderHealth] = {}
        self._opened: dict[str, int] = {}
        self.on_change: list[Callable[[ProviderHealth], None]] = []

    def _get(self, key: str) -> ProviderHealth:
        health = self._providers.get(key)
        if health is None:
            health = self._providers[key] = ProviderHealth(key, HealthState.UP, self._now())
        return health

    def admit(self, key: str) -> Admission:
        """May a delivery to this provider go now?"""
        health = self._providers.get(key)
        if health is None or health.state == HealthState.UP:
            return Admission.SEND
        if health.probing:
            return Admission.BLOCKED
        if health.probe_at is not None and self._now() >= health.probe_at:
            health.probing = True
            self._set(health, HealthState.PROBING)
            return Admission.PROBE
        return Admission.BLOCKED

    def retry_at(self, key: str) -> datetime:
        """When a blocked delivery is worth trying again."""
        health = self._providers.get(key)
        later = self._now() + timedelta(seconds=self.cooldown)
        if health is None or health.probe_at is None:
            return later
        return max(health.probe_at, self._now() + timedelta(seconds=0.2))

    def is_down(self, key: str) -> bool:
        health = self._providers.get(key)
        return health is not None and health.state != HealthState.UP

    def succeeded(self, key: str) -> None:
        """The provider answered (even with a refusal): it is up."""
        health = self._providers.get(key)
        if health is None:
            return
        health.failures = 0
        health.probing = False
        health.last_error = None
        self._opened.pop(key, None)
        if health.state != HealthState.UP:
            self._set(health, HealthState.UP)

    def failed(self, key: str, error: str) -> None:
        """A transport failure: count it, and open the breaker at the threshold."""
        health = self._get(key)
        health.failures += 1
        health.last_error = error
        if health.state == HealthState.PROBING or (
            health.state == HealthState.UP and health.failures >= self.threshold
        ):
            opened = self._opened.get(key, 0)
            self._opened[key] = opened + 1
            wait = min(self.max_cooldown, self.cooldown * 2**opened)
            health.probe_at = self._now() + timedelta(seconds=wait)
            health.probing = False
            self._set(health, HealthState.DOWN)  # ``since`` stays at the first outage

    def released(self, key: str) -> None:
        """A probe that never reached the provider (cancelled): let another probe go."""
        health = self._providers.get(key)
        if health is not None and health.probing:
            health.probing = False

    def _set(self, health: ProviderHealth, state: HealthState) -> None:
        if {health.state, state} != {HealthState.DOWN, HealthState.PROBING}:
            health.since = self._now()
        health.state = state
        for listener in self.on_change:
            listener(health)

    def snapshot(self) -> list[ProviderHealth]:
        """Every provider seen so far."""
        return sorted(self._providers.values(), key=lambda h: h.name)


class OutageLog:
    """What the incident timelines and the store must learn about provider health.

    Health changes are saved for ``tocsin status`` and the API; re-routed deliveries are
    counted per incident: the first re-routing is noted at once (``channel_down``), and one
    summary with the counts (``rerouted``) when the provider is back."""

    def __init__(self) -> None:
        self._changed: dict[str, ProviderHealth] = {}
        self._rerouted: dict[tuple[str, str], dict[str, int]] = {}
        self._noted: set[tuple[str, str]] = set()

    def health_changed(self, health: ProviderHealth) -> None:
        self._changed[health.name] = replace(health)

    def rerouted(self, incident_id: str, provider: str, to: str) -> None:
        moved = self._rerouted.setdefault((incident_id, provider), {})
        moved[to] = moved.get(to, 0) + 1

    def take_changes(self) -> list[ProviderHealth]:
        changed, self._changed = self._changed, {}
        return list(changed.values())

    def take_notes(self, providers: list[ProviderHealth]) -> list[tuple[str, str, dict[str, Any]]]:
        """Timeline notes due now: (incident id, action, detail)."""
        states = {h.name: h for h in providers}
        notes: list[tuple[str, str, dict[str, Any]]] = []
        for key, moved in list(self._rerouted.items()):
            incident_id, provider = key
            health = states.get(provider)
            if key not in self._noted:
                self._noted.add(key)
                notes.append(
                    (
                        incident_id,
                        "channel_down",
                        {
                            "provider": provider,
                            "since": health.since.isoformat() if health else None,
                            "rerouted_to": sorted(moved),
                        },
                    )
                )
            if health is None or health.state == HealthState.UP:
                del self._rerouted[key]
                self._noted.discard(key)
                notes.append(
                    (
                        incident_id,
                        "rerouted",
                        {
                            "provider": provider,
                            "to": moved,
                            "count": sum(moved.values()),
                        },
                    )
                )
        return notes
