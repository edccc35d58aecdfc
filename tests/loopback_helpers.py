"""Helpers for tests that run real nodes on the loopback interface."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
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


LANCHAT = [sys.executable, "-m", "lanchat"]


def cli(*args: str, port: int, timeout: float = 30, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run the lanchat command (LANCHAT_INTERFACE is lo in tests) on a test port."""
    env = {**os.environ, "LANCHAT_PORT": str(port)}
    return subprocess.run(
        [*LANCHAT, *args], capture_output=True, text=True, timeout=timeout, env=env, **kw
    )


def start_listener(port: int, home: Path, nick: str = "lis") -> subprocess.Popen[str]:
    """`lanchat listen --json` on loopback, returned once it has said it started."""
    env = {**os.environ, "LANCHAT_PORT": str(port), "LANCHAT_HOME": str(home)}
    proc = subprocess.Popen(
        [*LANCHAT, "listen", "--json", "--nick", nick],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    started = json.loads(proc.stdout.readline())
    assert started["event"] == "started" and started["interfaces"] == ["lo"]
    return proc
