"""Tests for lanchat.history: the store, its bounds, printing, and nodes keeping history.

Store tests use a file in the test's own directory; loopback tests pin every node
to `lo` and a port of their own. The crash test kills a real process with SIGKILL.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lanchat import events as ev
from lanchat import history
from lanchat.chat import run_join
from lanchat.cli import SinceType
from lanchat.errors import ClosedError, ConfigError
from lanchat.history import Entry, HistoryStore, parse_since, print_history
from lanchat.render import entry_fragments, plain
from tests.loopback_helpers import node, until

ROOT = Path(__file__).resolve().parent.parent
BOB = "b0b0b0b0b0b0b0b0"
ALICE = "a1a1a1a1a1a1a1a1"
CAROL = "c4c4c4c4c4c4c4c4"
T0 = datetime(2024, 5, 6, 12, 0, 0).timestamp()  # local time, as the printer shows it
MessagesLost = getattr(ev, "MessagesLost", None)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "store" / "history.sqlite3"


@pytest.fixture
def store(store_path: Path) -> Iterator[HistoryStore]:
    with HistoryStore(store_path) as opened:
        yield opened


def rows(
    path: Path, sql: str = "SELECT kind, direction, nick, text, state FROM messages"
) -> list[Any]:
    """Rows read through a connection of its own (what another process would see)."""
    db = sqlite3.connect(path)
    try:
        return db.execute(sql + " ORDER BY id").fetchall()
    finally:
        db.close()


def lost(count: int, nick: str = "bob") -> ev.Event:
    if MessagesLost is None:
        pytest.skip("lanchat.events has no MessagesLost yet")
    event: ev.Event = MessagesLost(BOB, nick, count, 10, 9 + count)
    return event


def stamp(when: float) -> str:
    return datetime.fromtimestamp(when).strftime("%Y-%m-%d %H:%M:%S")


# ---------------------------------------------------------------- parse_since


@pytest.mark.parametrize(
    ("text", "ago"),
    [("90s", 90), ("15m", 900), ("2h", 7200), ("3d", 3 * 86400), (" 1W ", 7 * 86400), ("0s", 0)],
)
def test_parse_since_durations(text: str, ago: float) -> None:
    assert parse_since(text, 1_000_000.0) == 1_000_000.0 - ago


def test_parse_since_dates_are_local_unless_zoned() -> None:
    assert parse_since("2024-05-06", 0.0) == datetime(2024, 5, 6).timestamp()
    assert parse_since("2024-05-06 14:30", 0.0) == datetime(2024, 5, 6, 14, 30).timestamp()
    zoned = datetime(2024, 5, 6, 14, 30, tzinfo=UTC).timestamp()
    assert parse_since("2024-05-06T14:30:00+00:00", 0.0) == zoned


@pytest.mark.parametrize("text", ["", "2 hours", "yesterday", "-5m", "5", "2024-13-01", "1y"])
def test_parse_since_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="neither a duration"):
        parse_since(text, 0.0)


def test_since_type_fails_as_click_wants() -> None:
    since = SinceType()
    assert abs(since.convert("1h", None, None) - (time.time() - 3600)) < 5
    with pytest.raises(click.BadParameter, match="neither a duration"):
        since.convert("soonish", None, None)


# ---------------------------------------------------------------------- store


def test_store_records_message_events_and_ignores_the_rest(
    store: HistoryStore, store_path: Path
) -> None:
    assert store.record_event(ev.ChatReceived(BOB, "bob", "lobby", "hi", 1), instance=7)
    assert store.record_event(ev.NoticeReceived(BOB, "bob", "fire", 2), instance=7)
    assert store.record_event(ev.DirectReceived(BOB, "bob", "psst", 1), instance=7)
    assert not store.record_event(ev.NoticeAcknowledged(2, BOB), instance=7)
    assert not store.record_event(ev.InterfacesChanged((), (), ("lo",)), instance=7)
    assert rows(store_path) == [
        ("chat", "in", "bob", "hi", None),
        ("notice", "in", "bob", "fire", None),
        ("direct", "in", "bob", "psst", None),
    ]


def test_direct_state_is_updated_in_place(store: HistoryStore, store_path: Path) -> None:
    assert store.add_direct(BOB, "bob", "one", 1, instance=7)
    assert store.add_direct(BOB, "bob", "two", 2, instance=7)
    assert store.add_direct(CAROL, "carol", "three", 3, instance=7)
    assert store.add_direct(BOB, "bob", "old run", 1, instance=6)  # same id, earlier instance
    store.record_event(ev.DirectDelivered(1, BOB, 1), instance=7)
    store.record_event(ev.DirectFailed(2, BOB, 5, peer_alive=True), instance=7)
    store.record_event(ev.DirectFailed(3, CAROL, 5, peer_alive=False), instance=7)
    assert [r[-2:] for r in rows(store_path)] == [
        ("one", "delivered"),
        ("two", "unconfirmed"),
        ("three", "failed"),
        ("old run", "sent"),
    ]


def test_lost_markers_are_stored_generically(store: HistoryStore) -> None:
    assert store.record_event(lost(3), instance=7)
    (entry,) = store.query()
    assert (entry.kind, entry.peer_id, entry.nick, entry.text) == ("lost", BOB, "bob", "")
    assert entry.extra == {"count": 3, "first_seq": 10, "last_seq": 12}


def test_late_flag_is_kept(store: HistoryStore) -> None:
    if "late" not in ev.ChatReceived.__dataclass_fields__:
        pytest.skip("ChatReceived has no late field yet")
    store.record_event(ev.ChatReceived(BOB, "bob", "lobby", "early", 2), instance=7)
    store.record_event(ev.ChatReceived(BOB, "bob", "lobby", "late", 1, True), instance=7)
    assert [(e.text, e.late) for e in store.query()] == [("early", False), ("late", True)]


def test_texts_are_stored_exactly_but_bounded(store: HistoryStore) -> None:
    hostile = "\x1b]0;owned\x07red \x1b[31mtext\u202e \ud800"
    store.add("chat", "in", peer_id=BOB, nick="b\x1bob", text=hostile, room="lobby")
    store.add("chat", "in", peer_id=BOB, nick="bob", text="é" * 3000, room="lobby")
    first, second = store.query()
    assert first.text == hostile.replace("\ud800", "?") and first.nick == "b\x1bob"
    assert second.text == "é" * 500, "cut to 1000 bytes at a character boundary"


def test_store_file_is_private(store: HistoryStore, store_path: Path) -> None:
    store.add("chat", "out", peer_id=ALICE, nick="alice", text="hi", room="lobby")
    assert store_path.stat().st_mode & 0o777 == 0o600
    assert rows(store_path, "SELECT 1 FROM messages") == [(1,)]
    db = sqlite3.connect(store_path)
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.close()


def test_newer_schema_is_refused(store_path: Path) -> None:
    HistoryStore(store_path).close()
    db = sqlite3.connect(store_path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(ConfigError, match=r"cannot open the message history .*newer lanchat"):
        HistoryStore(store_path)


def test_a_failed_write_is_counted_not_raised(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history, "BUSY_TIMEOUT", 0.05)
    with HistoryStore(store_path) as store:
        other = sqlite3.connect(store_path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock too long
        assert not store.add("chat", "in", peer_id=BOB, nick="bob", text="lost", room="lobby")
        assert store.errors == 1 and "locked" in (store.last_error or "")
        other.execute("COMMIT")
        other.close()
        assert store.add("chat", "in", peer_id=BOB, nick="bob", text="kept", room="lobby")
        assert [e.text for e in store.query()] == ["kept"]


U64 = st.integers(min_value=0, max_value=2**64 - 1)


@settings(max_examples=60, deadline=None)
@given(seq=U64, instance=st.integers(min_value=1, max_value=2**64 - 1), msg_id=U64)
@example(seq=2**63, instance=2**63, msg_id=2**63)
@example(seq=2**64 - 1, instance=2**64 - 1, msg_id=2**64 - 1)
@example(seq=2**63 - 1, instance=1, msg_id=0)
def test_u64_values_are_stored_and_read_back_exactly(seq: int, instance: int, msg_id: int) -> None:
    """Every u64 of the wire (seq, instance, msg id, lost range) survives signed SQLite."""
    with tempfile.TemporaryDirectory() as tmp, HistoryStore(Path(tmp) / "h.sqlite3") as store:
        chat = ev.ChatReceived(BOB, "bob", "lobby", "hi", seq, instance=instance)
        assert store.record_event(chat, instance=7) and store.record_event(chat, instance=7)
        assert store.record_event(ev.DirectReceived(BOB, "bob", "psst", msg_id), instance=7)
        assert store.add_direct(CAROL, "carol", "sent", msg_id, instance=instance)
        assert store.record_event(ev.DirectDelivered(msg_id, CAROL, 1), instance=instance)
        if MessagesLost is not None:
            store.record_event(MessagesLost(BOB, "bob", 2, seq, msg_id), instance=7)
        assert store.errors == 0
        entries = store.query()
        assert [(e.kind, e.seq) for e in entries[:3]] == [
            ("chat", seq), ("direct", msg_id), ("direct", msg_id),
        ], "the same chat line twice is stored once"  # fmt: skip
        assert entries[2].state == "delivered" and entries[0].to_json()["seq"] == seq
        if MessagesLost is not None:
            assert (entries[3].extra["first_seq"], entries[3].extra["last_seq"]) == (seq, msg_id)
        max_age, have = store.recall_hint("lobby", time.time())
        assert have == [(BOB, instance, seq)] and 55 < max_age < 65
        ordered = store._db.execute(
            "SELECT seq FROM messages WHERE kind = 'direct' OR kind = 'chat'"
            " ORDER BY seq < 0, seq, id"
        ).fetchall()
        assert [history._unsigned(q) for (q,) in ordered] == sorted([seq, msg_id, msg_id])


@pytest.mark.parametrize("value", [-1, 2**64, 2**70])
def test_a_value_outside_u64_is_refused(store: HistoryStore, value: int) -> None:
    with pytest.raises(ValueError, match="unsigned 64-bit"):
        store.add("chat", "in", peer_id=BOB, nick="bob", text="x", room="r", seq=value)
    with pytest.raises(ValueError, match="unsigned 64-bit"):
        store.add_direct(BOB, "bob", "x", 1, instance=value)
    assert store.count() == 0


# The tables of schema 2 (schema 1: the same without messages_chat), as lanchat wrote them.
_SCHEMA_2 = """
CREATE TABLE messages (
    id INTEGER PRIMARY KEY, time REAL NOT NULL, kind TEXT NOT NULL, direction TEXT NOT NULL,
    room TEXT, peer_id TEXT NOT NULL, nick TEXT NOT NULL, text TEXT NOT NULL, seq INTEGER,
    instance INTEGER, state TEXT, late INTEGER NOT NULL DEFAULT 0, extra TEXT
);
CREATE INDEX messages_room ON messages (room);
CREATE INDEX messages_time ON messages (time);
CREATE INDEX messages_sent ON messages (instance, seq) WHERE instance IS NOT NULL;
"""
_CHAT_INDEX_2 = """
CREATE UNIQUE INDEX messages_chat ON messages (peer_id, instance, seq)
    WHERE kind = 'chat' AND instance IS NOT NULL;
