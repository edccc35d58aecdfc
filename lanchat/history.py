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

Schema (`PRAGMA user_version` 2), one table:

    messages(
      id        INTEGER PRIMARY KEY  -- commit order; pruning deletes the lowest first
      time      REAL NOT NULL        -- wall clock when recorded, Unix seconds
      kind      TEXT NOT NULL        -- chat | notice | direct | lost
      direction TEXT NOT NULL        -- in | out
      room      TEXT                 -- chat only
      peer_id   TEXT NOT NULL        -- sender (in), recipient (out direct), this node (out)
      nick      TEXT NOT NULL        -- that peer's nickname then
      text      TEXT NOT NULL        -- exactly as sent or received ('' for lost)
      seq       INTEGER              -- chat and notice seq, direct message id
      instance  INTEGER              -- chat: the sender's instance; out direct: this node's
      state     TEXT                 -- out direct: sent, then delivered | unconfirmed | failed
      late      INTEGER NOT NULL     -- 1: arrived after a later message of its sender
      extra     TEXT                 -- JSON: other event fields (lost: count, first_seq, last_seq;
                                     --   recalled chat: {"recalled": true})
    )
    indexes: room; time; (instance, seq) of sent direct messages; unique
    (peer_id, instance, seq) of chat, so a line stored twice (recalled after it
    was stored live, or by two processes of one user) is kept once

Recalled chat (lines from before this node joined, `ChatRecalled`) is stored
with its original time, so rows are read back in time order, not commit order.
Version 1 files gain the unique index when opened (their chat rows have no
instance, so nothing collides).

Size bound: past `MAX_ROWS` rows or `MAX_BYTES` of pages in use, the oldest
rows are deleted, `PRUNE_BATCH` per transaction, down to `PRUNE_TO` of the
bound. Freed pages are reused, so the file stops growing near the bound.
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

import click

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
    "SinceType",
    "default_path",
    "parse_since",
    "print_history",
]

HISTORY_FILE: Final = "history.sqlite3"
SCHEMA_VERSION: Final = 2
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

_LOST: Final[type | None] = getattr(ev, "MessagesLost", None)
_KINDS: Final = ("chat", "notice", "direct", "lost")
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS messages (
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
    extra TEXT
);
CREATE INDEX IF NOT EXISTS messages_room ON messages (room);
CREATE INDEX IF NOT EXISTS messages_time ON messages (time);
CREATE INDEX IF NOT EXISTS messages_sent ON messages (instance, seq) WHERE instance IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS messages_chat ON messages (peer_id, instance, seq)
    WHERE kind = 'chat' AND instance IS NOT NULL;
