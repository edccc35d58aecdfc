"""Shared fixtures. Every test runs with its own app directory, and anything that
reads LANCHAT_INTERFACE is pinned to loopback, so nothing leaves this machine."""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.loopback_helpers import start_listener

pytest_plugins = ["tests.lab_fixtures"]


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("LANCHAT_HOME", str(tmp_path / "lanchat-home"))
    monkeypatch.setenv("LANCHAT_INTERFACE", "lo")
    for name in ("LANCHAT_GROUP", "LANCHAT_PORT", "LANCHAT_NICK", "LANCHAT_TTL"):
        monkeypatch.delenv(name, raising=False)
    yield


@pytest.fixture
def lo_port() -> int:
    """A group port of its own, so concurrent test runs on this host never hear each other."""
    return random.Random(os.getpid() ^ random.getrandbits(32)).randrange(20000, 32000)


@pytest.fixture
def listener(lo_port: int, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A `lanchat listen --json` (nick "lis") on loopback and the test's port."""
    proc = start_listener(lo_port, tmp_path / "lis")
    yield proc
    if proc.poll() is None:
        proc.terminate()
    proc.communicate(timeout=5)
