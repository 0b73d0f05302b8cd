"""An in-process Channel for engine tests: records sends, answers as scripted."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from bot.domain.models import ChannelName, DeliveryState
from bot.ports import ALL_KEYS, OutboundMessage, Receipt

Script = Callable[[OutboundMessage], Receipt]


class RecordingChannel:
    """Sends nowhere; keeps (monotonic time, message) and raises what it is told to."""

    rate = 1000.0
    burst = 1000
    destination_rate: float | None = None
    destination_burst = 1
    keys = ALL_KEYS  # keeps every message whole, as an adapter that reads them all

    def __init__(
        self,
        name: ChannelName,
        *,
        rate: float | None = None,
        destination_rate: float | None = None,
        destination_burst: int = 1,
    ) -> None:
        self.name = name
        if rate is not None:
            self.rate, self.burst = rate, 1
        self.destination_rate = destination_rate
        self.destination_burst = destination_burst
        self.sent: list[tuple[float, OutboundMessage]] = []
        self.script: deque[BaseException | Receipt] = deque()
        self.per_address: dict[str, deque[BaseException | Receipt]] = {}
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()

    def provider_key(self, address: str) -> str:
        return self.name.value

    async def send(self, message: OutboundMessage) -> Receipt:
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        queue = self.per_address.get(message.address) or self.script
        answer = (
            queue.popleft()
            if queue
            else Receipt(f"{self.name.value}-{message.delivery_id}", DeliveryState.DELIVERED)
        )
        if isinstance(answer, BaseException):
            raise answer
        self.sent.append((time.monotonic(), message))
        return answer

    async def close(self) -> None:
        return None
