"""Helpers for tests that run real nodes on the loopback interface."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import lanchat


def node(name: str, port: int, **kwargs: Any) -> lanchat.Node:
    """A node pinned to the loopback interface and a test's own port."""
    return lanchat.Node(name, interfaces=["lo"], port=port, **kwargs)


async def until(predicate: Callable[[], Any], timeout: float = 3.0) -> None:
    """Wait (polling every 5 ms) until predicate() holds; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)
