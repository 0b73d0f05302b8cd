"""The garbage collector of a long-running process (``server.gc``).

CPython collects its youngest generation every 700 new container objects. Sending a
delivery makes dozens (rows, records, the message, aiohttp's request and response, tasks
and futures), nearly all freed at once by reference counting: with the standard threshold
the collector ran 918 times during a 10,000-delivery fan-out, once every 11 deliveries, each
time walking whatever happened to be alive. ``tuned`` (the default) first collects, then
freezes what start-up built (modules, settings, templates: never garbage, never walked
again) and collects the youngest generation every 50,000 new objects instead. Cyclic garbage
waits a little longer to be freed; memory stays flat (``bench/million.py`` reports the
workers' peak RSS). ``default`` leaves CPython's settings as they are.
"""

from __future__ import annotations

import gc
import logging
from typing import Literal

CollectorMode = Literal["tuned", "default"]
YOUNG_THRESHOLD = 50_000

log = logging.getLogger("tocsin.app")


def tune(mode: CollectorMode) -> str:
    """Set the collector of this process for ``mode``; returns what it now does (logged)."""
    if mode == "tuned":
        gc.collect()
        gc.freeze()
        _, middle, old = gc.get_threshold()
        gc.set_threshold(YOUNG_THRESHOLD, middle, old)
        # Said from what the collector now reports, not from what was asked of it.
        said = (
            f"tuned (young generation every {gc.get_threshold()[0]} objects, "
            f"{gc.get_freeze_count()} start-up objects frozen)"
        )
    else:
        said = f"default (young generation every {gc.get_threshold()[0]} objects)"
    log.info("garbage collector: %s", said)
    return said
