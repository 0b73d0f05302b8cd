"""``GET /metrics``: store gauges at scrape time, worker counters and histograms per app."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.domain.models import Attempt, Delivery, DeliveryState, Outcome
from bot.interfaces.metrics import METRICS, Metrics
from bot.ports import Changes
from bot.store.memory import MemoryStore
from tests import factories
from tests.interfaces.api_support import Api, auth, base_config
from tests.interfaces.web_support import log_in, running_web
from tocsin_sandbox.smtp import SandboxSmtp
from tocsin_sandbox.webhook_sink import WebhookSink

ORBIS = {"title": "Orbis indisponible", "systems": ["Orbis"], "severity": "critical"}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and sorted labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def scrape(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    api.client.app[METRICS].cache_seconds = 0  # these tests read the store at each scrape
    response = await api.client.get("/metrics", headers=auth("viewer"))
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return samples(await response.text())


async def test_gauges_read_the_store_at_scrape_time(monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_web(monkeypatch) as api:
        before = await scrape(api)
        assert before[("tocsin_queue_depth", ())] == 0
        response = await api.client.post("/api/v1/incidents", json=ORBIS, headers=auth("responder"))
        assert response.status == 201
        after = await scrape(api)
    assert after[("tocsin_queue_depth", ())] == 3
    assert after[("tocsin_deliveries", (("channel", "email"), ("state", "queued")))] == 2
    assert after[("tocsin_deliveries", (("channel", "webhook"), ("state", "queued")))] == 1
    assert after[("tocsin_incidents", (("status", "investigating"),))] == 1
    assert after[("tocsin_incidents", (("status", "draft"),))] == 0


async def test_worker_outcomes_attempts_and_latencies(monkeypatch: pytest.MonkeyPatch) -> None:
    async with SandboxSmtp() as smtp, WebhookSink() as sink:
        smtp.refuse("a.martin@example.org")  # a permanent failure for the member
        config = base_config(smtp_port=smtp.port, webhook_url=f"{sink.url}/hook")
        async with running_web(monkeypatch, config, with_worker=True) as api:
            dispatcher = api.runtime.dispatcher
            assert dispatcher is not None
            recorded: list[Outcome] = []
            all_recorded = asyncio.Event()

            def seen(delivery: Delivery, outcome: Outcome) -> None:
                recorded.append(outcome)
                if len(recorded) == 3:
                    all_recorded.set()

            dispatcher.observers.append(seen)
            response = await api.client.post(
                "/api/v1/incidents", json=ORBIS, headers=auth("responder")
            )
            assert response.status == 201
            await asyncio.wait_for(all_recorded.wait(), 10)
            found = await scrape(api)
    outcomes = "tocsin_delivery_outcomes_total"
    assert found[(outcomes, (("channel", "email"), ("state", "sent")))] == 1
    assert found[(outcomes, (("channel", "email"), ("state", "failed")))] == 1
    assert found[(outcomes, (("channel", "webhook"), ("state", "delivered")))] == 1
    attempts = "tocsin_delivery_attempts_total"
    assert found[(attempts, (("channel", "email"), ("outcome", "failed")))] == 1
    assert found[(attempts, (("channel", "webhook"), ("outcome", "delivered")))] == 1
    assert found[("tocsin_send_latency_seconds_count", (("channel", "email"),))] == 2
    assert found[("tocsin_delivery_latency_seconds_count", (("channel", "email"),))] == 1
    assert found[("tocsin_delivery_latency_seconds_count", (("channel", "webhook"),))] == 1
    assert found[("tocsin_queue_depth", ())] == 0
    assert found[("tocsin_deliveries", (("channel", "email"), ("state", "failed")))] == 1
    assert found[("tocsin_rate_limit_wait_seconds_total", ())] >= 0
    assert found[("tocsin_worker_alive_timestamp_seconds", ())] > 0


async def test_retries_and_latency_buckets_from_one_outcome() -> None:
    store = MemoryStore()
    stmt = factories.statement()
    await store.commit(Changes(statements=[stmt], deliveries=[factories.new_delivery(stmt)]))
    (claimed,) = await store.claim_due("w", factories.T0, 60, 10)
    metrics = Metrics()
    later = factories.T0 + timedelta(seconds=3)
    metrics.observe(
        claimed,
        Outcome(
            claimed.id,
            DeliveryState.RETRYING,
            (Attempt(claimed.id, later, "retry", error="451 try later"),),
            next_attempt_at=later,
        ),
    )
    value = metrics.registry.get_sample_value
    assert value("tocsin_delivery_attempts_total", {"channel": "email", "outcome": "retry"}) == 1
    assert value("tocsin_delivery_outcomes_total", {"channel": "email", "state": "retrying"}) == 1
    assert value("tocsin_send_latency_seconds_bucket", {"channel": "email", "le": "2.5"}) == 0
    assert value("tocsin_send_latency_seconds_bucket", {"channel": "email", "le": "5.0"}) == 1
    assert value("tocsin_delivery_latency_seconds_count", {"channel": "email"}) is None


async def test_each_app_has_its_own_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_web(monkeypatch) as first, running_web(monkeypatch) as second:
        response = await first.client.post(
            "/api/v1/incidents", json=ORBIS, headers=auth("responder")
        )
        assert response.status == 201
        assert (await scrape(first))[("tocsin_queue_depth", ())] == 3
        assert (await scrape(second))[("tocsin_queue_depth", ())] == 0


async def test_provider_health_is_a_gauge_and_on_the_dashboard(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running_web(monkeypatch) as api:
        store = api.runtime.store
        await store.save_health("smtp:127.0.0.1:25", "down", factories.T0, "connection refused")
        await store.save_health("slack", "up", factories.T0, None)
        scraped = await scrape(api)
        # The provider, not its internal host and port.
        assert scraped[("tocsin_provider_up", (("provider", "smtp"),))] == 0
        assert not any("127.0.0.1" in dict(labels).get("provider", "") for _, labels in scraped)
        assert scraped[("tocsin_provider_up", (("provider", "slack"),))] == 1
        await log_in(api.client, "viewer")
        home = await (await api.client.get("/")).text()
        row = home[home.index('data-provider="smtp:127.0.0.1:25"') :]
        assert ">down<" in row[: row.index("</tr>")]
        assert "connection refused" in row[: row.index("</tr>")]
