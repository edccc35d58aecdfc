"""Tests for lanchat.chat: the pure parser, formatter and sanitizer; sessions on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pexpect
import pytest

from lanchat import events as ev
from lanchat.chat import (
    COMMANDS,
    Away,
    Back,
    Command,
    Help,
    Invalid,
    Join,
    Leave,
    Msg,
    Nick,
    Notice,
    Peers,
    Quit,
    Rooms,
    Say,
    SentDirect,
    completions,
    event_fragments,
    format_event,
    format_peers,
    format_rooms,
    help_lines,
    nick_style,
    parse_line,
    read_lines,
    run_join,
    sanitize,
)
from tests.loopback_helpers import node, until

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


# ---------------------------------------------------------------- parse_line


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("", None),
        ("   \t ", None),
        ("\n", None),
        ("hello world", Say("hello world")),
        ("  indented stays  ", Say("  indented stays  ")),
        ("hello\r\n", Say("hello")),
        ("//not a command", Say("/not a command")),
        ("/help", Help()),
        ("/HELP me", Help()),
        ("/nick robert", Nick("robert")),
        ("/nick", Invalid("usage: /nick NEW (one word, no spaces)")),
        ("/nick two words", Invalid("usage: /nick NEW (one word, no spaces)")),
        ("/msg alice hi there  you", Msg("alice", "hi there  you")),
        ("/msg   a1b2   spaced", Msg("a1b2", "spaced")),
        ("/msg alice", Invalid("usage: /msg PEER TEXT")),
        ("/msg", Invalid("usage: /msg PEER TEXT")),
        ("/notice fire drill at 3", Notice("fire drill at 3")),
        ("/notice   ", Invalid("usage: /notice TEXT")),
        ("/peers", Peers()),
        ("/peers now", Invalid("usage: /peers (no arguments)")),
        ("/join dev", Join("dev")),
        ("/join #dev", Join("#dev")),
        ("/join", Invalid("usage: /join ROOM")),
        ("/join a b", Invalid("usage: /join ROOM")),
        ("/leave", Leave(None)),
        ("/leave dev", Leave("dev")),
        ("/leave a b", Invalid("usage: /leave [ROOM]")),
        ("/rooms", Rooms()),
        ("/rooms x", Invalid("usage: /rooms (no arguments)")),
        ("/away", Away("")),
        ("/away gone to lunch", Away("gone to lunch")),
        ("/back", Back()),
        ("/back x", Invalid("usage: /back (no arguments)")),
        ("/quit", Quit()),
        ("/exit", Quit()),
        ("/quit now", Invalid("usage: /quit")),
        ("/", Invalid("empty command; try /help")),
        ("/ nick", Invalid("empty command; try /help")),
        ("/frobnicate x", Invalid("unknown command /frobnicate; try /help")),
    ],
)
def test_parse_line(line: str, expected: Command | None) -> None:
    assert parse_line(line) == expected


def test_every_command_is_in_help_and_known_to_the_parser() -> None:
    text = "\n".join(help_lines())
    for command in COMMANDS:
        assert f"  {command}" in text
        for line in (command, f"{command} x y"):
            parsed = parse_line(line)
            assert parsed is not None
            assert not (isinstance(parsed, Invalid) and "unknown" in parsed.reason), line


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


# ------------------------------------------------------- tables, completion


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


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/", [f"{c} " for c in COMMANDS]),
        ("/n", ["/nick ", "/notice "]),
        ("/MS", ["/msg "]),
        ("/msg ", ["bob ", "bobby ", "carol "]),
        ("/msg bo", ["bob ", "bobby "]),
        ("/msg CA", ["carol "]),
        ("/msg bob hello c", ["carol"]),
        ("/join ", ["dev", "lobby"]),
        ("/join #d", ["#dev"]),
        ("/leave l", ["lobby"]),
        ("/join dev x", []),
        ("/nick b", []),
        ("hi ca", ["carol"]),
        ("hi ", []),
        ("", []),
    ],
)
def test_completions(text: str, expected: list[str]) -> None:
    assert completions(text, ["carol", "bob", "bobby", "bob"], ["lobby", "dev"]) == expected


# ---------------------------------------------------------------- read_lines


def test_read_lines_splits_decodes_and_ends_at_eof() -> None:
    async def main() -> list[str]:
        read_fd, write_fd = os.pipe()
        os.write(write_fd, "one\r\ntwo\n\nd\xe9j\xe0 ".encode() + b"\xff\n" + "last ü".encode())
        os.close(write_fd)
        try:
            return [line async for line in read_lines(read_fd)]
        finally:
            os.close(read_fd)

    assert asyncio.run(main()) == ["one", "two", "", "déjà \ufffd", "last ü"]


# ------------------------------------------------------ sessions on loopback


def drain(queue: asyncio.Queue[ev.Event]) -> list[ev.Event]:
    return [queue.get_nowait() for _ in range(queue.qsize())]


@pytest.mark.loopback
def test_session_commands_reach_the_other_node(lo_port: int) -> None:
    async def main() -> tuple[list[ev.Event], str]:
        async with node("alice", lo_port) as alice, node("bob", lo_port) as bob:
            seen = alice.subscribe()
            await until(lambda: len(alice.peers()) == 1 and len(bob.peers()) == 1)
            out = io.StringIO()
            fed = []

            async def lines() -> AsyncIterator[str]:
                for line in ["hello", "/nick robert", "/msg alice hi", "/join dev", "/quit"]:
                    fed.append(line)
                    yield line
                fed.append("past quit")
                yield "past quit"

            rc = await asyncio.wait_for(
                run_join(bob, interactive=False, room="lobby", lines=lines(), out=out), 8
            )
            assert rc == 0 and fed[-1] == "/quit"
            assert bob.nick == "robert" and bob.rooms == ("lobby", "dev")
            await asyncio.sleep(0.05)
            return drain(seen), out.getvalue()

    got, output = asyncio.run(main())
    chats = [e for e in got if isinstance(e, ev.ChatReceived)]
    assert [(c.nick, c.room, c.text) for c in chats] == [("bob", "lobby", "hello")]
    renamed = [e for e in got if isinstance(e, ev.PeerRenamed)]
    assert [(r.old_nick, r.peer.nick) for r in renamed] == [("bob", "robert")]
    directs = [e for e in got if isinstance(e, ev.DirectReceived)]
    assert [(d.nick, d.text) for d in directs] == [("robert", "hi")]
    joined = [e for e in got if isinstance(e, ev.PeerJoinedRoom)]
    assert [(j.peer.nick, j.room) for j in joined] == [("robert", "dev")]
    lines = [re.sub(r"^\d\d:\d\d:\d\d ", "", line) for line in output.splitlines()]
    assert lines.index("[#lobby] <bob> hello") < lines.index("--- you are now robert")
    assert "[dm -> alice] hi (sent)" in lines
    assert "[dm -> alice] delivered: hi" in lines
    assert lines.index("[dm -> alice] hi (sent)") < lines.index("[dm -> alice] delivered: hi")
    assert "--- joined #dev" in lines
    assert "past quit" not in output


@pytest.mark.loopback
def test_session_reports_errors_and_goes_on(lo_port: int) -> None:
    async def main() -> tuple[list[ev.Event], list[str]]:
        async with node("alice", lo_port) as alice, node("bob", lo_port) as bob:
            seen = alice.subscribe()
            await until(lambda: len(alice.peers()) == 1 and len(bob.peers()) == 1)

            async def lines() -> AsyncIterator[str]:
                for line in [
                    "/msg nobody hi",
                    "/frob",
                    "x" * 1200,
                    "/nick not valid",
                    "/nick " + "n" * 40,
                    "/leave nowhere",
                    "/join bad\x01room",
                    "",
                    "/peers",
                    "/rooms",
                    "/away lunch",
                    "/leave",
                    "orphan line",
                    "/join lobby",
                    "still here",
                ]:
                    yield line

            out = io.StringIO()
            rc = await run_join(bob, interactive=False, room="#lobby", lines=lines(), out=out)
            assert rc == 0
            await asyncio.sleep(0.05)
            return drain(seen), out.getvalue().splitlines()

    got, lines = asyncio.run(main())
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == [
        "error: no peer named 'nobody'",
        "error: unknown command /frob; try /help",
        "error: message is 1200 bytes, at most 1000",
        "error: usage: /nick NEW (one word, no spaces)",
        "error: nickname is 40 bytes, at most 32",
        "error: you are not in #nowhere",
        "error: room name may not contain spaces or control characters",
        "error: you are in no room; /join ROOM first",
    ]
    assert any(line.startswith("alice ") and "127.0.0.1:" in line for line in lines)
    assert "* #lobby: alice" in lines
    assert any(line.endswith("--- left #lobby; you are in no room now") for line in lines)
    assert [e.text for e in got if isinstance(e, ev.ChatReceived)] == ["still here"]
    away = [e.peer.status_text for e in got if isinstance(e, ev.PeerStatusChanged)]
    assert away == ["lunch"]


@pytest.mark.loopback
def test_session_shows_incoming_events(lo_port: int) -> None:
    async def main() -> str:
        async with node("alice", lo_port, rooms=["lobby", "dev"]) as alice:
            async with node("bob", lo_port) as bob:
                out = io.StringIO()
                go = asyncio.Event()

                async def lines() -> AsyncIterator[str]:
                    await go.wait()
                    yield "/notice drill"

                task = asyncio.create_task(
                    run_join(bob, interactive=False, room="lobby", lines=lines(), out=out)
                )
                await until(lambda: len(alice.peers()) == 1 and len(bob.peers()) == 1)
                await alice.say("lobby", "hi \x1b[31mbob\x1b[0m\r")
                await alice.say("dev", "bob is not in dev")
                await alice.send_direct("bob", "psst")
                await alice.set_away("lunch")
                await until(lambda: "away: lunch" in out.getvalue())
                go.set()
                assert await asyncio.wait_for(task, 5) == 0
            await until(lambda: alice.peers() == [])
        return out.getvalue()

    output = asyncio.run(main())
    assert re.search(r"^\d\d:\d\d:\d\d --> alice joined \(", output, re.M)
    assert "[#lobby] <alice> hi bob \n" in output
    assert "bob is not in dev" not in output
    assert "[dm] <alice> psst" in output
    assert "--- alice is away: lunch" in output
    assert "*** NOTICE sent: drill ***" in output
    assert "--- your notice was seen by alice" in output
    assert "\x1b" not in output


@pytest.mark.loopback
def test_session_cancelled_cleans_up(lo_port: int) -> None:
    async def main() -> None:
        async with node("bob", lo_port) as bob:
            closed = []

            async def lines() -> AsyncIterator[str]:
                try:
                    await asyncio.Event().wait()
                    yield "never"
                finally:
                    closed.append(True)

            task = asyncio.create_task(
                run_join(bob, interactive=False, room="lobby", lines=lines(), out=io.StringIO())
            )
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert closed == [True]
            names = {t.get_name() for t in asyncio.all_tasks()}
            assert "lanchat-chat-events" not in names

    asyncio.run(main())


DRIVER = textwrap.dedent(
    """
    import asyncio, sys
    import lanchat
    from lanchat.chat import run_join

    async def main() -> int:
        node = lanchat.Node(sys.argv[1], interfaces=["lo"], port=int(sys.argv[2]))
        await node.start()
        try:
            return await run_join(node, interactive=sys.stdin.isatty(), room="lobby")
        finally:
            await node.close()

    sys.exit(asyncio.run(main()))
    """
)


@pytest.mark.loopback
def test_piped_stdin_from_a_file(lo_port: int, tmp_path: Path) -> None:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    script = tmp_path / "lines.txt"
    script.write_text("hello from a file\n/notice done\n")

    async def main() -> tuple[list[ev.Event], subprocess.CompletedProcess[str]]:
        async with node("listener", lo_port) as listener:
            seen = listener.subscribe()
            with script.open() as stdin:
                proc = await asyncio.to_thread(
                    subprocess.run,
                    [sys.executable, str(driver), "scripted", str(lo_port)],
                    stdin=stdin,
                    capture_output=True,
                    text=True,
                    timeout=10,
                )
            await asyncio.sleep(0.05)
            return drain(seen), proc

    got, proc = asyncio.run(main())
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "[#lobby] <scripted> hello from a file" in proc.stdout
    assert [e.text for e in got if isinstance(e, ev.ChatReceived)] == ["hello from a file"]
    assert [e.text for e in got if isinstance(e, ev.NoticeReceived)] == ["done"]
    left = [e for e in got if isinstance(e, ev.PeerLeft)]
    assert [e.reason for e in left] == ["bye"]


_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[()][A-Z0-9]|\x1b[=>]|\r")


class Terminal:
    """A pexpect child read from a thread, its output kept without escape sequences."""

    def __init__(self, child: pexpect.spawn) -> None:
        self.child = child
        self.text = ""

    def _read(self) -> None:
        with contextlib.suppress(pexpect.TIMEOUT):
            self.text += _ANSI.sub("", self.child.read_nonblocking(4096, timeout=0.05))

    async def expect(self, wanted: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while wanted not in self.text:
            assert time.monotonic() < deadline, f"{wanted!r} not in {self.text[-400:]!r}"
            await asyncio.to_thread(self._read)


@pytest.mark.loopback
def test_interactive_prompt_keeps_typed_line_intact(lo_port: int, tmp_path: Path) -> None:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "PROMPT_TOOLKIT_NO_CPR": "1", "TERM": "xterm"}
    child = pexpect.spawn(
        sys.executable,
        [str(driver), "alice", str(lo_port)],
        env=env,
        encoding="utf-8",
        dimensions=(24, 120),
    )

    async def main() -> list[ev.Event]:
        term = Terminal(child)
        async with node("bob", lo_port) as bob:
            seen = bob.subscribe()
            await term.expect("[#lobby] alice>")
            await until(lambda: len(bob.peers()) == 1, 5)
            await term.expect("--> bob joined")
            child.send("hello wor")
            await term.expect("hello wor")
            await bob.say("lobby", "incoming while typing")
            await term.expect("[#lobby] <bob> incoming while typing")
            child.send("ld\r")
            await term.expect("[#lobby] <alice> hello world")
            child.send("/nick al\r")
            await term.expect("[#lobby] al>")
            child.sendcontrol("d")
            await asyncio.to_thread(child.expect, pexpect.EOF, timeout=5)
            await until(lambda: bob.peers() == [])
            return drain(seen)

    try:
        got = asyncio.run(main())
    finally:
        child.close()
    assert child.exitstatus == 0
    assert [e.text for e in got if isinstance(e, ev.ChatReceived)] == ["hello world"]
    assert [e.peer.nick for e in got if isinstance(e, ev.PeerRenamed)] == ["al"]


# ------------------------------------------------ /who, /random, the screen

from lanchat.chat import Random, Who, direct_fragments, format_who, plain  # noqa: E402


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("/who", Who(None)),
        ("/who #dev", Who("#dev")),
        ("/who a b", Invalid("usage: /who [ROOM]")),
        ("/random", Random()),
        ("/RANDOM", Random()),
        ("/random bob", Invalid("usage: /random (no arguments)")),
    ],
)
def test_parse_who_and_random(line: str, expected: Command) -> None:
    assert parse_line(line) == expected


def test_completions_of_who_and_random() -> None:
    assert completions("/w", [], []) == ["/who "]
    assert completions("/ra", [], []) == ["/random "]
    assert completions("/who l", ["bob"], ["lobby", "dev"]) == ["lobby"]
    assert completions("/random b", ["bob"], ["lobby"]) == []


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


@pytest.mark.loopback
def test_session_random_pairing_and_who(lo_port: int) -> None:
    """Two sessions type /random: they pair, talk privately, /who lists the room, /leave ends it."""

    async def main() -> tuple[str, str, list[ev.Event]]:
        async with node("alice", lo_port) as alice, node("bob", lo_port) as bob:
            seen = alice.subscribe()
            await until(lambda: len(alice.peers()) == 1 and len(bob.peers()) == 1)
            out_a, out_b = io.StringIO(), io.StringIO()
            paired = asyncio.Event()
            done = asyncio.Event()

            async def lines_a() -> AsyncIterator[str]:
                yield "/random"
                await paired.wait()
                yield "just between us"
                yield "/who"
                await until(lambda: "delivered: just between us" in out_a.getvalue())
                yield "/leave"
                await until(lambda: "you left the conversation" in out_a.getvalue())
                yield "back in the room"
                await done.wait()

            async def lines_b() -> AsyncIterator[str]:
                await until(lambda: "alice is looking for a partner" in out_b.getvalue())
                yield "/random"
                await until(lambda: "paired with alice" in out_b.getvalue())
                paired.set()
                await until(lambda: "alice left the conversation" in out_b.getvalue(), 8)
                await until(lambda: "back in the room" in out_b.getvalue())
                done.set()

            tasks = [
                run_join(alice, interactive=False, room="lobby", lines=lines_a(), out=out_a),
                run_join(bob, interactive=False, room="lobby", lines=lines_b(), out=out_b),
            ]
            assert await asyncio.wait_for(asyncio.gather(*tasks), 20) == [0, 0]
            return out_a.getvalue(), out_b.getvalue(), drain(seen)

    out_a, out_b, seen = asyncio.run(main())
    a = [re.sub(r"^\d\d:\d\d:\d\d ", "", line) for line in out_a.splitlines()]
    b = [re.sub(r"^\d\d:\d\d:\d\d ", "", line) for line in out_b.splitlines()]
    assert "--- looking for a partner: whoever else types /random; /leave to stop" in a
    assert any(line.startswith("*** paired with bob (") for line in a)
    # While paired, a typed line is a direct message to the partner, not chat.
    assert "[dm -> bob] just between us (sent)" in a
    assert "[dm] <alice> just between us" in b
    assert [e.text for e in seen if isinstance(e, ev.ChatReceived)] == []
    assert "#lobby: 2 people" in a
    assert any(re.fullmatch(r"  bob    online  \d\.\ds ago", line) for line in a), a
    assert "--- you left the conversation with bob" in a and "--- back in #lobby" in a
    assert "--- alice left the conversation" in b and "--- back in #lobby" in b
    # After /leave, lines go to the room again.
    assert "[#lobby] <alice> back in the room" in b


# ------------------------------------------------ brief unreachability is not news


class _QuietNode:
    """What a chat session reads of its node when it only prints events."""

    rooms = ("lobby",)
    history = None

    def peers(self) -> list[ev.PeerInfo]:
        return []


def test_a_peer_unreachable_for_a_moment_is_not_shown_one_that_stays_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import lanchat.chat as chat_module

    monkeypatch.setattr(chat_module, "UNREACHABLE_SHOWN_AFTER", 0.05)
    out = io.StringIO()

    async def main() -> None:
        session = chat_module._Session(
            _QuietNode(),  # type: ignore[arg-type]
            "lobby",
            out=out,
            interactive=False,
            colour=False,
        )
        session.on_event(ev.PeerUnreachable(P))  # a flap: back within the hold
        session.on_event(ev.PeerReachable(P))
        await asyncio.sleep(0.1)
        assert out.getvalue() == ""
        session.on_event(ev.PeerUnreachable(P))  # it lasts: shown once, then its return
        session.on_event(ev.PeerUnreachable(P))
        await asyncio.sleep(0.1)
        session.on_event(ev.PeerReachable(P))
        session.on_event(ev.PeerUnreachable(P))  # and a timeout after a hold: only the leave
        session.on_event(ev.PeerLeft(P, "timeout"))
        await asyncio.sleep(0.1)

    asyncio.run(main())
    lines = [line.split(" ", 1)[1] for line in out.getvalue().splitlines()]
    assert lines == [
        "--- bob is unreachable",
        "--- bob is reachable again",
        "<-- bob timed out",
    ]
