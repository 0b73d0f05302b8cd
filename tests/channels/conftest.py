"""Fixtures the channel tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """One shared client session, as a process's channels use."""
    async with aiohttp.ClientSession() as shared:
        yield shared
