"""Who is calling: API bearer tokens, Slack users and Telegram users mapped to roles."""

from __future__ import annotations

import hmac

from bot.config import Settings
from bot.domain.models import Actor, Role


class Authenticator:
    """Resolves credentials to an :class:`Actor`; tokens compared in constant time."""

    def __init__(self, settings: Settings) -> None:
        self._tokens: list[tuple[bytes, Actor]] = []
        for entry in settings.auth.tokens:
            secret = settings.secret(entry.token_env, required=False)
            if secret is not None and secret.get_secret_value():
                self._tokens.append(
                    (secret.get_secret_value().encode(), Actor(entry.name, entry.role))
                )
        self._slack = dict(settings.auth.slack_users)
        self._telegram = dict(settings.auth.telegram_users)

    def from_bearer(self, header: str | None) -> Actor | None:
        """``Authorization: Bearer <token>`` → the token's actor, or None."""
        if not header or not header.startswith("Bearer "):
            return None
        given = header.removeprefix("Bearer ").strip().encode()
        found: Actor | None = None
        for token, actor in self._tokens:
            if hmac.compare_digest(token, given):
                found = actor
        return found

    def from_token(self, token: str) -> Actor | None:
        return self.from_bearer(f"Bearer {token}")

    def slack_user(self, user_id: str, groups: tuple[str, ...] = ()) -> Actor | None:
        """A Slack user (or a user group it belongs to) on the allow-list."""
        role = self._slack.get(user_id)
        for group in groups:
            role = role or self._slack.get(group)
        return Actor(f"slack:{user_id}", role) if role else None

    def telegram_user(self, user_id: int | str) -> Actor | None:
        role = self._telegram.get(str(user_id))
        return Actor(f"telegram:{user_id}", role) if role else None

    @property
    def has_tokens(self) -> bool:
        return bool(self._tokens)


def role_or_none(value: str) -> Role | None:
    try:
        return Role(value)
    except ValueError:
        return None
