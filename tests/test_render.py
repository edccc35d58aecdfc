"""Tests for lanchat.render: events, tables and stored lines as text, remote strings sanitized."""

from __future__ import annotations

import json
import subprocess
import sys
import unicodedata
from datetime import datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lanchat import events as ev
from lanchat.render import (
    SentDirect,
    cells,
    direct_fragments,
    event_fragments,
    fit,
    format_event,
    format_peers,
    format_rooms,
    format_who,
    json_line,
    nick_style,
    plain,
    sanitize,
)

NOW = datetime(2024, 5, 6, 12, 34, 56)
BOB_ID = "b0b0b0b0b0b0b0b0"
ALICE_ID = "a1a1a1a1a1a1a1a1"


def peer(nick: str = "bob", **changes: Any) -> ev.PeerInfo:
    fields: dict[str, Any] = {
        "peer_id": BOB_ID,
        "instance": 1,
        "nick": nick,
        "host": "bobhost",
        "address": "192.0.2.7",
        "port": 40000,
        "addresses": ("192.0.2.7",),
        "rooms": ("lobby", "dev"),
        "status": "online",
        "status_text": "",
        "state": "alive",
        "last_heard": 100.0,
        "heartbeat_interval": 1.0,
    }
    fields.update(changes)
    return ev.PeerInfo(**fields)


# ------------------------------------------------------------------ sanitize


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("plain text", "plain text"),
        ("\x1b[31mred\x1b[0m", "red"),
        ("\x1b[2J\x1b[Hwiped", "wiped"),
        ("up\x1b[1Aover", "upover"),
        ("\x1b]0;new title\x07after", "after"),
        ("\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\", "link"),
        ("\x1bPdevice\x1b\\x", "x"),
        ("lone \x1b", "lone "),
        ("\x1b7saved\x1b8", "saved"),
        ("\x1b(0graphics", "graphics"),
        ("\x9b31mc1\x9b0m", "c1"),
        ("bell\x07", "bell"),
        ("ok\rEVIL", "ok EVIL"),
        ("two\nlines\ttab", "two lines tab"),
        ("nul\x00del\x7f", "nuldel"),
        ("\u202eevil\u202c", "evil"),
        ("ünïcödé 日本語 🎉 👩\u200d💻", "ünïcödé 日本語 🎉 👩\u200d💻"),
        ("\udcff", "\ufffd"),
    ],
)
def test_sanitize(raw: str, clean: str) -> None:
    assert sanitize(raw) == clean


def test_sanitize_leaves_no_control_characters() -> None:
    nasty = "".join(chr(c) for c in range(0x00, 0xA0)) + "\x1b[1;31m" + "é"
    out = sanitize(nasty)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in out)
    assert out.endswith("é") and "\x1b" not in out


def test_nick_style_is_stable_and_spreads() -> None:
    assert nick_style("alice") == nick_style("alice")
    assert len({nick_style(f"user{i}") for i in range(50)}) > 5
    # A CRC, not the per-process salted hash(): pinned for one name.
    assert nick_style("alice") == nick_style(str("ali" + "ce"))


# -------------------------------------------------------------- format_event

P = peer()


@pytest.mark.parametrize(
    ("event", "line"),
    [
        (ev.ChatReceived(BOB_ID, "bob", "lobby", "hi all", 3), "12:34:56 [#lobby] <bob> hi all"),
        (ev.DirectReceived(BOB_ID, "bob", "psst", 1), "12:34:56 [dm] <bob> psst"),
        (
            ev.NoticeReceived(BOB_ID, "bob", "fire drill", 2),
            "12:34:56 *** NOTICE from bob: fire drill ***",
        ),
        (ev.PeerJoined(P), "12:34:56 --> bob joined (b0b0b0b0 on bobhost, in #lobby #dev)"),
        (
            ev.PeerJoined(peer(rooms=())),
            "12:34:56 --> bob joined (b0b0b0b0 on bobhost, in no rooms)",
        ),
        (ev.PeerLeft(P, "bye"), "12:34:56 <-- bob left"),
        (ev.PeerLeft(P, "timeout"), "12:34:56 <-- bob timed out"),
        (ev.PeerRestarted(P), "12:34:56 --- bob restarted"),
        (ev.PeerRenamed(peer("robert"), "bob"), "12:34:56 --- bob is now robert"),
        (
            ev.PeerStatusChanged(peer(status="away", status_text="lunch")),
            "12:34:56 --- bob is away: lunch",
        ),
        (ev.PeerStatusChanged(peer(status="away")), "12:34:56 --- bob is away"),
        (ev.PeerStatusChanged(P), "12:34:56 --- bob is back"),
        (ev.PeerUnreachable(P), "12:34:56 --- bob is unreachable"),
        (ev.PeerReachable(P), "12:34:56 --- bob is reachable again"),
        (ev.PeerJoinedRoom(P, "dev"), "12:34:56 --> bob joined #dev"),
        (ev.PeerLeftRoom(P, "dev"), "12:34:56 <-- bob left #dev"),
        (ev.DirectDelivered(7, BOB_ID, 1), "12:34:56 [dm -> b0b0b0b0] delivered"),
        (
            ev.DirectFailed(7, BOB_ID, 6, peer_alive=False),
            "12:34:56 [dm -> b0b0b0b0] failed (no answer after 6 attempts)",
        ),
        (
            ev.DirectFailed(7, BOB_ID, 6, peer_alive=True),
            "12:34:56 [dm -> b0b0b0b0] unconfirmed (peer was alive; acknowledgements lost)",
        ),
        (ev.NoticeAcknowledged(2, BOB_ID), "12:34:56 --- your notice was seen by b0b0b0b0"),
        (
            ev.ChatReceived(BOB_ID, "bob", "lobby", "hi", 3, late=True),
            "12:34:56 [#lobby] <bob> hi (late: repaired after loss)",
        ),
        (
            ev.NoticeReceived(BOB_ID, "bob", "drill", 4, late=True),
            "12:34:56 *** NOTICE from bob: drill *** (late)",
        ),
        (
            ev.MessagesLost(BOB_ID, "bob", 2, 5, 6),
            "12:34:56 !!! 2 messages from bob could not be repaired and were lost",
        ),
    ],
)
def test_format_event(event: ev.Event, line: str) -> None:
    assert format_event(event, NOW) == line


