"""Tests for lanchat.chat: the chat session, on loopback and on an injected clock."""

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
from datetime import datetime, timedelta
from pathlib import Path

import pexpect
import pytest

from lanchat import events as ev
from lanchat.chat import Clock, _Session, loop_clock, read_lines, run_join
from lanchat.render import plain
from tests.loopback_helpers import node, until
from tests.test_render import peer

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
    nick = "alice"
    partner = None
    pair_state = "idle"

    def peers(self) -> list[ev.PeerInfo]:
        return []


def quiet_session(out: io.StringIO, clock: Clock) -> _Session:
    """A non-interactive session printing into `out`, on a node that only has events."""
    return _Session(
        _QuietNode(),  # type: ignore[arg-type]
        "lobby",
        out=out,
        interactive=False,
        colour=False,
        clock=clock,
    )


P = peer()


def test_a_peer_unreachable_for_a_moment_is_not_shown_one_that_stays_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import lanchat.chat as chat_module

    monkeypatch.setattr(chat_module, "UNREACHABLE_SHOWN_AFTER", 0.05)
    out = io.StringIO()

    async def main() -> None:
        session = quiet_session(out, loop_clock())
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


# ------------------------------------------------------------ an injected clock


class _StepClock:
    """Time that moves only when a test moves it: monotonic seconds and the wall clock."""

    def __init__(self) -> None:
        self.seconds = 1000.0

    def monotonic(self) -> float:
        return self.seconds

    def wall(self) -> datetime:
        return datetime(2024, 5, 6, 12, 0, 0) + timedelta(seconds=self.seconds - 1000.0)


def test_session_reads_the_time_from_its_clock() -> None:
    """A pinned notice expires and lines are stamped by the injected clock, not the real one."""
    steps = _StepClock()
    out = io.StringIO()
    session = quiet_session(out, Clock(steps.monotonic, steps.wall))
    session.on_event(ev.NoticeReceived(P.peer_id, "bob", "fire drill", 1))
    pinned = "*** NOTICE from bob: fire drill ***"
    assert pinned in plain(session.prompt_fragments(80))
    steps.seconds += 599.0  # a notice stays pinned 600 s
    assert pinned in plain(session.prompt_fragments(80))
    steps.seconds += 2.0
    assert plain(session.prompt_fragments(80)) == "[#lobby] alice> "
    session.info("still here")
    assert out.getvalue().splitlines() == [
        f"12:00:00 {pinned}",
        "12:10:01 --- still here",
    ]
