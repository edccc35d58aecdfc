"""Local message history: every chat line, notice and direct message, kept in SQLite.

One file per user, `history.sqlite3` in the app directory (mode 0600: it holds
direct messages), shared by every lanchat process of that user: WAL journal,
so readers never block the writer, and a busy timeout, so writers queue.
`Node(history=True)` records what the node hands out and what it sends; the
protocol core knows nothing of it. `print_history` is `lanchat history`.

Crash safety: each row is its own transaction, committed before the node hands
the event to any subscriber (and before `say()` returns), so a line that was
shown is a line on disk. `synchronous=NORMAL` in WAL mode makes a commit a
write() into the WAL without fsync: the row is in the kernel once the call
returns and survives kill -9 of the process; only an OS crash or power cut can
lose the last commits, and never corrupts the file. FULL would add an fsync per
message (milliseconds on an SSD, more on a disk) to guard against power loss
only: not worth it for chat.

Schema (`PRAGMA user_version` 3), one table and its tally:

    messages(
      id        INTEGER PRIMARY KEY  -- commit order; pruning deletes the lowest of a tier first
      time      REAL NOT NULL        -- wall clock when recorded, Unix seconds
      kind      TEXT NOT NULL        -- chat | notice | direct | lost
      direction TEXT NOT NULL        -- in | out
      room      TEXT                 -- chat only
      peer_id   TEXT NOT NULL        -- sender (in), recipient (out direct), this node (out)
      nick      TEXT NOT NULL        -- that peer's nickname then
      text      TEXT NOT NULL        -- exactly as sent or received ('' for lost)
      seq       INTEGER              -- chat and notice seq, direct message id (u64, see below)
      instance  INTEGER              -- chat: the sender's instance; out direct: this node's (u64)
      state     TEXT                 -- out direct: sent, then delivered | unconfirmed | failed
      late      INTEGER NOT NULL     -- 1: arrived after a later message of its sender
      extra     TEXT                 -- JSON: other event fields (lost: count, first_seq, last_seq;
                                     --   recalled chat: {"recalled": true})
      tier      INTEGER NOT NULL     -- 0 own: sent, or a direct message received within quota;
                                     -- 1 room: other peers' lines within quota; 2 flood: past it
    )
    tally(tier INTEGER PRIMARY KEY, rows INTEGER NOT NULL)  -- rows per tier, kept by triggers
    indexes: room; time; tier (so by tier, then id); (instance, seq) of sent direct
    messages; unique (peer_id, instance, seq) of chat, so a line stored twice
    (recalled after it was stored live, or by two processes of one user) is kept once

Recalled chat (lines from before this node joined, `ChatRecalled`) is stored
with its original time, so rows are read back in time order, not commit order.
Version 1 files gain the unique index when opened (their chat rows have no
instance, so nothing collides); version 1 and 2 files gain the tier (0 for
sent rows and direct messages, 1 for the rest) and the tally.

u64 values (seq, instance, direct message id) are stored as SQLite's signed
64-bit INTEGER in two's complement: 2**63 and above become negative, the rest
(every value a real node makes) is stored as is. They are read back unsigned,
equality (the unique index, a direct message's state) works unchanged, and
`ORDER BY seq < 0, seq` orders them as unsigned numbers. The u64 fields of a
lost marker live in `extra`, as JSON text.

Quotas. Every received row ("in") takes one line from the buckets of its peer
id, of its source address when the caller gives one, and of all remote peers
together (`QUOTA_*`, refilled per minute of monotonic time, kept in this
process). Within all three it goes to tier 0 (a direct message) or 1; past any
one it is still stored and shown, in tier 2 (flood). Sent rows take nothing.

Bounds: tier 2 holds at most `QUOTA_FLOOD_SHARE` of MAX_ROWS, its oldest
deleted first; tiers 0 and 1 together hold at most `MAX_ROWS`, and past it the
oldest of tier 1 go first, those of tier 0 only while tier 0 holds more than
`QUOTA_OWN_SHARE` of MAX_ROWS (or tier 1 is empty); past `MAX_BYTES` of pages
in use, tier 2 goes first, then tiers 1 and 0 as for rows. A bound is pruned,
`PRUNE_BATCH` rows per transaction, down to `PRUNE_TO` of it. Freed pages are
reused, so the file stops growing near the bounds.

The guarantee: however fast, and from however many peer ids (invented ones,
or a known peer's), a flood gets at most QUOTA_REMOTE_BURST + QUOTA_REMOTE_RATE
a minute of its lines into tiers 0 and 1 (600 + 60 a minute: 660 in its first
minute, 4,200 in any hour), and only those can push older rows out. So it
evicts at most 4,200 of other peers' older lines an hour (fewer by as many as
the store is below MAX_ROWS), and none of the user's own lines or direct
messages while tier 0 holds under QUOTA_OWN_SHARE of MAX_ROWS; the rest of the
flood replaces only older flood rows. (Pruning goes in steps: a store at its
bound loses its oldest 10 % on the next row it keeps, flood or not.) Quotas are
per process: each lanchat process of the user admits its own. A line of a real
peer arriving during the flood may land in tier 2 and go with it.

Callers give no source address today (events do not carry it), so one host
is limited by the ids it uses and by the remote total.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import sqlite3
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TextIO

from lanchat import events as ev
from lanchat.codec import MAX_NICK_BYTES, MAX_ROOM_BYTES, MAX_TEXT_BYTES
from lanchat.core import RECALL_KEEP, RECALL_KEEP_LINES
from lanchat.errors import ConfigError
from lanchat.identity import app_dir
from lanchat.render import entry_fragments, plain

__all__ = [
    "HISTORY_FILE",
    "MAX_BYTES",
    "MAX_ROWS",
    "Entry",
    "HistoryStore",
    "default_path",
    "parse_since",
    "print_history",
]

HISTORY_FILE: Final = "history.sqlite3"
SCHEMA_VERSION: Final = 3
# About a year of a busy team room (~270 lines a day) in ~15 MB; `lanchat history`
# reads the last 100 in ~1 ms, a filter scanning them all takes ~50 ms.
MAX_ROWS: Final = 100_000
# Texts may be 1000 bytes, so 100,000 long rows would take ~130 MB; typical rows
# (~150 bytes with their index entries) reach MAX_ROWS at ~15 MB first.
MAX_BYTES: Final = 50 * 2**20
# Prune to 90% of a bound: pruning then runs once per ~10,000 rows, not per row.
PRUNE_TO: Final = 0.9
# Rows deleted per transaction: holds the write lock ~10 ms, so another process
# writing meanwhile waits little (far below BUSY_TIMEOUT).
PRUNE_BATCH: Final = 2_000
# A write waits this long for another process's lock, blocking the event loop
# meanwhile; the longest lock (a prune batch) is ~100x shorter. A write that
# still fails is counted in `errors`, and the message is shown all the same.
BUSY_TIMEOUT: Final = 1.0
# The WAL is truncated back to this size after a checkpoint (default: never).
WAL_SIZE_LIMIT: Final = 4 * 2**20
# Joined rooms' last lines shown by `lanchat join` at start.
RECENT_LINES: Final = 10
# `extra` JSON of one row (a lost-messages marker's fields are ~60 bytes).
_MAX_EXTRA_BYTES: Final = 1000
# A catch-up asks back to a minute before the newest stored line of the room
# (the stored lines of that minute are listed, so they do not come twice): a
# line that reached the peers but not this node just before it stopped is recalled.
RECALL_OVERLAP: Final = 60.0
# Lines of one remote peer id (or source address) stored within quota a minute:
# more than anyone types for long; a faster peer's lines go to the flood tier.
QUOTA_PEER_RATE: Final = 30.0
# ... at once: a pasted screenful, or a catch-up of that peer's lines in a few rooms.
QUOTA_PEER_BURST: Final = 300.0
# Lines of all remote peers together stored within quota a minute: ~300x a busy
# team room (~270 lines a day); it bounds what a flood from many ids can evict.
QUOTA_REMOTE_RATE: Final = 60.0
# ... at once: the catch-up of a dozen rooms (RECALL_KEEP_LINES each) on join.
QUOTA_REMOTE_BURST: Final = 600.0
# Flood-tier rows kept, as a share of MAX_ROWS: the newest of a flood stays readable
# (what was shown is on disk) without ever taking the place of other rows.
QUOTA_FLOOD_SHARE: Final = 0.1
# Own rows (tier 0) are pruned before other peers' lines only past this share of
# MAX_ROWS, so a year of other peers' lines cannot push out what the user wrote.
QUOTA_OWN_SHARE: Final = 0.5
# Peer ids and source addresses with a quota bucket (~150 bytes each); the least
# recently heard is forgotten first, and starts again full (the remote total holds).
_MAX_QUOTA_KEYS: Final = 4096

_OWN: Final = 0
_ROOM: Final = 1
_FLOOD: Final = 2
_U64: Final = 2**64
_LOST: Final[type | None] = getattr(ev, "MessagesLost", None)
_KINDS: Final = ("chat", "notice", "direct", "lost")
_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS messages (
        id INTEGER PRIMARY KEY,
        time REAL NOT NULL,
        kind TEXT NOT NULL,
        direction TEXT NOT NULL,
        room TEXT,
        peer_id TEXT NOT NULL,
        nick TEXT NOT NULL,
        text TEXT NOT NULL,
        seq INTEGER,
        instance INTEGER,
        state TEXT,
        late INTEGER NOT NULL DEFAULT 0,
        extra TEXT,
        tier INTEGER NOT NULL DEFAULT 1
    )""",
    "CREATE INDEX IF NOT EXISTS messages_room ON messages (room)",
    "CREATE INDEX IF NOT EXISTS messages_time ON messages (time)",
    "CREATE INDEX IF NOT EXISTS messages_sent ON messages (instance, seq)"
    " WHERE instance IS NOT NULL",
    "CREATE UNIQUE INDEX IF NOT EXISTS messages_chat ON messages (peer_id, instance, seq)"
    " WHERE kind = 'chat' AND instance IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS messages_tier ON messages (tier)",  # then id: the rowid
    "CREATE TABLE IF NOT EXISTS tally (tier INTEGER PRIMARY KEY, rows INTEGER NOT NULL)",
    "CREATE TRIGGER IF NOT EXISTS tally_insert AFTER INSERT ON messages"
    " BEGIN UPDATE tally SET rows = rows + 1 WHERE tier = NEW.tier; END",
    "CREATE TRIGGER IF NOT EXISTS tally_delete AFTER DELETE ON messages"
    " BEGIN UPDATE tally SET rows = rows - 1 WHERE tier = OLD.tier; END",
    "DELETE FROM tally",
    "INSERT INTO tally SELECT column1, (SELECT count(*) FROM messages WHERE tier = column1)"
    " FROM (VALUES (0), (1), (2))",
)
# A version 1 or 2 table gains its tier before the schema's index on it is made.
_ADD_TIER: Final = (
    "ALTER TABLE messages ADD COLUMN tier INTEGER NOT NULL DEFAULT 1",
    "UPDATE messages SET tier = 0 WHERE direction = 'out' OR kind = 'direct'",
)
_COLUMNS: Final = "id, time, kind, direction, room, peer_id, nick, text, seq, state, late, extra"