def test_format_event_names_direct_outcomes_and_acks() -> None:
    sent = {7: SentDirect("bob", "the report is ready, please have a look when you can")}
    nicks = {BOB_ID: "bobby"}
    delivered = format_event(ev.DirectDelivered(7, BOB_ID, 2), NOW, sent=sent, nicks=nicks)
    assert delivered == "12:34:56 [dm -> bob] delivered: the report is ready, please have a look…"
    failed = format_event(ev.DirectFailed(7, BOB_ID, 6, False), NOW, sent=sent)
    assert failed.startswith("12:34:56 [dm -> bob] failed (no answer after 6 attempts): the ")
    other = format_event(ev.DirectDelivered(8, BOB_ID, 1), NOW, sent=sent, nicks=nicks)
    assert other == "12:34:56 [dm -> bobby] delivered"
    ack = format_event(ev.NoticeAcknowledged(1, BOB_ID), NOW, nicks=nicks)
    assert ack == "12:34:56 --- your notice was seen by bobby"


def test_format_event_sanitizes_every_remote_string() -> None:
    evil = "\x1b[2J\x1b]0;t\x07"
    bad = peer(
        nick=f"b{evil}ob",
        host=f"h{evil}\r",
        rooms=(f"r{evil}",),
        status="away",
        status_text="x\x1b[31m",
    )
    events: list[ev.Event] = [
        ev.ChatReceived(BOB_ID, f"b{evil}ob", f"r{evil}", f"t{evil}\r\n", 1),
        ev.DirectReceived(BOB_ID, f"b{evil}ob", f"t{evil}", 1),
        ev.NoticeReceived(BOB_ID, f"b{evil}ob", f"t{evil}", 1),
        ev.PeerJoined(bad),
        ev.PeerLeft(bad, f"odd{evil}"),
        ev.PeerRenamed(bad, f"o{evil}ld"),
        ev.PeerStatusChanged(bad),
        ev.PeerJoinedRoom(bad, f"r{evil}"),
        ev.PeerLeftRoom(bad, f"r{evil}"),
        ev.DirectDelivered(1, BOB_ID, 1),
    ]
    for event in events:
        for _, text in event_fragments(event, NOW, sent={1: SentDirect(bad.nick, evil)}):
            assert "\x1b" not in text and "\x07" not in text and "\r" not in text, event
            assert "\n" not in text, event
    assert format_event(events[0], NOW) == "12:34:56 [#r] <bob> t  "
    assert format_event(ev.PeerLeft(bad, f"odd{evil}"), NOW) == "12:34:56 <-- bob left (odd)"


def test_event_fragments_colour_the_nick() -> None:
    fragments = event_fragments(ev.ChatReceived(BOB_ID, "bob", "lobby", "hi", 1), NOW)
    assert (nick_style("bob"), "<bob>") in fragments
    notice = event_fragments(ev.NoticeReceived(BOB_ID, "bob", "x", 1), NOW)
    assert any("reverse" in style for style, _ in notice)


# -------------------------------------------------------------------- tables


def test_format_peers_table() -> None:
    carol = peer(
        "carol",
        peer_id="c0c0c0c0c0c0c0c0",
        host="日本",
        rooms=(),
        status="away",
        status_text="lunch",
        state="unreachable",
        last_heard=97.5,
    )
    lines = format_peers([peer(), carol], now=101.25)
    assert lines[0].split() == [
        "NICK",
        "ID",
        "HOST",
        "ADDRESS",
        "ROOMS",
        "STATUS",
        "STATE",
        "HEARD",
    ]
    assert lines[1].split() == [
        "bob",
        "b0b0b0b0",
        "bobhost",
        "192.0.2.7:40000",
        "#lobby",
        "#dev",
        "online",
        "alive",
        "1.2s",
        "ago",
    ]
    assert "away: lunch" in lines[2] and "unreachable" in lines[2] and "3.8s ago" in lines[2]
    # Columns line up (the wide host counts as two cells per character).
    assert lines[1].index("192.0.2.7") == lines[2].index("192.0.2.7") + len("日本")
    assert format_peers([], now=0.0) == ["no peers yet"]


