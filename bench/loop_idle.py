"""Where the worker's event loop waits during the fan-out of ``bench/fanout.py``.

Times every ``select()`` of the loop while the worker runs, by what the worker was doing:
``writing`` (a batch of outcomes is being committed, no send can start), ``claiming`` (a claim
is under way), ``sending`` (sends in flight, neither of the above). One line per run::

    loop_idle: n=… tocsin_per_s=… wall_us=… writing_us=… claiming_us=… sending_us=… \
wakeups_per_write=… selects_per_delivery=…/… events_per_select=…/…

Each ``*_us`` is microseconds of waiting per delivery; ``wakeups_per_write`` is how many times
the loop woke up while one batch of outcomes was written (each answer from aiosqlite's thread
wakes it). ``selects_per_delivery`` and ``events_per_select`` count the loop's iterations
(calls of ``select()``) and the sockets each found ready, for Tocsin and then for the raw loop
of ``fanout.py`` (run just before it, against the same sink): a loop that keeps up with its
answers iterates once per answer or two, one that runs behind takes many per iteration. The
timing wraps the selector, so the rates are a little below ``fanout.py``'s.
"""

from __future__ import annotations

import argparse
import asyncio
import selectors
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fanout import CONCURRENCY, bench_raw, bench_tocsin, sink_process

from bot.collector import tune
from bot.delivery.worker import Dispatcher

_worker: list[Dispatcher] = []
_claiming = [False]
_waited: Counter[str] = Counter()
_wakeups: Counter[str] = Counter()
_writes = [0]
_selects: Counter[str] = Counter()  # "calls" and "events", whichever loop is running


def _state(worker: Dispatcher) -> str:
    if worker.queue._writing:  # outcomes in the write under way (an instrument may peek)
        return "writing"
    if _claiming[0]:
        return "claiming"
    return "sending"


def _timed_select(select: Callable[..., Any]) -> Callable[..., Any]:
    def timed(self: selectors.BaseSelector, timeout: float | None = None) -> Any:
        started = time.perf_counter()
        ready = select(self, timeout)
        _selects["calls"] += 1
        _selects["events"] += len(ready)
        if _worker:
            state = _state(_worker[0])
            _waited[state] += time.perf_counter() - started
            _wakeups[state] += 1
        return ready

    return timed


def _instrument() -> None:
    selector = type(selectors.DefaultSelector())
    selector.select = _timed_select(selector.select)  # type: ignore[method-assign]
    run, claim, flush = Dispatcher.run, Dispatcher._claim_and_start, Dispatcher.flush

    async def running(self: Dispatcher, stop: asyncio.Event) -> None:
        _worker.append(self)
        try:
            await run(self, stop)
        finally:
            _worker.remove(self)

    async def claiming(self: Dispatcher) -> int:
        _claiming[0] = True
        try:
            return await claim(self)
        finally:
            _claiming[0] = False

    async def flushing(self: Dispatcher) -> None:
        _writes[0] += self.queue.has_outcomes
        await flush(self)

    patches: dict[str, Callable[..., Awaitable[Any]]] = {
        "run": running,
        "_claim_and_start": claiming,
        "flush": flushing,
    }
    for name, patched in patches.items():
        setattr(Dispatcher, name, patched)


def _loop_counts(n: int) -> tuple[float, float]:
    """Selects per delivery and ready sockets per select since the last call."""
    calls, events = _selects["calls"], _selects["events"]
    _selects.clear()
    return calls / n, events / max(1, calls)


async def main(n: int, runs: int) -> None:
    with sink_process() as url:
        for _ in range(runs):
            _waited.clear()
            _wakeups.clear()
            _writes[0] = 0
            _selects.clear()
            await bench_raw(url, n, CONCURRENCY)
            raw_selects, raw_events = _loop_counts(n)
            rate = await bench_tocsin(url, n, CONCURRENCY)
            selects, events = _loop_counts(n)
            figures = [f"n={n}", f"tocsin_per_s={rate:.0f}", f"wall_us={1e6 / rate:.0f}"]
            for state in ("writing", "claiming", "sending"):
                figures.append(f"{state}_us={_waited[state] / n * 1e6:.1f}")
            figures.append(f"wakeups_per_write={_wakeups['writing'] / max(1, _writes[0]):.1f}")
            figures.append(f"selects_per_delivery={selects:.2f}/{raw_selects:.2f}")
            figures.append(f"events_per_select={events:.1f}/{raw_events:.1f}")
            print(f"loop_idle: {' '.join(figures)}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    tune("tuned")
    _instrument()
    asyncio.run(main(args.n, args.runs))
