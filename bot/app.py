"""Composition root: settings → store, renderer, services, channels, worker, aiohttp app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bot.config import Settings
from bot.delivery.ratelimit import RateLimiter
from bot.delivery.retry import RetryPolicy
from bot.delivery.scheduler import Scheduler, add_incident_checks
from bot.delivery.worker import DispatchConfig, Dispatcher
from bot.domain.access import Authenticator, ChatPrincipal, TokenPrincipal
from bot.domain.ack_tokens import AckKeys
from bot.domain.audiences import Audience, Person, Target
from bot.domain.clock import SystemClock
from bot.domain.masking import set_region
from bot.domain.models import Actor, ChannelName, Role
from bot.domain.queries import IncidentQueries
from bot.domain.rendering import StatementRenderer
from bot.domain.services import IncidentService, OrganisationInfo
from bot.interfaces import deps
from bot.interfaces.deps import ChatDeps
from bot.ports import Channel, Clock, Store
from bot.runtime import Runtime
from bot.store import open_store

log = logging.getLogger("tocsin.app")


def audiences_from(settings: Settings) -> dict[str, Audience]:
    """The configured audiences as domain objects."""
    audiences: dict[str, Audience] = {}
    for name, cfg in settings.audiences.items():
        audiences[name] = Audience(
            name=name,
            kind=cfg.statement,
            targets=tuple(Target(d.channel, d.address, d.name, d.locale) for d in cfg.destinations),
            members=tuple(
                Person(m.name, m.contacts(), m.site, m.locale, m.deputy) for m in cfg.members
            ),
            policy=cfg.policy.to_domain(cfg.statement),
            urgent=(
                cfg.priority == "urgent"
                if cfg.priority is not None
                else (True if name == settings.reminders.audience else None)
            ),
        )
    return audiences


def build_renderer(settings: Settings) -> StatementRenderer:
    """The statement renderer over the packaged templates (or ``templates_dir``)."""
    folder = settings.resolve_path(settings.templates_dir) if settings.templates_dir else None
    max_segments = settings.channels.sms.max_segments if settings.channels.sms else 2
    return _renderer(folder, settings.organisation.timezone, max_segments)


@lru_cache(maxsize=8)
def _renderer(folder: Path | None, timezone: str, max_segments: int) -> StatementRenderer:
    # Compiling every template takes about a second; a process keeps one renderer per shape
    # (Jinja still reloads a template whose file changed).
    return StatementRenderer(folder, timezone=timezone, sms_max_segments=max_segments)


def build_service(
    settings: Settings, store: Store, renderer: StatementRenderer, clock: Clock
) -> IncidentService:
    """The domain services, wired to this configuration."""
    org = settings.organisation
    set_region(org.phone_region)  # how masking reads national numbers (06 12 34 56 78)
    return IncidentService(
        store,
        renderer,
        clock,
        OrganisationInfo(org.name, org.locale, org.locales, org.timezone),
        audiences_from(settings),
        settings.default_audiences,
        usable_channels=frozenset(settings.channels.configured()),
        tokens=ack_keys(settings),
    )


def build_authenticator(settings: Settings) -> Authenticator:
    """Who may call, from ``auth``: each token's secret read from its environment variable."""
    tokens = []
    for entry in settings.auth.tokens:
        secret = settings.secret(entry.token_env, required=False)
        value = secret.get_secret_value() if secret is not None else ""
        tokens.append(TokenPrincipal(entry.name, value, entry.role, entry.person))
    return Authenticator(
        tokens,
        {k: ChatPrincipal(u.role, u.person) for k, u in settings.auth.slack_users.items()},
        {k: ChatPrincipal(u.role, u.person) for k, u in settings.auth.telegram_users.items()},
    )


def ack_keys(settings: Settings) -> AckKeys:
    """The deployment's token keys, from ``auth.secret_key_env``. Without that variable the
    tokens are derived from the database alone (a copy of it could then acknowledge)."""
    secret = settings.secret(settings.auth.secret_key_env, required=False)
    key = secret.get_secret_value().encode() if secret is not None else b""
    if not key:
        log.info(
            "%s is not set: acknowledgement links are not protected against a copy of the database",
            settings.auth.secret_key_env,
        )
    return AckKeys(key, timedelta(seconds=settings.delivery.ack_ttl))


# The whole runtime, for the entry points (CLI, demo) and tests; no interface reads it.
RUNTIME = web.AppKey("runtime", Runtime)

ChannelFactory = Callable[[Settings, aiohttp.ClientSession], dict[ChannelName, Channel]]


@asynccontextmanager
async def open_runtime(
    settings: Settings,
    *,
    clock: Clock | None = None,
    store: Store | None = None,
    with_channels: bool = True,
    with_worker: bool = False,
    with_scheduler: bool = False,
    channel_factory: ChannelFactory | None = None,
) -> AsyncIterator[Runtime]:
    """Open the store (migrating it), the shared HTTP session, the channels and the worker."""
    clock = clock or SystemClock()
    store = store or open_store(settings.database_url)
    await store.open()
    renderer = build_renderer(settings)
    runtime = Runtime(
        settings=settings,
        store=store,
        renderer=renderer,
        clock=clock,
        service=build_service(settings, store, renderer, clock),
        queries=IncidentQueries(store),
        auth=build_authenticator(settings),
    )
    try:
        await store.migrate()
        if with_channels or with_worker:
            runtime.session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=30),
                connector=aiohttp.TCPConnector(limit=settings.delivery.concurrency * 2),
            )
            if channel_factory is None:
                from bot.channels.registry import build_channels

                channel_factory = build_channels
            runtime.channels = channel_factory(settings, runtime.session)
        if with_worker:
            runtime.dispatcher = build_dispatcher(runtime)
            runtime.worker_task = asyncio.create_task(runtime.dispatcher.run(runtime.stop))
        if with_scheduler:
            reminders = settings.reminders
            runtime.scheduler = Scheduler(store, clock)
            add_incident_checks(
                runtime.scheduler,
                runtime.service,
                reminders.cadence,
                reminders.audience,
                reminders.check_every,
            )
            runtime.scheduler_task = asyncio.create_task(runtime.scheduler.run(runtime.stop))
        yield runtime
    finally:
        runtime.stop.set()
        for task in (runtime.worker_task, runtime.scheduler_task):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for channel in runtime.channels.values():
            with contextlib.suppress(Exception):
                await channel.close()
        if runtime.session is not None:
            await runtime.session.close()
        await store.close()