"""
_COLUMNS: Final = "id, time, kind, direction, room, peer_id, nick, text, seq, state, late, extra"


def default_path() -> Path:
    """Where the history lives: `history.sqlite3` in the app directory."""
    return app_dir() / HISTORY_FILE


def _clip(text: str, limit: int) -> str:
    """`text` cut to `limit` UTF-8 bytes at a character boundary (protocol texts already fit).

    A lone surrogate (only a library caller can pass one) becomes "?": SQLite takes UTF-8.
    """
    return text.encode("utf-8", "replace")[:limit].decode("utf-8", "ignore")


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
        id_, when, kind, direction, room, peer_id, nick, text, seq, state, bool(late),
        extra if isinstance(extra, dict) else {},
    )  # fmt: skip


class HistoryStore:
    """The history file of this user, open in this process (one thread: the event loop's)."""

    def __init__(self, path: Path) -> None:
        """Open (creating if need be) the store; ConfigError if it cannot be used."""
        self.path = path
        self.errors = 0  # writes (and `recent` reads) that failed: lock held too long, disk full...
        self.last_error: str | None = None
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
                db.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT")
            db.create_function("casefold", 1, _casefold, deterministic=True)
        except BaseException:
            db.close()
            raise
        return db

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
    ) -> bool:
        """Store one row, committed on return; False if the write failed (see `errors`)."""
        if kind not in _KINDS or direction not in ("in", "out"):
            raise ValueError(f"bad kind or direction: {kind!r}, {direction!r}")
        extra_json = _clip(json.dumps(dict(extra)), _MAX_EXTRA_BYTES) if extra else None
        row = (
            time.time() if when is None else when,
            kind,
            direction,
            None if room is None else _clip(room, MAX_ROOM_BYTES),
            _clip(peer_id, 64),
            _clip(nick, MAX_NICK_BYTES),
            _clip(text, MAX_TEXT_BYTES),
            seq,
            instance,
            state,
            int(late),
            extra_json,
        )
        stored = False
        with self._counted():
            self._db.execute(  # OR IGNORE: a chat line already stored (messages_chat) stays once
                "INSERT OR IGNORE INTO messages (time, kind, direction, room, peer_id, nick, text,"
                " seq, instance, state, late, extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                (state, instance, msg_id, peer_id),
            )
            return True
        return False

    def record_event(self, event: ev.Event, *, instance: int) -> bool:
        """Store what a message event says (others are ignored); `instance` is this node's."""
        match event:
            case ev.ChatReceived():
                return self.add(
                    "chat", "in", peer_id=event.peer_id, nick=event.nick, text=event.text,
                    room=event.room, seq=event.seq, late=getattr(event, "late", False),
                    instance=event.instance or None,
                )  # fmt: skip
            case ev.ChatRecalled():
                return self.add(
                    "chat", "in", peer_id=event.peer_id, nick=event.nick, text=event.text,
                    room=event.room, seq=event.seq, instance=event.instance,
                    extra={"recalled": True}, when=time.time() - event.age,
                )  # fmt: skip
            case ev.NoticeReceived():
                return self.add(
                    "notice", "in", peer_id=event.peer_id, nick=event.nick, text=event.text,
                    seq=event.seq, late=getattr(event, "late", False),
                )  # fmt: skip
            case ev.DirectReceived():
                return self.add(
                    "direct", "in", peer_id=event.peer_id, nick=event.nick, text=event.text,
                    seq=event.msg_id,
                )  # fmt: skip
            case ev.DirectDelivered():
                return self.set_direct_state(instance, event.msg_id, event.peer_id, "delivered")
            case ev.DirectFailed():
                state = "unconfirmed" if event.peer_alive else "failed"
                return self.set_direct_state(instance, event.msg_id, event.peer_id, state)
        if _LOST is not None and isinstance(event, _LOST):
            fields = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
            peer_id, nick = str(fields.pop("peer_id")), str(fields.pop("nick"))
            return self.add("lost", "in", peer_id=peer_id, nick=nick, extra=fields)
        return False

    # ------------------------------------------------------------- pruning

    def _prune_if_over(self) -> None:
        # Both figures are O(1): ids are dense (only the oldest are ever deleted), and
        # the page counts are in the database header.
        span = self._db.execute(  # two subqueries: SQLite optimizes a lone min() or max() only
            "SELECT (SELECT max(id) FROM messages) - (SELECT min(id) FROM messages) + 1"
        ).fetchone()[0]
        if (span or 0) > MAX_ROWS or self._bytes_used() > MAX_BYTES:
            self.prune()

    def _bytes_used(self) -> int:
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        size = self._db.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def prune(self) -> int:
        """Delete the oldest rows, in batches, until both bounds are met with margin."""
        deleted = 0
        keep_rows = int(MAX_ROWS * PRUNE_TO)
        keep_bytes = int(MAX_BYTES * PRUNE_TO)
        while True:
            rows = self.count()
            if rows > keep_rows:
                batch = min(PRUNE_BATCH, rows - keep_rows)
            elif rows and self._bytes_used() > keep_bytes:
                batch = min(PRUNE_BATCH, max(1, rows // 10))
            else:
                return deleted
            cursor = self._db.execute(
                "DELETE FROM messages WHERE id IN (SELECT id FROM messages ORDER BY id LIMIT ?)",
                (batch,),
            )
            if cursor.rowcount <= 0:
                return deleted
            deleted += cursor.rowcount

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
        return max_age, [(str(p), int(i), int(q)) for p, i, q in rows]

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


class SinceType(click.ParamType):  # type: ignore[type-arg]
    """`--since 2h` or `--since 2024-05-06`: converted to Unix seconds."""

    name = "since"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_since(str(value), time.time())
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


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