def test_format_rooms() -> None:
    carol = peer("carol", peer_id="c0c0c0c0c0c0c0c0", rooms=("lobby", "games"))
    lines = format_rooms(("lobby", "dev", "empty"), "dev", [peer(), carol])
    assert lines == [
        "  #lobby: bob, carol",
        "* #dev: bob",
        "  #empty: (nobody else)",
        "  #games (not joined): carol",
    ]
    assert format_rooms((), None, []) == ["you are in no room; /join ROOM"]


def test_format_who() -> None:
    me = peer("alice", peer_id=ALICE_ID, rooms=("lobby",))
    carol = peer(
        "carol",
        peer_id="c0c0c0c0c0c0c0c0",
        rooms=("lobby",),
        status="away",
        status_text="lunch",
        last_heard=98.75,
    )
    dave = peer("dave", peer_id="d0d0d0d0d0d0d0d0", rooms=("dev",))
    ghost = peer("gh\x1b[2Jost", peer_id="e0e0e0e0e0e0e0e0", rooms=("lobby",), state="unreachable")
    lines = format_who("lobby", [peer(), carol, dave, ghost], 100.5, me)
    assert lines == [
        "#lobby: 4 people",
        "  NICK   STATUS                HEARD",
        "  alice  online                (you)",
        "  bob    online                0.5s ago",
        "  carol  away: lunch           1.8s ago",
        "  ghost  online (unreachable)  0.5s ago",
    ]
    assert format_who("dev", [peer(), dave], 100.0) == [
        "#dev: 2 people",
        "  NICK  STATUS  HEARD",
        "  bob   online  0.0s ago",
        "  dave  online  0.0s ago",
    ]
    assert format_who("empty", [peer()], 100.0) == ["#empty: 0 people (nobody here)"]


@pytest.mark.parametrize(
    ("event", "line"),
    [
        (ev.PairSought(peer()), "12:34:56 --- bob is looking for a partner: /random to pair"),
        (
            ev.Paired(peer()),
            "12:34:56 *** paired with bob (bobhost): what you type goes to them only;"
            " /leave ends it",
        ),
        (ev.PairEnded(peer(), "you left"), "12:34:56 --- you left the conversation with bob"),
        (ev.PairEnded(peer(), "partner left"), "12:34:56 --- bob left the conversation"),
        (
            ev.PairEnded(peer(), "partner gone"),
            "12:34:56 --- bob is gone; the conversation is over",
        ),
        (
            ev.PairEnded(peer(), "unconfirmed"),
            "12:34:56 --- pairing with bob was not confirmed (datagrams lost); still looking",
        ),
        (
            ev.PairSearchExpired(300.0),
            "12:34:56 --- nobody paired with you in 300s; /random to try again",
        ),
    ],
)
def test_format_pair_events(event: ev.Event, line: str) -> None:
    assert format_event(event, NOW) == line


def test_direct_fragments_show_each_state() -> None:
    sent = SentDirect("bob", "psst\x1b[2J", "12:00:01")
    assert plain(direct_fragments(sent, "sent")) == "12:00:01 [dm -> bob] psst (sent)"
    delivered = direct_fragments(sent, "delivered")
    assert plain(delivered) == "12:00:01 [dm -> bob] psst (delivered)"
    assert delivered[-1][0] == "ansigreen"
    failed = direct_fragments(sent, "failed", ": no answer after 6 attempts")
    assert plain(failed).endswith("(failed: no answer after 6 attempts)")


# ------------------------------------------------------- widths, a pure module


@pytest.mark.parametrize("text", ["", "bob", "日本語", "e\u0301", "a\x1bb", "🙂x", "\u200b"])
def test_cells_measure_as_prompt_toolkit_does(text: str) -> None:
    from prompt_toolkit.utils import get_cwidth

    assert cells(text) == get_cwidth(text)


def test_fit_cuts_at_the_cell_width_with_an_ellipsis() -> None:
    line = [("bold", "[dm] "), ("", "日本語です")]
    assert plain(fit(line, 80)) == "[dm] 日本語です"
    assert fit(line, 10) == [("bold", "[dm] "), ("", "日本…")]
    assert cells(plain(fit(line, 10))) <= 10


def test_render_loads_no_terminal_library_nor_history() -> None:
    code = "import sys, lanchat.render; print(' '.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(result.stdout.split())
    assert "lanchat.render" in loaded
    assert not {"prompt_toolkit", "lanchat.history", "sqlite3", "click"} & loaded


@given(st.text())
def test_json_line_round_trips_and_leaves_no_control_raw(text: str) -> None:
    line = json_line({"text": text})
    assert json.loads(line) == {"text": text}
    assert "\n" not in line
    raw = [ch for ch in line if unicodedata.category(ch) == "Cc" or ch in "\u2028\u2029"]
    assert raw == [] and not any(ch in line for ch in "\u202a\u202b\u202c\u202d\u202e\u2066\u2069")
