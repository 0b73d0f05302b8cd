"""A send that hangs, in a real ``tocsin worker``: it holds neither the other outcomes nor
their send slots. SQLite and PostgreSQL, real HTTP."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from bot.domain.models import DeliveryState
from bot.ports import Store
from tests.drills import WorkerProcess, fan_out, wait_until, write_config
from tests.drills.test_fencing import HoldingProvider

INCIDENT = "INC-2023-0830-01"


async def test_a_hanging_send_holds_neither_the_other_outcomes_nor_their_slots(
    tmp_path: Path, storage_url: str, store: Store
) -> None:
    """Five send slots, 20 webhooks; the provider leaves the first request unanswered. The
    other 19 go through the four slots left and are recorded while it hangs, though the
    worker polls only once a minute; answered at last, the first is recorded too. Each
    delivery reached the provider once and has one attempt."""
    deliveries = 20
    async with HoldingProvider(hold=1) as provider:
        await store.commit(fan_out(provider.url, deliveries))
        config = write_config(
            tmp_path,
            storage_url,
            lease_seconds=60,
            concurrency=5,
            poll_interval=60,
            extra={
                "channels": {
                    "webhook": {
                        "timeout": 60,
                        "limits": {"unlimited_destinations": True, "rate": 100000, "burst": 100000},
                    }
                }
            },
        )
        worker = WorkerProcess(config, tmp_path / "worker.log").start()
        try:

            def pending(n: int) -> Callable[[], Awaitable[bool]]:
                async def check() -> bool:
                    assert worker.running(), worker.log_tail()
                    return await store.pending_count(INCIDENT) == n

                return check

            await wait_until(pending(1), "the 19 other deliveries to be recorded", 20)
            rows = await store.deliveries(INCIDENT)
            [hanging] = [d for d in rows if d.state != DeliveryState.DELIVERED]
            assert hanging.id == provider.arrived[0] and hanging.state == DeliveryState.SENDING
            provider.release()
            await wait_until(pending(0), "the answered delivery to be recorded", 20)
            assert worker.stop() == 0, worker.log_tail()
        finally:
            worker.close()
    rows = await store.deliveries(INCIDENT)
    assert sorted(provider.arrived) == sorted(d.id for d in rows)  # each once
    assert {(d.state, d.attempts) for d in rows} == {(DeliveryState.DELIVERED, 1)}
    assert worker.errors() == [], worker.log_tail()