def build_dispatcher(runtime: Runtime) -> Dispatcher:
    """A worker over the runtime's store and channels."""
    cfg = runtime.settings.delivery
    dispatcher = Dispatcher(
        runtime.store,
        runtime.channels,
        runtime.clock,
        public_url=runtime.settings.server.public_url,
        config=DispatchConfig(
            lease_seconds=cfg.lease_seconds,
            concurrency=cfg.concurrency,
            batch_size=cfg.batch_size,
            poll_interval=cfg.poll_interval,
            shutdown_timeout=cfg.shutdown_timeout,
        ),
        retry=RetryPolicy(
            max_attempts=cfg.max_attempts,
            backoff_base=cfg.backoff_base,
            backoff_max=cfg.backoff_max,
        ),
        # Every worker of the deployment shares each provider's and destination's budget.
        limiter=RateLimiter(clock=runtime.clock.timestamp, shared=runtime.store),
        tokens=runtime.service.tokens,
    )
    system = Actor("tocsin", Role.ADMIN)

    async def note(incident_id: str, action: str, detail: dict[str, Any]) -> None:
        await runtime.service.note(system, incident_id, action, detail)

    dispatcher.timeline_note = note
    return dispatcher


def build_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    store: Store | None = None,
    with_worker: bool = True,
    with_scheduler: bool = False,
    channel_factory: ChannelFactory | None = None,
    telegram_polling: bool = False,
) -> web.Application:
    """The aiohttp application: API, webhooks, dashboard, status page, the worker, and (in
    ``tocsin serve``) the scheduler of periodic work, run by one ``serve`` per deployment.
    ``telegram_polling`` polls the Bot API instead of taking its webhook (development)."""
    # Imported here: the CLI's other commands open a runtime without serving HTTP, and each
    # chat interface only where its channel is configured (python-telegram-bot and
    # slack-bolt take a noticeable part of a second to import).
    from bot.interfaces import alerts, http_api, metrics, status_page
    from bot.interfaces import web as dashboard

    app = web.Application(client_max_size=1024 * 1024, middlewares=http_api.middlewares())

    async def runtime_ctx(app: web.Application) -> AsyncIterator[None]:
        async with open_runtime(
            settings,
            clock=clock,
            store=store,
            with_worker=with_worker,
            with_scheduler=with_scheduler,
            channel_factory=channel_factory,
        ) as runtime:
            app[RUNTIME] = runtime
            provide(app, runtime)
            await _start_inbound(app, runtime, telegram_polling=telegram_polling)
            yield

    app.cleanup_ctx.append(runtime_ctx)
    http_api.add_routes(app)
    status_page.add_routes(app)
    alerts.add_routes(app)
    metrics.add_routes(app)
    dashboard.add_routes(app)
    if settings.channels.slack is not None:
        from bot.interfaces import slack_app

        slack_app.add_routes(app)
    if settings.channels.telegram is not None:
        from bot.interfaces import telegram_bot

        telegram_bot.add_routes(app)
    if settings.channels.sms is not None:
        from bot.interfaces import sms_callbacks

        sms_callbacks.add_routes(app)
    return app


def provide(app: web.Application, runtime: Runtime) -> None:
    """Hand the interfaces the collaborators their handlers use (see :mod:`bot.interfaces.deps`)."""
    app[deps.SETTINGS] = runtime.settings
    app[deps.SERVICE] = runtime.service
    app[deps.QUERIES] = runtime.queries
    app[deps.AUTH] = runtime.auth
    app[deps.CLOCK] = runtime.clock
    app[deps.RECORDS] = runtime.store
    app[deps.CHANNEL_NAMES] = frozenset(c.value for c in runtime.channels)
    app[deps.STARTED_AT] = runtime.started_at
    app[deps.WORKER_ALIVE] = runtime.worker_alive


async def _start_inbound(app: web.Application, runtime: Runtime, *, telegram_polling: bool) -> None:
    """Start the interfaces that run alongside the server: the worker's observers, the Slack
    bolt app and the Telegram application (over the runtime's shared HTTP session)."""
    from bot.interfaces import metrics
    from bot.interfaces import web as dashboard

    metrics.setup(app, runtime.dispatcher)
    dashboard.setup(app, runtime.dispatcher)
    settings = runtime.settings
    if settings.channels.slack is not None:
        from bot.interfaces import slack_app

        slack_app.setup(
            app,
            chat(runtime),
            progress_store=runtime.store,
            scheduler=runtime.scheduler,
        )
    if settings.channels.telegram is not None:
        from bot.interfaces import telegram_bot

        await telegram_bot.setup(app, chat(runtime), polling=telegram_polling)


def chat(runtime: Runtime) -> ChatDeps:
    """What the chat interfaces (Slack, Telegram) use."""
    if runtime.session is None:
        raise RuntimeError("the chat interfaces need the runtime's shared HTTP session")
    return ChatDeps(
        settings=runtime.settings,
        service=runtime.service,
        auth=runtime.auth,
        clock=runtime.clock,
        session=runtime.session,
    )
