"""A local stand-in of the Slack Web API, for ``tocsin demo`` and the tests.

It answers the methods Tocsin uses (``auth.test``, ``chat.postMessage``, ``chat.update``,
``views.open``, ``chat.postEphemeral``, ``usergroups.users.list``, ``conversations.open``,
``conversations.history``) the way Slack does
(``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``), keeps every call, keeps the
current text and blocks of every message it took (so an update can be checked), and takes
``response_url`` posts under ``/response/<key>``. Failures are programmable per channel (an
error code, a 429 with ``Retry-After``, a 5xx) so that rate limiting and error mapping can be
exercised for real. :meth:`SlackSandbox.hold_after_post` takes a post and then keeps the
answer back past the client's timeout, the outcome a client cannot know::

    async with SlackSandbox() as slack:
        slack.rate_limit("C0STAFF", retry_after=30)
        ... AsyncWebClient(token=..., base_url=slack.api_url, session=...) ...
        [post] = await slack.wait_for("chat.postMessage")
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tocsin_sandbox.server import LocalServer, call_arguments

METHODS = (
    "auth.test",
    "chat.postMessage",
    "chat.update",
    "views.open",
    "chat.postEphemeral",
    "usergroups.users.list",
    "conversations.open",
    "conversations.history",
)
TEAM_ID = "T0SANDBOX"
BOT_USER_ID = "U0TOCSIN"


@dataclass(frozen=True)
class SlackCall:
    """One Web API call as the sandbox took it (``authorised``: a bearer token was sent)."""

    method: str
    args: Mapping[str, Any]
    authorised: bool


@dataclass(frozen=True)
class ResponsePost:
    """One post to a ``response_url`` (``/response/<key>``)."""

    key: str
    body: Mapping[str, Any]


@dataclass
class Failure:
    """A programmed answer: an error code with an HTTP status, ``times`` times (None: always)."""

    error: str
    status: int = 200
    retry_after: float | None = None
    times: int | None = None


@dataclass
class SlackMessage:
    """A message as it stands in the sandbox's workspace (after any ``chat.update``)."""

    channel: str
    ts: str
    text: str
    blocks: list[Any] = field(default_factory=list)
    updates: int = 0
    metadata: Mapping[str, Any] | None = None


