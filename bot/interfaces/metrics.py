"""``GET /metrics``: Prometheus metrics of the delivery engine, one registry per application.

Counters and histograms are fed by the dispatcher's observer (outcomes this process recorded);
gauges (deliveries by channel and state of the open incidents, queue depth) are read from the
store at scrape time, so they are right whichever process did the work.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from bot.delivery.worker import Dispatcher
from bot.domain.models import Delivery, DeliveryState, IncidentStatus, Outcome, Role
from bot.domain.queries import IncidentQueries
from bot.interfaces import http_api
from bot.interfaces.deps import QUERIES, SETTINGS

# Incidents scanned at scrape time for the per-state gauge: the open ones among the latest.
SCANNED_INCIDENTS = 100
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
_SUCCESS = frozenset({DeliveryState.SENT, DeliveryState.DELIVERED})


@dataclass
class StoreSnapshot:
    """What the last scrape read from the store."""

    deliveries: Mapping[tuple[str, str], int] = field(default_factory=dict)
    incidents: Mapping[str, int] = field(default_factory=dict)
    queue_depth: int = 0
    providers: dict[str, str] = field(default_factory=dict)


class _LiveCollector(Collector):
    """Values read at collection time: the store snapshot and the dispatcher's counters."""

    def __init__(self) -> None:
        self.snapshot = StoreSnapshot()
        self.dispatcher: Dispatcher | None = None

    def collect(self) -> Iterable[Metric]:
        deliveries = GaugeMetricFamily(
            "tocsin_deliveries",
            "Deliveries of the open incidents, by channel and state.",
            labels=["channel", "state"],
        )
        for (channel, state), count in sorted(self.snapshot.deliveries.items()):
            deliveries.add_metric([channel, state], count)
        yield deliveries
        incidents = GaugeMetricFamily(
            "tocsin_incidents",
            f"Incidents among the latest {SCANNED_INCIDENTS}, by status.",
            labels=["status"],
        )
        for status in IncidentStatus:
            incidents.add_metric([status.value], self.snapshot.incidents.get(status.value, 0))
        yield incidents
        health = GaugeMetricFamily(
            "tocsin_provider_up",
            "1 while a provider answers, 0 while its circuit breaker is open or probing.",
            labels=["provider"],
        )
        for provider, state in sorted(self.snapshot.providers.items()):
            health.add_metric([provider], 1.0 if state == "up" else 0.0)
        yield health
        yield GaugeMetricFamily(
            "tocsin_queue_depth",
            "Deliveries queued, sending or retrying (all incidents).",
            value=self.snapshot.queue_depth,
        )
        if self.dispatcher is not None:
            yield CounterMetricFamily(
                "tocsin_rate_limit_wait_seconds",
                "Seconds the worker held sends back to honour rate limits and Retry-After.",
                value=self.dispatcher.limiter.waited_seconds,
            )
            alive = self.dispatcher.alive_at
            yield GaugeMetricFamily(
                "tocsin_worker_alive_timestamp_seconds",
                "When the worker loop last turned (Unix time).",
                value=alive.timestamp() if alive is not None else 0.0,
            )


class Metrics:
    """The metrics of one application (its own registry, so that tests can build several)."""

    # A scrape reads the store (one query per open incident) at most this often.
    cache_seconds = 5.0

    def __init__(self) -> None:
        self.refreshed_at = -float("inf")
        self.registry = CollectorRegistry(auto_describe=True)
        self.outcomes = Counter(
            "tocsin_delivery_outcomes",
            "Outcomes the worker recorded, by channel and resulting state.",
            ["channel", "state"],
            registry=self.registry,
        )
        self.attempts = Counter(
            "tocsin_delivery_attempts",
            "Attempts to send, by channel and outcome (sent, delivered, retry, failed, ...).",
            ["channel", "outcome"],
            registry=self.registry,
        )
        self.send_latency = Histogram(
            "tocsin_send_latency_seconds",
            "From claiming a delivery to the provider's answer (retries and waits included).",
            ["channel"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.delivery_latency = Histogram(
            "tocsin_delivery_latency_seconds",
            "From queueing a delivery to the provider accepting it.",
            ["channel"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.live = _LiveCollector()
        self.registry.register(self.live)

    def observe(self, delivery: Delivery, outcome: Outcome) -> None:
        """Dispatcher observer: called after each outcome is committed."""
        channel = delivery.channel.value
        self.outcomes.labels(channel, outcome.state.value).inc()
        for attempt in outcome.attempts:
            self.attempts.labels(channel, attempt.outcome).inc()
        if not outcome.attempts:
            return
        answered = outcome.attempts[-1].at
        if delivery.updated_at is not None:
            # A claimed delivery's updated_at is the moment it was claimed.
            seconds = (answered - delivery.updated_at).total_seconds()
            self.send_latency.labels(channel).observe(max(seconds, 0.0))
        if outcome.state in _SUCCESS and delivery.created_at is not None:
            seconds = (answered - delivery.created_at).total_seconds()
            self.delivery_latency.labels(channel).observe(max(seconds, 0.0))

    def watch(self, dispatcher: Dispatcher) -> None:
        """Follow a dispatcher's outcomes and counters."""
        self.live.dispatcher = dispatcher
        if self.observe not in dispatcher.observers:
            dispatcher.observers.append(self.observe)

    async def refresh(self, queries: IncidentQueries) -> None:
        """Read the gauges' values from the store."""
        totals = await queries.totals(SCANNED_INCIDENTS)
        self.live.snapshot = StoreSnapshot(
            totals.deliveries, totals.incidents, totals.queue_depth, totals.providers
        )


METRICS = web.AppKey("metrics", Metrics)


async def metrics_endpoint(request: web.Request) -> web.Response:
    """Prometheus text exposition: a ``metrics`` (or viewer) token, unless
    ``server.metrics_public``; the store is read at most every ``cache_seconds``."""
    if not request.app[SETTINGS].server.metrics_public:
        http_api.authorise(request, Role.METRICS)  # 401/403/429 from the error middleware
    metrics = request.app[METRICS]
    if time.monotonic() - metrics.refreshed_at >= metrics.cache_seconds:
        await metrics.refresh(request.app[QUERIES])
        metrics.refreshed_at = time.monotonic()
    return web.Response(
        body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


def add_routes(app: web.Application) -> None:
    """Mount ``GET /metrics`` with this application's own registry."""
    app[METRICS] = Metrics()
    app.router.add_get("/metrics", metrics_endpoint)


def setup(app: web.Application, dispatcher: Dispatcher | None) -> None:
    """Follow this process's worker, when it runs one."""
    if dispatcher is not None and METRICS in app:
        app[METRICS].watch(dispatcher)
