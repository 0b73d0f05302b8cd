"""Who is calling: API bearer tokens, Slack users and Telegram users mapped to roles."""

from __future__ import annotations

import hmac

from bot.config import Settings
from bot.domain.models import Actor, Role


class Authenticator:
    """Resolves credentials to an :class:`Actor`; tokens compared in constant time."""

    def __init__(self, settings: Settings) -> None:
        self._tokens: list[tuple[bytes, str, Actor]] = []
        self._token_names: dict[str, Actor] = {}
        for entry in settings.auth.tokens:
            secret = settings.secret(entry.token_env, required=False)
            if secret is not None and secret.get_secret_value():
                actor = Actor(entry.person or entry.name, entry.role)
                self._tokens.append((secret.get_secret_value().encode(), entry.name, actor))
                self._token_names[entry.name] = actor
        self._slack = dict(settings.auth.slack_users)
        self._telegram = dict(settings.auth.telegram_users)

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
        member = self._telegram.get(str(user_id))
        if member is None:
            return None
        return Actor(member.person or f"telegram:{user_id}", member.role)

    @property
    def has_tokens(self) -> bool:
        return bool(self._tokens)


def role_or_none(value: str) -> Role | None:
    try:
        return Role(value)
    except ValueError:
        return None