def default_path() -> Path:
    """Where the history lives: `history.sqlite3` in the app directory."""
    return app_dir() / HISTORY_FILE


def _clip(text: str, limit: int) -> str:
    """`text` cut to `limit` UTF-8 bytes at a character boundary (protocol texts already fit).

    A lone surrogate (only a library caller can pass one) becomes "?": SQLite takes UTF-8.
    """
    return text.encode("utf-8", "replace")[:limit].decode("utf-8", "ignore")


def _signed(value: int | None) -> int | None:
    """A u64 as SQLite stores it: two's complement signed 64-bit (ValueError if not a u64)."""
    if value is None:
        return None
    if not 0 <= value < _U64:
        raise ValueError(f"not an unsigned 64-bit value: {value}")
    return value - _U64 if value >= _U64 // 2 else value


def _unsigned(value: int) -> int:
    """A stored u64 read back."""
    return value % _U64


def _refill(
    bucket: tuple[float, float] | None, burst: float, per_minute: float, now: float
) -> float:
    """The lines a (tokens, stamp) bucket holds at `now` (a new one is full)."""
    if bucket is None:
        return burst
    tokens, stamp = bucket
    return min(burst, tokens + max(0.0, now - stamp) * per_minute / 60)


class _Quotas:
    """Token buckets of received rows: per peer id, per source address, and in total."""

    def __init__(self) -> None:
        # (scope, key) -> (tokens, stamp), least recently heard first.
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}

    def admit(self, peer_id: str, source: str | None, now: float) -> bool:
        """Take a line from each bucket of this row; False, taking none, if one is empty."""
        buckets = [(("remote", ""), QUOTA_REMOTE_BURST, QUOTA_REMOTE_RATE)]
        buckets.append((("peer", peer_id), QUOTA_PEER_BURST, QUOTA_PEER_RATE))
        if source is not None:
            buckets.append((("source", source), QUOTA_PEER_BURST, QUOTA_PEER_RATE))
        levels = [
            _refill(self._buckets.pop(key, None), burst, per_minute, now)
            for key, burst, per_minute in buckets
        ]
        admitted = min(levels) >= 1
        for (key, _, _), level in zip(buckets, levels, strict=True):
            self._buckets[key] = (level - admitted, now)
        while len(self._buckets) > _MAX_QUOTA_KEYS:
            del self._buckets[next(iter(self._buckets))]
        return admitted


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored row."""

    id: int
    time: float  # wall clock, Unix seconds
    kind: str  # chat | notice | direct | lost
    direction: str  # in | out
    room: str | None
    peer_id: str
    nick: str
    text: str
    seq: int | None
    state: str | None  # out direct: sent | delivered | unconfirmed | failed
    late: bool
    extra: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The row as a JSON object (extra fields merged in)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        extra = data.pop("extra")
        return {**extra, **data}


def _entry(row: tuple[Any, ...]) -> Entry:
    """An Entry from a row of `_COLUMNS`."""
    try:
        extra = json.loads(row[11]) if row[11] else {}
    except ValueError:
        extra = {}
    id_, when, kind, direction, room, peer_id, nick, text, seq, state, late = row[:11]
    return Entry(
        id_, when, kind, direction, room, peer_id, nick, text,
        None if seq is None else _unsigned(seq), state, bool(late),
        extra if isinstance(extra, dict) else {},
    )  # fmt: skip


class HistoryStore:
    """The history file of this user, open in this process (one thread: the event loop's)."""

    def __init__(self, path: Path) -> None:
        """Open (creating if need be) the store; ConfigError if it cannot be used."""
        self.path = path
        self.errors = 0  # writes (and `recent` reads) that failed: lock held too long, disk full...
        self.last_error: str | None = None
        self.flooded = 0  # received rows stored past a quota, in the flood tier
        self._quotas = _Quotas()
        try:
            self._db = self._open(path)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"cannot open the message history {path}: {exc}") from exc

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Private from the first byte; SQLite gives the -wal and -shm files the same mode.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode = WAL")  # stays 'delete' where WAL cannot work
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"written by a newer lanchat (schema {version})")
            if version < SCHEMA_VERSION:
                HistoryStore._migrate(db)
            db.create_function("casefold", 1, _casefold, deterministic=True)
        except BaseException:
            db.close()
            raise
        return db

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        """Bring an older (or new, empty) file to SCHEMA_VERSION, in one transaction."""
        # IMMEDIATE: another process migrating at once is waited for, then seen to be done.
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                columns = {row[1] for row in db.execute("PRAGMA table_info(messages)")}
                for statement in (_ADD_TIER if columns and "tier" not in columns else ()) + _SCHEMA:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close the connection (every row is committed already)."""
        self._db.close()

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------- writing

    @contextlib.contextmanager
    def _counted(self) -> Iterator[None]:
        """Run one write (or a read for display); a failure is counted, never raised."""
        try:
            yield
        except sqlite3.Error as exc:
            self.errors += 1
            self.last_error = str(exc)

    def add(
        self,
        kind: str,
        direction: str,
        *,
        peer_id: str,
        nick: str,
        text: str = "",
        room: str | None = None,
        seq: int | None = None,
        instance: int | None = None,
        state: str | None = None,
        late: bool = False,
        extra: Mapping[str, Any] | None = None,
        when: float | None = None,
        source: str | None = None,
        now: float | None = None,
    ) -> bool:
        """Store one row, committed on return; False if the write failed (see `errors`).

        `seq` and `instance` are u64 (ValueError otherwise). A received row counts
        against the quotas of `peer_id`, of `source` (the address it came from)
        when given, and of all remote peers, at `now` (monotonic seconds).
        """
        if kind not in _KINDS or direction not in ("in", "out"):
            raise ValueError(f"bad kind or direction: {kind!r}, {direction!r}")
        extra_json = _clip(json.dumps(dict(extra)), _MAX_EXTRA_BYTES) if extra else None
        peer_id = _clip(peer_id, 64)
        tier = _OWN if direction == "out" or kind == "direct" else _ROOM
        if direction == "in":
            moment = time.monotonic() if now is None else now
            source = None if source is None else _clip(source, 64)
            if not self._quotas.admit(peer_id, source, moment):
                tier = _FLOOD
                self.flooded += 1
        row = (
            time.time() if when is None else when,
            kind,
            direction,
            None if room is None else _clip(room, MAX_ROOM_BYTES),
            peer_id,
            _clip(nick, MAX_NICK_BYTES),
            _clip(text, MAX_TEXT_BYTES),
            _signed(seq),
            _signed(instance),
            state,
            int(late),
            extra_json,
            tier,
        )
        stored = False
        with self._counted():
            self._db.execute(  # OR IGNORE: a chat line already stored (messages_chat) stays once
                "INSERT OR IGNORE INTO messages (time, kind, direction, room, peer_id, nick, text,"
                " seq, instance, state, late, extra, tier)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            stored = True  # committed: autocommit mode, one statement
        if stored:
            with self._counted():
                self._prune_if_over()
        return stored

    def add_direct(
        self,
        peer_id: str,
        nick: str,
        text: str,
        msg_id: int,
        *,
        instance: int,
        when: float | None = None,
    ) -> bool:
        """A direct message this node sent, in state "sent" until its outcome is recorded."""
        return self.add(
            "direct", "out", peer_id=peer_id, nick=nick, text=text, seq=msg_id,
            instance=instance, state="sent", when=when,
        )  # fmt: skip

    def set_direct_state(self, instance: int, msg_id: int, peer_id: str, state: str) -> bool:
        """Update a sent direct message in place: delivered, unconfirmed or failed."""
        with self._counted():
            self._db.execute(
                "UPDATE messages SET state = ? WHERE kind = 'direct' AND direction = 'out'"
                " AND instance = ? AND seq = ? AND peer_id = ?",
                (state, _signed(instance), _signed(msg_id), peer_id),
            )
            return True
        return False

    def record_event(
        self,
        event: ev.Event,
        *,
        instance: int,
        source: str | None = None,
        now: float | None = None,
    ) -> bool:
        """Store what a message event says (others are ignored); `instance` is this node's.

        `source` and `now` are as for `add`: the address the event came from, if known.
        """
        match event:
            case ev.ChatReceived():
                return self.add(
                    "chat", "in", peer_id=event.peer_id, nick=event.nick, text=event.text,
                    room=event.room, seq=event.seq, late=getattr(event, "late", False),
                    instance=event.instance or None, source=source, now=now,
                )  # fmt: skip
            case ev.ChatRecalled():
                return self.add(
                    "chat", "in", peer_id=event.peer_id, nick=event.nick, text=event.text,
                    room=event.room, seq=event.seq, instance=event.instance,
                    extra={"recalled": True}, when=time.time() - event.age,
                    source=source, now=now,
                )  # fmt: skip
            case ev.NoticeReceived():
                return self.add(
                    "notice", "in", peer_id=event.peer_id, nick=event.nick, text=event.text,
                    seq=event.seq, late=getattr(event, "late", False),
                    source=source, now=now,
                )  # fmt: skip
            case ev.DirectReceived():
                return self.add(
                    "direct", "in", peer_id=event.peer_id, nick=event.nick, text=event.text,
                    seq=event.msg_id, source=source, now=now,
                )  # fmt: skip
            case ev.DirectDelivered():
                return self.set_direct_state(instance, event.msg_id, event.peer_id, "delivered")
            case ev.DirectFailed():
                state = "unconfirmed" if event.peer_alive else "failed"
                return self.set_direct_state(instance, event.msg_id, event.peer_id, state)
        if _LOST is not None and isinstance(event, _LOST):
            fields = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
            peer_id, nick = str(fields.pop("peer_id")), str(fields.pop("nick"))
            return self.add(
                "lost", "in", peer_id=peer_id, nick=nick, extra=fields, source=source, now=now
            )
        return False

    # ------------------------------------------------------------- pruning

    def _prune_if_over(self) -> None:
        # O(1) figures: the tally (kept by triggers) and the page counts of the database header.
        own, room, flood = self._tally()
        over_rows = own + room > MAX_ROWS
        over_flood = flood > int(MAX_ROWS * QUOTA_FLOOD_SHARE)
        over_bytes = self._bytes_used() > MAX_BYTES
        if over_rows or over_flood or over_bytes:
            self._prune(rows=over_rows, flood=over_flood, size=over_bytes)

    def _tally(self) -> tuple[int, int, int]:
        """Rows in tiers own, room and flood."""
        counts = dict(self._db.execute("SELECT tier, rows FROM tally").fetchall())
        return counts.get(_OWN, 0), counts.get(_ROOM, 0), counts.get(_FLOOD, 0)

    def _bytes_used(self) -> int:
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        size = self._db.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def prune(self) -> int:
        """Delete rows, oldest of a tier first, in batches, until every bound is met with margin."""
        return self._prune(rows=True, flood=True, size=True)

    def _prune(self, *, rows: bool, flood: bool, size: bool) -> int:
        """Prune the bounds named (see the module docstring) down to PRUNE_TO; rows deleted."""
        deleted = 0
        while (victims := self._victims(rows=rows, flood=flood, size=size)) is not None:
            cursor = self._db.execute(
                "DELETE FROM messages WHERE id IN"
                " (SELECT id FROM messages WHERE tier = ? ORDER BY id LIMIT ?)",
                victims,
            )
            if cursor.rowcount <= 0:
                return deleted
            deleted += cursor.rowcount
        return deleted

    def _victims(self, *, rows: bool, flood: bool, size: bool) -> tuple[int, int] | None:
        """The next batch to delete, (tier, count), or None when the bounds named are met."""
        own, room, flooded = self._tally()
        keep_flood = int(MAX_ROWS * QUOTA_FLOOD_SHARE * PRUNE_TO)
        keep_rows = int(MAX_ROWS * PRUNE_TO)
        if flood and flooded > keep_flood:
            return _FLOOD, min(PRUNE_BATCH, flooded - keep_flood)
        if rows and own + room > keep_rows:
            excess = own + room - keep_rows
        elif size and own + room + flooded and self._bytes_used() > int(MAX_BYTES * PRUNE_TO):
            if flooded:
                return _FLOOD, min(PRUNE_BATCH, max(1, flooded // 10))
            excess = max(1, (own + room) // 10)
        else:
            return None
        own_share = int(MAX_ROWS * QUOTA_OWN_SHARE)
        if own > own_share:
            return _OWN, min(PRUNE_BATCH, excess, own - own_share)
        return (_ROOM, min(PRUNE_BATCH, excess)) if room else (_OWN, min(PRUNE_BATCH, excess))

    # ------------------------------------------------------------- reading

    def count(self) -> int:
        """The number of rows stored."""
        return int(self._db.execute("SELECT count(*) FROM messages").fetchone()[0])

    def recent(self, room: str, limit: int = RECENT_LINES) -> list[Entry]:
        """The last `limit` chat lines of a room, oldest first ([] if the read fails)."""
        rows: list[tuple[Any, ...]] = []
        with self._counted():
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE room = ? AND kind = 'chat'"
                " ORDER BY time DESC, id DESC LIMIT ?",
                (room, max(0, limit)),
            ).fetchall()
        return [_entry(row) for row in reversed(rows)]

    def recall_hint(self, room: str, now: float) -> tuple[float, list[tuple[str, int, int]]]:
        """What a catch-up of `room` should ask for, given what is stored: (max_age, have).

        max_age reaches back to RECALL_OVERLAP before the newest stored line (at
        most RECALL_KEEP); `have` names the stored lines in that span (at most
        RECALL_KEEP_LINES, newest first) as (peer_id, instance, seq).
        """
        rows: list[tuple[Any, ...]] = []
        newest: float | None = None
        with self._counted():
            newest = self._db.execute(
                "SELECT max(time) FROM messages WHERE room = ? AND kind = 'chat'", (room,)
            ).fetchone()[0]
            if newest is not None:
                rows = self._db.execute(
                    "SELECT peer_id, instance, seq FROM messages WHERE room = ? AND kind = 'chat'"
                    " AND instance IS NOT NULL AND seq IS NOT NULL AND time >= ?"
                    " ORDER BY time DESC LIMIT ?",
                    (room, newest - RECALL_OVERLAP, RECALL_KEEP_LINES),
                ).fetchall()
        if newest is None:
            return RECALL_KEEP, []
        max_age = min(RECALL_KEEP, max(1.0, now - newest + RECALL_OVERLAP))
        return max_age, [(str(p), _unsigned(i), _unsigned(q)) for p, i, q in rows]

    def query(
        self,
        *,
        room: str | None = None,
        peer: str | None = None,
        notices: bool = False,
        since: float | None = None,
        limit: int | None = None,
    ) -> list[Entry]:
        """The last `limit` rows matching, oldest first.

        `room` selects that room's chat and `notices` the notices (both: either);
        neither selects every kind. Lost-message markers come with every
        selection: a gap may hide chat of any room, or a notice. `peer` is a
        nickname as it was then (any case), else a peer id prefix, as
        `Node.find_peer` takes them; `since` is Unix seconds.
        """
        where: list[str] = []
        args: list[Any] = []
        kinds: list[str] = []
        if room is not None:
            kinds.append("(kind = 'chat' AND room = ?)")
            args.append(room.removeprefix("#"))
        if notices:
            kinds.append("kind = 'notice'")
        if kinds:
            kinds.append("kind = 'lost'")
            where.append("(" + " OR ".join(kinds) + ")")
        if peer is not None:
            where.append(self._peer_filter(peer, args))
        if since is not None:
            where.append("time >= ?")
            args.append(since)
        sql = f"SELECT {_COLUMNS} FROM messages"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY time DESC, id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(max(0, limit))
        rows = self._db.execute(sql, args).fetchall()
        return [_entry(row) for row in reversed(rows)]

    def _peer_filter(self, peer: str, args: list[Any]) -> str:
        """A condition on nickname, or if no row has that nickname, on peer id prefix."""
        folded = _casefold(peer)
        known = self._db.execute(
            "SELECT 1 FROM messages WHERE casefold(nick) = ? LIMIT 1", (folded,)
        ).fetchone()
        if known or len(peer) < 2:
            args.append(folded)
            return "casefold(nick) = ?"
        args += [len(peer), peer.lower()]
        return "substr(peer_id, 1, ?) = ?"


def _casefold(text: object) -> str | None:
    return text.casefold() if isinstance(text, str) else None


# ----------------------------------------------------------------- printing

_AGO: Final = re.compile(r"\s*(\d{1,9}(?:\.\d+)?)\s*([smhdw])\s*", re.IGNORECASE)
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: float) -> float:
    """A `--since` value as Unix seconds: "90s", "15m", "2h", "3d", "1w" before `now`,
    or an ISO date or date-time ("2024-05-06", "2024-05-06 14:30", local time unless
    it names a zone). ValueError when it is neither."""
    if match := _AGO.fullmatch(text):
        return now - float(match[1]) * _UNIT_SECONDS[match[2].lower()]
    try:
        moment = datetime.fromisoformat(text.strip())
        return moment.timestamp()  # a naive date-time is local time
    except (ValueError, OverflowError, OSError):
        pass
    raise ValueError(
        f"{text!r} is neither a duration (90s, 15m, 2h, 3d, 1w) nor a date (2024-05-06[ 14:30])"
    )


def print_history(
    store_path: Path,
    *,
    room: str | None,
    peer: str | None,
    notices: bool,
    since: float | None,
    as_json: bool,
    limit: int | None,
    out: TextIO,
    err: TextIO | None = None,
) -> int:
    """Print stored messages matching the filters (see `HistoryStore.query`); the exit code.

    Human lines are sanitized for the terminal; `as_json` prints one object per
    line with the exact texts (JSON escapes make them terminal-safe).
    """
    err = err if err is not None else sys.stderr
    if not store_path.exists():
        err.write(f"lanchat: no message history yet ({store_path})\n")
        return 0
    try:
        with HistoryStore(store_path) as store:
            entries = store.query(room=room, peer=peer, notices=notices, since=since, limit=limit)
    except ConfigError as exc:
        err.write(f"lanchat: {exc}\n")
        return 1
    except sqlite3.Error as exc:
        err.write(f"lanchat: cannot read the message history {store_path}: {exc}\n")
        return 1
    if as_json:
        for entry in entries:
            # ensure_ascii: control characters and bidi overrides come out as \u escapes.
            out.write(json.dumps(entry.to_json(), ensure_ascii=True) + "\n")
        return 0
    for entry in entries:
        out.write(plain(entry_fragments(entry)) + "\n")
    return 0