"""


@pytest.mark.parametrize("version", [1, 2])
def test_older_files_keep_their_rows_and_gain_tiers(store_path: Path, version: int) -> None:
    store_path.parent.mkdir()
    db = sqlite3.connect(store_path)
    db.executescript(_SCHEMA_2 + (_CHAT_INDEX_2 if version == 2 else ""))
    old_rows = [
        (T0, "chat", "in", "lobby", BOB, "bob", "hi", 5, 2**62, None, 0, None),
        (T0 + 1, "chat", "out", "lobby", ALICE, "alice", "hey", 1, 9, None, 0, None),
        (T0 + 2, "direct", "in", None, BOB, "bob", "psst", 3, None, None, 0, None),
        (T0 + 3, "direct", "out", None, BOB, "bob", "back", 4, 9, "sent", 0, None),
        (T0 + 4, "notice", "in", None, CAROL, "carol", "fire", 6, None, None, 1, None),
        (T0 + 5, "lost", "in", None, CAROL, "carol", "", None, None, None, 0, '{"count": 2}'),
    ]
    db.executemany(
        "INSERT INTO messages (time, kind, direction, room, peer_id, nick, text, seq, instance,"
        " state, late, extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        old_rows,
    )
    db.execute(f"PRAGMA user_version = {version}")
    db.commit()
    db.close()
    with HistoryStore(store_path) as store:
        entries = store.query()
        assert [(e.time, e.kind, e.direction, e.text, e.seq, e.state, e.late) for e in entries] == [
            (r[0], r[1], r[2], r[6], r[7], r[9], bool(r[10])) for r in old_rows
        ]
        assert entries[-1].extra == {"count": 2}
        assert store._tally() == (3, 3, 0), "sent rows and direct messages are tier 0"
        # The unique index holds (version 1 gains it): the old line again is kept once.
        assert store.record_event(
            ev.ChatReceived(BOB, "bob", "lobby", "hi", 5, instance=2**62), instance=9
        )
        store.record_event(ev.DirectDelivered(4, BOB, 1), instance=9)
        assert store.count() == 6 and store.query()[3].state == "delivered"
    tiers = [tier for (tier,) in rows(store_path, "SELECT tier FROM messages")]
    assert tiers == [1, 0, 0, 0, 1, 1]
    db = sqlite3.connect(store_path)
    assert db.execute("PRAGMA user_version").fetchone() == (history.SCHEMA_VERSION,)
    db.close()
    with HistoryStore(store_path) as store:  # opened again: nothing more to do
        assert store.count() == 6 and store._tally() == (3, 3, 0)


# -------------------------------------------------------------------- pruning


def test_row_bound_deletes_oldest_first_in_batches(
    store: HistoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history, "MAX_ROWS", 50)
    monkeypatch.setattr(history, "PRUNE_BATCH", 4)
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    for i in range(200):
        store.add("chat", "in", peer_id=BOB, nick="bob", text=f"m{i}", room="lobby")
        assert store.count() <= 50
    texts = [e.text for e in store.query()]
    assert texts == [f"m{i}" for i in range(200 - len(texts), 200)], "newest kept, in order"
    pruned = 200 - len(texts)
    assert len(texts) >= 45 and pruned % 6 == 0, "each prune goes from 51 rows to 45"
    deletes = [sql for sql in statements if sql.startswith("DELETE")]
    # A trigger's statements (the tally's, one per row deleted) are traced as the
    # DELETE that fired them: one batch is one run of equal lines.
    batches = [sql for i, sql in enumerate(deletes) if i == 0 or sql != deletes[i - 1]]
    assert [sql[-8:] for sql in batches] == ["LIMIT 4)", "LIMIT 2)"] * (pruned // 6), (
        "6 rows in two batches: 4, then 2"
    )


def test_byte_bound_keeps_the_file_small(
    store: HistoryStore, store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history, "MAX_BYTES", 256 * 1024)
    for i in range(1000):  # ~1 MB of text
        store.add("chat", "in", peer_id=BOB, nick="bob", text=f"{i:04} " + "x" * 990, room="r")
    assert store._bytes_used() <= 256 * 1024
    texts = [e.text[:4] for e in store.query()]
    assert 50 < len(texts) < 300 and texts[-1] == "0999"
    assert texts == sorted(texts), "oldest deleted first"
    store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert store_path.stat().st_size <= 2 * 256 * 1024, "freed pages are reused"


def test_two_processes_write_one_store(store_path: Path) -> None:
    go = store_path.parent / "go"
    writer = textwrap.dedent(
        """
        import os, sys, time
        from pathlib import Path
        from lanchat.history import HistoryStore
        path, go, name = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
        store = HistoryStore(path)
        print("ready", flush=True)
        while not go.exists():
            time.sleep(0.001)
        for i in range(400):
            store.add("chat", "in", peer_id=name * 16, nick=name, text=f"{name}{i}", room="r")
            if i % 100 == 0:
                store.query(limit=5)
        print("errors", store.errors, store.last_error, flush=True)
        """
    )
    HistoryStore(store_path).close()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", writer, str(store_path), str(go), name],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for name in "ab"
    ]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    go.touch()
    outputs = [proc.communicate(timeout=20)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0]
    assert outputs == ["errors 0 None\n"] * 2
    stored = [t for (t,) in rows(store_path, "SELECT text FROM messages")]
    for name in "ab":
        assert [t for t in stored if t[0] == name] == [f"{name}{i}" for i in range(400)]


# ------------------------------------------------------------------- printing


@pytest.fixture
def filled(store_path: Path) -> Path:
    with HistoryStore(store_path) as store:
        at = iter(range(0, 10_000, 60))
        add = store.add
        add("chat", "in", peer_id=BOB, nick="bob", text="hi all", room="lobby", when=T0 + next(at))
        add(
            "chat", "out", peer_id=ALICE, nick="alice", text="hey", room="lobby", when=T0 + next(at)
        )
        add(
            "chat",
            "in",
            peer_id=CAROL,
            nick="Carol",
            text="dev talk",
            room="dev",
            when=T0 + next(at),
        )
        store.add_direct(
            BOB, "bob", "psst", 1, instance=7, when=T0 + next(at)
        )  # rows print in time order
        store.set_direct_state(7, 1, BOB, "delivered")
        add("direct", "in", peer_id=BOB, nick="bob", text="yo \x1b[2J", seq=1, when=T0 + next(at))
        add("notice", "in", peer_id=BOB, nick="bob", text="fire drill", when=T0 + next(at))
        add("notice", "out", peer_id=ALICE, nick="alice", text="lunch", when=T0 + next(at))
        if MessagesLost is not None:
            store.record_event(lost(2), instance=7)
        add("direct", "out", peer_id=CAROL, nick="Carol", text="?", seq=2, state="failed")
    return store_path


def printed(path: Path, **filters: object) -> list[str]:
    args: dict[str, object] = {
        "room": None, "peer": None, "notices": False, "since": None, "as_json": False,
        "limit": None,
    }  # fmt: skip
    args.update(filters)
    out, err = io.StringIO(), io.StringIO()
    assert print_history(path, out=out, err=err, **args) == 0, err.getvalue()  # type: ignore[arg-type]
    return out.getvalue().splitlines()


def test_print_history_human_lines(filled: Path) -> None:
    lines = printed(filled)
    assert lines[:3] == [
        f"{stamp(T0)} [#lobby] <bob> hi all",
        f"{stamp(T0 + 60)} [#lobby] <alice> hey",
        f"{stamp(T0 + 120)} [#dev] <Carol> dev talk",
    ]
    bodies = [line[20:] for line in lines]
    assert bodies[3:] == [
        "[dm -> bob] psst (delivered)",
        "[dm] <bob> yo ",  # sanitized: the escape sequence is gone
        "*** NOTICE from bob: fire drill ***",
        "*** NOTICE sent: lunch ***",
        *(["!!! 2 messages from bob lost"] if MessagesLost is not None else []),
        "[dm -> Carol] ? (failed)",
    ]


def test_print_history_filters(filled: Path) -> None:
    def bodies(**filters: object) -> list[str]:
        return [line[20:] for line in printed(filled, **filters)]

    lost_line = ["!!! 2 messages from bob lost"] if MessagesLost is not None else []
    assert bodies(room="#dev") == ["[#dev] <Carol> dev talk", *lost_line]
    assert bodies(notices=True) == [
        "*** NOTICE from bob: fire drill ***",
        "*** NOTICE sent: lunch ***",
        *lost_line,
    ]
    assert bodies(room="lobby", notices=True, peer="BOB") == [
        "[#lobby] <bob> hi all",
        "*** NOTICE from bob: fire drill ***",
        *lost_line,
    ]
    assert bodies(peer="c4c4") == ["[#dev] <Carol> dev talk", "[dm -> Carol] ? (failed)"]
    assert bodies(peer="a1", room="lobby") == ["[#lobby] <alice> hey"]
    assert bodies(peer="nobody") == bodies(peer="c") == []
    assert bodies(peer="carol", limit=1) == ["[dm -> Carol] ? (failed)"]
    assert bodies(since=T0 + 100, room="lobby") == lost_line
    last_two = ["*** NOTICE sent: lunch ***", *lost_line, "[dm -> Carol] ? (failed)"][-2:]
    assert bodies(since=T0 + 100, limit=2) == last_two


def test_print_history_json(filled: Path) -> None:
    lines = printed(filled, as_json=True, peer="bob")
    objects = [json.loads(line) for line in lines]
    assert all(line.isascii() and "\x1b" not in line for line in lines)
    direct_in = next(o for o in objects if o["kind"] == "direct" and o["direction"] == "in")
    assert direct_in["text"] == "yo \x1b[2J", "JSON keeps the exact text"
    sent = next(o for o in objects if o["direction"] == "out")
    assert (sent["state"], sent["nick"], sent["peer_id"], sent["seq"]) == (
        "delivered", "bob", BOB, 1,
    )  # fmt: skip
    if MessagesLost is not None:
        assert objects[-1]["kind"] == "lost" and objects[-1]["count"] == 2


def test_print_history_without_a_store(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    path = tmp_path / "none" / "history.sqlite3"
    code = print_history(
        path, room=None, peer=None, notices=False, since=None, as_json=False, limit=10,
        out=out, err=err,
    )  # fmt: skip
    assert (code, out.getvalue()) == (0, "")
    assert "no message history yet" in err.getvalue() and not path.exists()


def test_print_history_unreadable_store(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    path.write_bytes(b"not a database at all" * 100)
    err = io.StringIO()
    code = print_history(
        path, room=None, peer=None, notices=False, since=None, as_json=False, limit=None,
        out=io.StringIO(), err=err,
    )  # fmt: skip
    assert code == 1 and "cannot open the message history" in err.getvalue()


def test_entry_fragments_dimmed_and_sanitized() -> None:
    entry = Entry(1, T0, "chat", "in", "lobby", BOB, "b\x07ob", "a\u202eb", 1, None, False, {})
    fragments = entry_fragments(entry, dim=True)
    assert plain(fragments) == f"{stamp(T0)} [#lobby] <bob> ab"
    assert {style for style, _ in fragments[2:]} == {"ansibrightblack"}


# ------------------------------------------------------------ nodes, loopback


@pytest.mark.loopback
def test_node_records_sends_receipts_and_outcomes(lo_port: int, tmp_path: Path) -> None:
    path = tmp_path / "alice.sqlite3"
    committed_when_seen: list[list[tuple[str, str]]] = []

    async def main() -> None:
        async with node("alice", lo_port, rooms=["lobby"], history=path) as a:
            assert a.history is not None and a.history.path == path
            seen = a.subscribe()
            async with node("bob", lo_port, rooms=["lobby"]) as b:
                assert b.history is None, "the library default keeps nothing"
                await until(lambda: bool(a.peers()) and bool(b.peers()))
                await a.say("#lobby", "hello")
                await b.say("lobby", "hi alice")
                event = await asyncio.wait_for(seen.get(), 3)
                while not isinstance(event, ev.ChatReceived):
                    event = await asyncio.wait_for(seen.get(), 3)
                # The subscriber sees the event only after its row was committed.
                committed_when_seen.append(rows(path, "SELECT kind, text FROM messages"))
                await a.notice("fire drill")
                outcome = await a.send_direct_wait("bob", "psst")
                assert isinstance(outcome, ev.DirectDelivered)
                await b.send_direct("alice", "back at you")
                await a.wait_for(lambda e: isinstance(e, ev.DirectReceived), 3)
        assert a.history is None, "closed with the node"

    asyncio.run(main())
    assert committed_when_seen == [[("chat", "hello"), ("chat", "hi alice")]]
    assert rows(path, "SELECT kind, direction, room, nick, text, state FROM messages") == [
        ("chat", "out", "lobby", "alice", "hello", None),
        ("chat", "in", "lobby", "bob", "hi alice", None),
        ("notice", "out", None, "alice", "fire drill", None),
        ("direct", "out", None, "bob", "psst", "delivered"),
        ("direct", "in", None, "bob", "back at you", None),
    ]


@pytest.mark.loopback
def test_join_shows_recent_lines_of_each_room_as_history(lo_port: int, tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    with HistoryStore(path) as store:
        for i in range(14):
            store.add("chat", "in", peer_id=BOB, nick="bob", text=f"lobby {i}", room="lobby")
        store.add("chat", "in", peer_id=BOB, nick="bob", text="dev 0", room="dev")
        store.add("direct", "in", peer_id=BOB, nick="bob", text="not a room line")

    async def lines() -> AsyncIterator[str]:
        yield "live line"
        yield "/join ops"
        yield "/quit"

    async def main() -> str:
        out = io.StringIO()
        async with node("alice", lo_port, rooms=["lobby", "dev"], history=path) as a:
            await run_join(a, interactive=False, room="lobby", lines=lines(), out=out)
        return out.getvalue()

    output = asyncio.run(main()).splitlines()
    marks = [i for i, line in enumerate(output) if "from history:" in line]
    assert [output[i][9:] for i in marks] == [
        "--- last 1 line(s) of #dev from history:",
        "--- last 10 line(s) of #lobby from history:",
    ]
    dated = [line[20:] for line in output if line[:4].isdigit() and line[4] == "-"]
    assert dated == ["[#dev] <bob> dev 0"] + [f"[#lobby] <bob> lobby {i}" for i in range(4, 14)]
    assert output[-2].endswith("[#lobby] <alice> live line") and "--- joined #ops" in output[-1]
    assert len(rows(path, "SELECT 1 FROM messages")) == 17, "the live line was stored too"


@pytest.mark.loopback
def test_join_without_history_shows_none(lo_port: int, tmp_path: Path) -> None:
    async def lines() -> AsyncIterator[str]:
        yield "/quit"

    async def main() -> str:
        out = io.StringIO()
        async with node("alice", lo_port) as a:
            assert a.history is None
            await run_join(a, interactive=False, room="lobby", lines=lines(), out=out)
        return out.getvalue()

    assert asyncio.run(main()) == ""
    assert not (Path(os.environ["LANCHAT_HOME"]) / history.HISTORY_FILE).exists()


@pytest.mark.loopback
def test_unusable_history_stops_start_with_a_hint(lo_port: int, tmp_path: Path) -> None:
    async def main() -> None:
        keeper = node("alice", lo_port, history=tmp_path)  # a directory, not a database
        with pytest.raises(ConfigError, match=r"message history .*--no-history runs without"):
            await keeper.start()
        assert keeper.history is None
        with pytest.raises(ClosedError):
            await keeper.say("lobby", "never sent")

    asyncio.run(main())


_KEEPER = textwrap.dedent(
    """
    import asyncio, sys
    import lanchat
    from lanchat import events as ev

    async def main(port: int) -> None:
        async with lanchat.Node("keeper", interfaces=["lo"], port=port, history=True) as node:
            queue = node.subscribe()
            print("ready", flush=True)
            while True:
                event = await queue.get()
                if isinstance(event, ev.ChatReceived):  # stored before it was queued
                    print(event.text, flush=True)

    asyncio.run(main(int(sys.argv[1])))
    """
)


@pytest.mark.loopback
def test_every_line_shown_survives_kill_9(lo_port: int) -> None:
    burst, kill_after = 300, 40

    async def main() -> list[str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _KEEPER, str(lo_port), cwd=ROOT, stdout=asyncio.subprocess.PIPE
        )
        assert proc.stdout is not None
        shown: list[str] = []
        try:
            assert await asyncio.wait_for(proc.stdout.readline(), 10) == b"ready\n"
            async with node("sender", lo_port) as sender:
                await sender.lookup("keeper", wait=3)

                async def send() -> None:
                    for i in range(burst):
                        await sender.say("lobby", f"burst {i}")
                        await asyncio.sleep(0.003)

                sending = asyncio.create_task(send())
                while len(shown) < kill_after:
                    line = await asyncio.wait_for(proc.stdout.readline(), 5)
                    shown.append(line.decode().rstrip("\n"))
                proc.send_signal(signal.SIGKILL)
                shown += (await proc.stdout.read()).decode().splitlines()
                assert not sending.done(), "killed mid-burst"
                sending.cancel()
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        assert proc.returncode == -signal.SIGKILL
        return shown

    shown = asyncio.run(main())
    assert kill_after <= len(shown) < burst
    with HistoryStore(history.default_path()) as store:
        stored = [e.text for e in store.query(room="lobby")]
    assert stored[: len(shown)] == shown, "every line shown was committed first"
