"""``server.event_loop`` and ``server.gc``: ``tocsin worker`` and ``tocsin serve`` run on
uvloop with the tuned garbage collector by default, on the standard library's loop and
CPython's collector settings when asked, and deliver every message once either way (counted at
the sink)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import load_settings
from bot.config_base import ConfigError
from bot.store.sqlite import SqliteStore
from tests.drills import Sink, WorkerProcess, fan_out, wait_until, write_config
from tests.drills.test_scheduler import ServeProcess, free_port, processes, serve_config

N = 300


async def _deliver(tmp_path: Path, command: str, loop: str | None) -> tuple[list[int], str]:
    """Commit ``N`` webhook deliveries, run ``command`` with ``server.event_loop: loop`` and
    ``server.gc: default`` (neither set when None) until the queue is empty; returns the ids
    the sink took and the log."""
    db = tmp_path / "queue.db"
    store = SqliteStore(str(db))
    await store.open()
    try:
        await store.migrate()
        with Sink() as sink:
            await store.commit(fan_out(sink.url, N))
            extra = {"server": {"event_loop": loop, "gc": "default"}} if loop else {}
            if command == "worker":
                process: WorkerProcess = WorkerProcess(
                    write_config(tmp_path, f"sqlite:///{db}", extra=extra), tmp_path / "w.log"
                )
                process.start()
            else:
                port = free_port()
                server: dict[str, str] = {"public_url": f"http://127.0.0.1:{port}"}
                if loop:
                    server.update(event_loop=loop, gc="default")
                config = serve_config(
                    tmp_path, f"sqlite:///{db}", port, "serve.yaml", {"server": server}
                )
                process = await ServeProcess(config, tmp_path / "s.log", port).start().ready()
            with processes(process):

                async def emptied() -> bool:
                    assert process.running(), process.log_tail()
                    return await store.pending_count() == 0

                await wait_until(emptied, f"{command} to deliver {N}", 60)
                assert process.stop() == 0, process.log_tail()
                log = process.log_path.read_text(encoding="utf-8")
                assert process.errors() == [], process.log_tail()
            seen = await sink.log()
    finally:
        await store.close()
    return seen.ids, log


@pytest.mark.parametrize(
    ("command", "setting", "runs_on", "collector"),
    [
        ("worker", None, "uvloop", "tuned (young generation every 50000 objects"),
        ("serve", None, "uvloop", "tuned (young generation every 50000 objects"),
        ("worker", "asyncio", "asyncio", "default (young generation every 700 objects)"),
        ("serve", "asyncio", "asyncio", "default (young generation every 700 objects)"),
    ],
)
async def test_the_process_runs_on_its_loop_and_collector_and_delivers_every_message_once(
    tmp_path: Path, command: str, setting: str | None, runs_on: str, collector: str
) -> None:
    ids, log = await _deliver(tmp_path, command, setting)
    assert f"event loop: {runs_on}" in log
    assert f"garbage collector: {collector}" in log
    assert len(set(ids)) == len(ids) == N


@pytest.mark.parametrize(("key", "value"), [("event_loop", "tokio"), ("gc", "off")])
def test_an_unknown_loop_or_collector_is_refused_with_the_key_named(
    tmp_path: Path, key: str, value: str
) -> None:
    config = tmp_path / "tocsin.yaml"
    config.write_text(f"server:\n  {key}: {value}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        load_settings(config)
    assert key in str(refused.value)


def test_without_uvloop_the_standard_loop_runs_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio
    import sys

    from bot.event_loop import loop_factory

    monkeypatch.setitem(sys.modules, "uvloop", None)  # as on a platform without it
    factory = loop_factory("uvloop")
    loop = factory()
    try:
        assert type(loop).__module__.startswith("asyncio")
    finally:
        loop.close()
    assert factory is asyncio.new_event_loop
    assert "uvloop, which is not installed: using asyncio" in caplog.text
