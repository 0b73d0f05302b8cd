"""The scheduler runs its jobs only while it leads: of two schedulers on one store, one works,
the other stands by and takes over when the first stops."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from bot.delivery.scheduler import Scheduler
from bot.domain.clock import FakeClock
from bot.store.memory import MemoryStore


async def until(fact: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not fact():
            await asyncio.sleep(0.01)  # polling the schedulers' counters


async def test_one_of_two_schedulers_works_and_the_other_takes_over() -> None:
    store, clock = MemoryStore(), FakeClock()
    runs = {"a": 0, "b": 0}
    schedulers = {name: Scheduler(store, clock) for name in runs}
    for name, scheduler in schedulers.items():

        async def job(name: str = name) -> None:
            runs[name] += 1

        scheduler.add("count", 0.02, job)
    stops = {name: asyncio.Event() for name in runs}
    first = asyncio.create_task(schedulers["a"].run(stops["a"]))
    await until(lambda: runs["a"] >= 2)
    second = asyncio.create_task(schedulers["b"].run(stops["b"]))
    await until(lambda: runs["a"] >= 6)
    assert runs["b"] == 0 and not schedulers["b"].leading

    stops["a"].set()
    await first  # an orderly stop gives the lead up at once
    await until(lambda: runs["b"] >= 2)
    assert schedulers["b"].leading
    stops["b"].set()
    await second


async def test_a_failing_job_does_not_stop_the_others() -> None:
    scheduler = Scheduler(MemoryStore(), FakeClock())
    done = []

    async def failing() -> None:
        raise RuntimeError("database away")

    async def working() -> None:
        done.append(1)

    scheduler.add("failing", 0.02, failing)
    scheduler.add("working", 0.02, working)
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    await until(lambda: len(done) >= 3)
    stop.set()
    await task
