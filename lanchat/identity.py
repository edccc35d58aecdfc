"""Stable peer ids: the same per user and host across restarts, distinct per running process.

The user's app directory holds a random base id. Each running process takes
the lowest free *slot* (an flock'ed file, released by the kernel even on
kill -9), and its peer id is a hash of (base id, host name, slot). So a
restarted `lanchat join` gets the same id again and replaces its old entry,
while a second process running beside it gets another id instead of fighting
over one. Including the host name keeps two machines apart when a home
directory (and so the base id) is shared over the network.
"""

from __future__ import annotations

import hashlib
import os
import random
import secrets
import sys
import time
from pathlib import Path
from typing import IO, Final

from lanchat.core import Identity

# Concurrent lanchat processes of one user on one host; more share random ids.
_MAX_SLOTS: Final = 64


def app_dir() -> Path:
    """lanchat's per-user directory (LANCHAT_HOME overrides the platform default)."""
    override = os.environ.get("LANCHAT_HOME")
    return Path(override) if override else _platform_app_dir()


def _platform_app_dir() -> Path:
    """The platform's per-user config directory, as click.get_app_dir("lanchat") names it
    (without importing click, which only the CLI loads)."""
    if sys.platform.startswith("win"):
        appdata = os.environ.get("APPDATA")
        return Path(appdata if appdata is not None else os.path.expanduser("~"), "lanchat")
    if sys.platform == "darwin":
        return Path(os.path.expanduser("~/Library/Application Support"), "lanchat")
    return Path(os.environ.get("XDG_CONFIG_HOME", os.path.expanduser("~/.config")), "lanchat")


def new_instance(rng: random.Random | None = None) -> int:
    """A 64-bit instance number that grows with wall-clock start time (ms << 16 | random)."""
    rand = (rng or random.SystemRandom()).getrandbits(16)
    return ((int(time.time() * 1000) & (2**48 - 1)) << 16) | rand


class IdentityLease:
    """A peer id held by this process; release() (or exit) frees its slot."""

    def __init__(self, identity: Identity, slot: int | None, lock: IO[bytes] | None) -> None:
        self.identity = identity
        self.slot = slot  # None: an ephemeral id (app directory unusable or all slots taken)
        self._lock = lock

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _base_id(directory: Path) -> bytes:
    path = directory / "peer-id"
    try:
        return bytes.fromhex(path.read_text().strip())[:8].ljust(8, b"\0")
    except (OSError, ValueError):
        pass
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".peer-id.{os.getpid()}"
    tmp.write_text(secrets.token_hex(8) + "\n")
    try:
        os.link(tmp, path)  # atomic: the first of two racing processes wins
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return bytes.fromhex(path.read_text().strip())


def _try_lock(path: Path) -> IO[bytes] | None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no slots, the first slot is taken
        return open(path, "ab")
    handle = open(path, "ab")  # noqa: SIM115 - held open for the process lifetime
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def acquire_identity(host: str, directory: Path | None = None) -> IdentityLease:
    """Take this process's peer id: stable across restarts, unique among running processes."""
    directory = directory or app_dir()
    instance = new_instance()
    try:
        base = _base_id(directory)
        for slot in range(_MAX_SLOTS):
            lock = _try_lock(directory / f"slot-{slot}.lock")
            if lock is not None:
                digest = hashlib.sha256(base + host.encode() + bytes([slot])).digest()
                return IdentityLease(Identity(digest[:8], instance), slot, lock)
    except OSError:
        pass
    return IdentityLease(Identity(secrets.token_bytes(8), instance), None, None)


def ephemeral_identity() -> Identity:
    """A throw-away id for one-shot commands (peers, send, notice)."""
    return Identity(secrets.token_bytes(8), new_instance())
