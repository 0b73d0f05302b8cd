"""``Idempotency-Key`` on the API's incident-changing requests.

A client that retries after a timeout sends the same key: within 24 hours the same key with
the same request gets the first answer again (status and body) and changes nothing; the same
key with another request is refused (422). The key is stored by the domain service in the
transaction of the change itself, so two concurrent requests with one key cannot both act.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from bot.domain.errors import DuplicateRequest, InvalidInput
from bot.domain.models import Actor
from bot.interfaces import serialize
from bot.interfaces.deps import CLOCK, RECORDS, SERVICE
from bot.ports import IDEMPOTENCY_TTL, IdempotencyKey

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
MAX_LENGTH = 255
# The first request may be between its commit and the saving of its answer.
_ANSWER_WAIT = 5.0

Act = Callable[[IdempotencyKey | None], Awaitable[tuple[int, Any]]]


def claim(request: web.Request, actor: Actor, body: Any) -> IdempotencyKey | None:
    """The request's key (None without the header), fingerprinted with method, path, body."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > MAX_LENGTH or not key.isprintable():
        raise InvalidInput(
            "invalid Idempotency-Key", detail={HEADER: f"1 to {MAX_LENGTH} printable characters"}
        )
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(f"{request.method} {request.path}\n{canonical}".encode()).hexdigest()
    return IdempotencyKey(actor.name, key, digest, request.app[CLOCK].now())


async def replay(request: web.Request, key: IdempotencyKey) -> web.Response | None:
    """The first answer given to ``key``, None if the key is new; 422 for another request."""
    store = request.app[RECORDS]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _ANSWER_WAIT
    while True:
        found = await store.idempotent_answer(
            key.principal, key.key, key.created_at - IDEMPOTENCY_TTL
        )
        if found is None:
            return None
        if found.request_hash != key.request_hash:
            raise InvalidInput(
                "this Idempotency-Key was already used for a different request",
                detail={HEADER: "reused with another method, path or body"},
            )
        if found.status is not None and found.body is not None:
            return _response(found.status, found.body, replayed=True)
        if loop.time() > deadline:
            break
        await asyncio.sleep(0.05)  # polling the other request's saved answer
    # Its server stopped between the change and the answer: answer with the incident.
    incident = await request.app[SERVICE].get(found.incident_id)
    return _response(201, json.dumps(serialize.incident_json(incident)), replayed=True)


async def idempotent(request: web.Request, actor: Actor, body: Any, act: Act) -> web.Response:
    """Run ``act`` (which commits the key with its change) once per key; answer again after."""
    key = claim(request, actor, body)
    if key is not None:
        answer = await replay(request, key)
        if answer is not None:
            return answer
    try:
        status, data = await act(key)
    except DuplicateRequest:
        # A concurrent request with the same key committed first: its answer is ours.
        answer = await replay(request, key) if key is not None else None
        if answer is None:
            raise
        return answer
    text = json.dumps(data)
    if key is not None:
        await request.app[RECORDS].save_idempotent_answer(key.principal, key.key, status, text)
    return _response(status, text)


def _response(status: int, text: str, *, replayed: bool = False) -> web.Response:
    headers = {REPLAYED: "true"} if replayed else None
    return web.Response(status=status, text=text, content_type="application/json", headers=headers)