class SlackSandbox(LocalServer):
    """An aiohttp server on 127.0.0.1 and an ephemeral port; see the module docstring.

    ``token`` (optional) is the only bot token accepted; any bearer token is accepted when it
    is None. :attr:`api_url` ends in ``/api/``, as ``channels.slack.api_url`` expects.
    """

    def __init__(self, host: str = "127.0.0.1", token: str | None = None) -> None:
        super().__init__(host)
        self._token = token
        self._calls: list[SlackCall] = []
        self._responses: list[ResponsePost] = []
        self._messages: dict[tuple[str, str], SlackMessage] = {}
        self._by_channel: dict[str, Failure] = {}
        self._by_method: dict[str, Failure] = {}
        # channel → (seconds to hold the answer of a post it took, how many posts)
        self._holds: dict[str, list[float]] = {}
        self._released = asyncio.Event()
        self._ts = itertools.count(1)
        self._changed = asyncio.Event()
        # User groups and their members, for ``usergroups.users.list``: set them in a test.
        self.groups: dict[str, list[str]] = {}

    # --- addresses --------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL without a trailing slash."""
        return self.base_url

    @property
    def api_url(self) -> str:
        """The Web API base URL (``http://127.0.0.1:<port>/api/``)."""
        return f"{self.url}/api/"

    def response_url(self, key: str) -> str:
        """A ``response_url`` for a slash command or button payload, recorded under ``key``."""
        return f"{self.url}/response/{key}"

    # --- what happened ----------------------------------------------------------------
    @property
    def calls(self) -> list[SlackCall]:
        """Every Web API call so far, in arrival order (a copy)."""
        return list(self._calls)

    def calls_to(self, method: str) -> list[SlackCall]:
        """The calls of one method, in arrival order."""
        return [call for call in self._calls if call.method == method]

    @property
    def responses(self) -> list[ResponsePost]:
        """Posts to response URLs so far, in arrival order (a copy)."""
        return list(self._responses)

    def message(self, channel: str, ts: str) -> SlackMessage | None:
        """The message at ``channel``/``ts`` as it stands now."""
        return self._messages.get((channel, ts))

    @property
    def messages(self) -> list[SlackMessage]:
        """Every message posted, in posting order."""
        return list(self._messages.values())

    async def wait_for(self, method: str, count: int = 1, timeout: float = 10.0) -> list[SlackCall]:
        """Wait until ``method`` has been called at least ``count`` times; return those calls."""
        async with asyncio.timeout(timeout):
            while len(self.calls_to(method)) < count:
                await self._changed.wait()
        return self.calls_to(method)

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until ``condition()`` holds, checking it after each call the sandbox takes."""
        async with asyncio.timeout(timeout):
            while not condition():
                await self._changed.wait()

    async def wait_for_response(
        self, key: str, count: int = 1, timeout: float = 10.0
    ) -> list[ResponsePost]:
        """Wait until ``count`` posts reached the response URL ``key``; return them."""

        def matching() -> list[ResponsePost]:
            return [post for post in self._responses if post.key == key]

        async with asyncio.timeout(timeout):
            while len(matching()) < count:
                await self._changed.wait()
        return matching()

    # --- programmable failures --------------------------------------------------------
    def fail(
        self, channel: str, error: str, *, status: int = 200, times: int | None = None
    ) -> None:
        """Answer posts to ``channel`` with ``{"ok": false, "error": error}`` (and ``status``)."""
        self._by_channel[channel] = Failure(error, status, None, times)

    def rate_limit(self, channel: str, retry_after: float = 30, times: int | None = None) -> None:
        """Answer posts to ``channel`` with 429 ``ratelimited`` and ``Retry-After``."""
        self._by_channel[channel] = Failure("ratelimited", 429, retry_after, times)

    def fail_method(
        self,
        method: str,
        status: int = 503,
        error: str = "service_unavailable",
        times: int | None = None,
    ) -> None:
        """Answer every call of ``method`` with ``status`` (a 5xx is a text body, as proxies
        send)."""
        self._by_method[method] = Failure(error, status, None, times)

    def hold_after_post(self, channel: str, seconds: float, times: int = 1) -> None:
        """Take the next ``times`` posts to ``channel`` (they are in the channel at once) but
        answer each only after ``seconds`` (or at :meth:`stop`): past the client's timeout,
        the poster cannot know the message was posted."""
        self._holds[channel] = [seconds, times]

    def messages_in(self, channel: str) -> list[SlackMessage]:
        """The messages of one conversation (a user's posts are in ``D`` + their id)."""
        return [m for m in self._messages.values() if m.channel == channel]

    def clear_failures(self) -> None:
        """Answer normally again."""
        self._by_channel.clear()
        self._by_method.clear()
        self._holds.clear()

    async def stop(self) -> None:
        """Release held answers, then stop listening."""
        self._released.set()
        await super().stop()

    # --- life cycle -------------------------------------------------------------------
    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_post("/response/{key}", self._response)

    # --- the server -------------------------------------------------------------------
    def _wake(self) -> None:
        # Wake every waiter, then arm a fresh event for the next arrival.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _response(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
        except ValueError:
            return web.Response(status=400, text="invalid_payload")
        self._responses.append(ResponsePost(request.match_info["key"], body))
        self._wake()
        return web.Response(text="ok")

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args = await call_arguments(request)
        auth = request.headers.get("Authorization", "")
        given = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""
        self._calls.append(SlackCall(method, args, bool(given)))
        try:
            response = self._handle(method, args, given)
        finally:
            self._wake()  # after the call took effect, so waiters see its result
        hold = self._holds.get(str(args.get("channel") or ""))
        if method == "chat.postMessage" and hold is not None and response.status == 200:
            hold[1] -= 1
            if hold[1] <= 0:
                del self._holds[str(args["channel"])]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), hold[0])
        return response

    def _handle(self, method: str, args: Mapping[str, Any], given: str) -> web.Response:
        failure = self._take(self._by_method, method)
        if failure is not None and failure.status >= 500:
            return web.Response(status=failure.status, text=failure.error)
        if failure is not None:
            return _error(failure)
        if not given:
            return web.json_response({"ok": False, "error": "not_authed"})
        if self._token is not None and given != self._token:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        if method not in METHODS:
            return web.json_response({"ok": False, "error": "unknown_method"}, status=404)
        channel = str(args.get("channel") or "")
        if channel and (failure := self._take(self._by_channel, channel)) is not None:
            if failure.status >= 500:
                return web.Response(status=failure.status, text=failure.error)
            return _error(failure)
        return web.json_response(self._answer(method, args))

    @staticmethod
    def _take(table: dict[str, Failure], key: str) -> Failure | None:
        failure = table.get(key)
        if failure is not None and failure.times is not None:
            failure.times -= 1
            if failure.times <= 0:
                del table[key]
        return failure

    def _answer(self, method: str, args: Mapping[str, Any]) -> dict[str, Any]:
        if method == "auth.test":
            return {
                "ok": True,
                "url": "https://sandbox.slack.test/",
                "team": "Sandbox",
                "user": "tocsin",
                "team_id": TEAM_ID,
                "user_id": BOT_USER_ID,
                "bot_id": "B0TOCSIN",
                "is_enterprise_install": False,
            }
        if method == "usergroups.users.list":
            group = str(args.get("usergroup") or "")
            if group not in self.groups:
                return {"ok": False, "error": "no_such_subteam"}
            return {"ok": True, "users": list(self.groups[group])}
        if method == "conversations.open":
            user = str(args.get("users") or "")
            if not user.startswith(("U", "W")):
                return {"ok": False, "error": "user_not_found"}
            return {"ok": True, "channel": {"id": "D" + user[1:]}}
        if method == "conversations.history":
            return self._history(args)
        if method == "views.open":
            if not args.get("trigger_id"):
                return {"ok": False, "error": "invalid_trigger_id"}
            if not isinstance(args.get("view"), Mapping):
                return {"ok": False, "error": "invalid_arguments"}
            return {"ok": True, "view": {**args["view"], "id": f"V{next(self._ts):08d}"}}
        channel = str(args.get("channel") or "")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        text, blocks = str(args.get("text") or ""), _blocks(args.get("blocks"))
        if not text and not blocks:
            return {"ok": False, "error": "no_text"}
        if _invalid(blocks):
            return {"ok": False, "error": "invalid_blocks"}
        if method == "chat.update":
            message = self._messages.get((channel, str(args.get("ts"))))
            if message is None:
                return {"ok": False, "error": "message_not_found"}
            message.text, message.blocks, message.updates = text, blocks, message.updates + 1
            return {"ok": True, "channel": channel, "ts": message.ts, "text": text}
        # Slack's ts is the posting time (seconds.microseconds), unique in the channel.
        ts = f"{int(time.time())}.{next(self._ts):06d}"
        if method == "chat.postEphemeral":
            return {"ok": True, "message_ts": ts}
        # A post to a user id lands in the DM with the bot, as on Slack.
        where = "D" + channel[1:] if channel.startswith(("U", "W")) else channel
        metadata = _json_value(args.get("metadata"))
        self._messages[(where, ts)] = SlackMessage(
            where, ts, text, blocks, metadata=metadata if isinstance(metadata, Mapping) else None
        )
        return {
            "ok": True,
            "channel": where,
            "ts": ts,
            "message": {"text": text, "blocks": blocks, "ts": ts},
        }

    def _history(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """Newest first, after ``oldest``, ``limit`` a page, metadata only when asked for."""
        channel = str(args.get("channel") or "")
        if not channel.startswith(("C", "G", "D")):
            return {"ok": False, "error": "channel_not_found"}
        oldest = float(str(args.get("oldest") or 0))
        limit = int(str(args.get("limit") or 100))
        start = int(str(args.get("cursor") or 0))
        with_metadata = str(args.get("include_all_metadata", "")).lower() in ("1", "true")
        found = sorted(
            (m for m in self._messages.values() if m.channel == channel and float(m.ts) > oldest),
            key=lambda m: float(m.ts),
            reverse=True,
        )
        page = found[start : start + limit]
        messages = []
        for m in page:
            item: dict[str, Any] = {"type": "message", "ts": m.ts, "text": m.text}
            if with_metadata and m.metadata is not None:
                item["metadata"] = dict(m.metadata)
            messages.append(item)
        more = start + limit < len(found)
        return {
            "ok": True,
            "messages": messages,
            "has_more": more,
            "response_metadata": {"next_cursor": str(start + limit) if more else ""},
        }


def _json_value(value: Any) -> Any:
    if isinstance(value, str):  # form-encoded calls carry objects as JSON strings
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def _error(failure: Failure) -> web.Response:
    headers = {"Retry-After": f"{failure.retry_after:g}"} if failure.retry_after is not None else {}
    return web.json_response(
        {"ok": False, "error": failure.error}, status=failure.status, headers=headers
    )


def _invalid(blocks: list[Any]) -> bool:
    """Slack's own limits: 50 blocks, section text under 3,000 characters, button text under
    76 and value under 2,001."""
    if len(blocks) > 50:
        return True
    for block in blocks:
        if not isinstance(block, Mapping) or "type" not in block:
            return True
        text = block.get("text")
        if block["type"] == "section" and (
            not isinstance(text, Mapping) or not 0 < len(str(text.get("text", ""))) <= 3000
        ):
            return True
        for element in block.get("elements", []) if block["type"] == "actions" else []:
            label = str((element.get("text") or {}).get("text", ""))
            if not 0 < len(label) <= 75 or len(str(element.get("value", ""))) > 2000:
                return True
    return False


def _blocks(value: Any) -> list[Any]:
    if isinstance(value, str):  # form-encoded calls carry blocks as a JSON string
        try:
            value = json.loads(value)
        except ValueError:
            return []
    return list(value) if isinstance(value, list) else []
