"""Who is calling: API bearer tokens, Slack users and Telegram users mapped to roles.

The principals arrive as plain values (the composition root reads them from the settings and
the secrets from the environment), so the domain knows no configuration format.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from bot.domain.models import Actor, Role


@dataclass(frozen=True)
class TokenPrincipal:
    """An API token: its configured name, its secret value, its role and its person."""

    name: str
    secret: str
    role: Role
    person: str | None = None


@dataclass(frozen=True)
class ChatPrincipal:
    """A Slack or Telegram user (or Slack user group) allowed to act, and as whom."""

    role: Role
    person: str | None = None


class Authenticator:
    """Resolves credentials to an :class:`Actor`; tokens compared in constant time."""

    def __init__(
        self,
        tokens: Iterable[TokenPrincipal] = (),
        slack_users: Mapping[str, ChatPrincipal] | None = None,
        telegram_users: Mapping[str, ChatPrincipal] | None = None,
    ) -> None:
        self._tokens: list[tuple[bytes, str, Actor]] = []
        self._token_names: dict[str, Actor] = {}
        for entry in tokens:
            if entry.secret:  # a token whose variable is unset or empty opens nothing
                actor = Actor(entry.person or entry.name, entry.role)
                self._tokens.append((entry.secret.encode(), entry.name, actor))
                self._token_names[entry.name] = actor
        self._slack = dict(slack_users or {})
        self._telegram = dict(telegram_users or {})

    def from_bearer(self, header: str | None) -> Actor | None:
        """``Authorization: Bearer <token>`` → the token's actor, or None. The actor's name is
        the token's person when the configuration names one, else the token's name."""
        found = self.token_entry(header)
        return found[1] if found else None

    def token_entry(self, header: str | None) -> tuple[str, Actor] | None:
        """``Authorization: Bearer <token>`` → (the token's configured name, its actor)."""
        if not header or not header.startswith("Bearer "):
            return None
        given = header.removeprefix("Bearer ").strip().encode()
        found: tuple[str, Actor] | None = None
        for token, name, actor in self._tokens:
            if hmac.compare_digest(token, given):
                found = (name, actor)
        return found

    def from_token(self, token: str) -> Actor | None:
        """A bare token (no ``Bearer`` prefix) → its actor, or None."""
        return self.from_bearer(f"Bearer {token}")

    def by_token_name(self, name: str) -> Actor | None:
        """The actor of the configured token called ``name`` (a dashboard session's token),
        or None when that token is no longer configured or set."""
        return self._token_names.get(name)

    def slack_user(self, user_id: str, groups: tuple[str, ...] = ()) -> Actor | None:
        """A Slack user (or a user group it belongs to) on the allow-list; named after the
        person the user's own entry names, else ``slack:<id>``."""
        member = self._slack.get(user_id)
        for group in groups:
            member = member or self._slack.get(group)
        if member is None:
            return None
        own = self._slack.get(user_id)
        person = own.person if own is not None else None
        return Actor(person or f"slack:{user_id}", member.role)

    def telegram_user(self, user_id: int | str) -> Actor | None:
        """A Telegram user on the allow-list; named after its person, else ``telegram:<id>``."""
        member = self._telegram.get(str(user_id))
        if member is None:
            return None
        return Actor(member.person or f"telegram:{user_id}", member.role)

    @property
    def has_tokens(self) -> bool:
        """Whether any API token is configured and set."""
        return bool(self._tokens)


def role_or_none(value: str) -> Role | None:
    """``value`` as a :class:`Role`, or None when it names none."""
    try:
        return Role(value)
    except ValueError:
        return None
