"""Real `lanchat.Node`s on the fake LAN, in virtual time: no socket, no sleep.

`lanchat.testing.run` runs a coroutine on an event loop whose clock jumps to the
next timer whenever nothing is ready; `FakeLan.node()` makes a Node whose
transport is the fake LAN. Every test here would take many wall seconds on
real sockets and takes milliseconds.
"""

from __future__ import annotations

import asyncio
import io
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import lanchat
from lanchat import codec, netif
from lanchat import config as cfg
from lanchat import events as ev
from lanchat.chat import run_join
from lanchat.testing import FakeLan, TimerStuck, run


@pytest.fixture
def no_real_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[Any, ...]]]:
    """Records every IP socket opened and every real interface read (the tests want none)."""
    opened: list[tuple[Any, ...]] = []
    real_init = socket.socket.__init__

    def guarded(self: socket.socket, family: Any = -1, *args: Any, **kwargs: Any) -> None:
        if family in (-1, socket.AF_INET, socket.AF_INET6):  # -1: the default, AF_INET
            opened.append((family, *args))
        real_init(self, family, *args, **kwargs)

    def no_read() -> list[netif.InterfaceInfo]:
        opened.append(("netif.read_interfaces",))
        return []

    monkeypatch.setattr(socket.socket, "__init__", guarded)
    monkeypatch.setattr(netif, "read_interfaces", no_read)
    yield opened


def test_two_nodes_meet_and_chat_in_virtual_time(no_real_network: list[tuple[Any, ...]]) -> None:
    lan = FakeLan(seed=1)

    async def main() -> float:
        loop = asyncio.get_running_loop()
        async with lan.node("alice", rooms=["lobby", "dev"]) as a, lan.node("bob") as b:
            peer = await b.lookup("alice", wait=5)
            assert peer.nick == "alice" and peer.address == lan.station(a).ips[0]
            assert peer.rooms == ("lobby", "dev") and peer.host == "host-alice"
            assert loop.time() - 1000.0 < 0.1  # found within the announce burst
            await a.say("lobby", "hello bob")
            chat = await b.wait_for(lambda e: isinstance(e, ev.ChatReceived), 5)
            assert isinstance(chat, ev.ChatReceived) and chat.text == "hello bob"
            assert chat.peer_id == a.peer_id and not chat.late
            await asyncio.sleep(30)  # half a minute of heartbeats
            assert [p.nick for p in a.peers()] == ["bob"] and b.peers()[0].state == "alive"
        return loop.time()

    started = time.perf_counter()
    ended = run(main())
    assert time.perf_counter() - started < 5  # 30 virtual seconds, not 30 real ones
    assert ended >= 1030.0
    assert no_real_network == [], "a Node on the fake LAN opened a socket or read interfaces"
    beats = [s for s in lan.sent if isinstance(s.msg, codec.Beat)]
    assert {s.sender.name for s in beats} == {"alice", "bob"}
    assert all(s.sender.ips[0].startswith("10.0.0.") for s in lan.sent)


def test_a_node_says_goodbye_on_close() -> None:
    lan = FakeLan(seed=2)

    async def main() -> None:
        async with lan.node("alice") as a:
            gone = a.subscribe()
            async with lan.node("bob") as b:
                await a.lookup("bob", wait=5)
                bob_id = b.peer_id
            left = await asyncio.wait_for(gone.get(), 1)
            while not isinstance(left, ev.PeerLeft):
                left = await asyncio.wait_for(gone.get(), 1)
            assert left.reason == "bye" and left.peer.peer_id == bob_id and a.peers() == []

    run(main())
    byes = [s for s in lan.sent if isinstance(s.msg, codec.Bye)]
    assert {s.sender.name for s in byes} == {"alice", "bob"}


def test_lost_chat_is_repaired_through_nodes() -> None:
    lan = FakeLan(seed=3)

    async def main() -> list[str]:
        async with lan.node("alice") as a, lan.node("bob") as b:
            await b.lookup("alice", wait=5)
            got = b.subscribe()
            lan.loss = 0.3
            for i in range(30):
                await a.say("lobby", f"line {i}")
                await asyncio.sleep(0.5)
            lan.loss = 0.0
            await asyncio.sleep(10)  # holes repaired (or reported) long before
            events = [got.get_nowait() for _ in range(got.qsize())]
            assert not [e for e in events if isinstance(e, ev.MessagesLost)]
            return sorted(e.text for e in events if isinstance(e, ev.ChatReceived))

    texts = run(main())
    assert texts == sorted(f"line {i}" for i in range(30))
    chats = [s for s in lan.sent if isinstance(s.msg, codec.Chat) and s.sender.name == "alice"]
    lost = [s for s in chats if any(dst.name == "bob" for dst in s.lost)]
    assert lost, "the loss was real: some of alice's chat never reached bob at first"
    assert any(isinstance(s.msg, codec.Nack) and s.sender.name == "bob" for s in lan.sent)
    assert len(chats) > 30  # the originals and their repairs


def test_direct_message_delivered_then_failed_when_the_peer_crashed() -> None:
    lan = FakeLan(seed=4)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with lan.node("alice") as a, lan.node("bob") as b:
            got = b.subscribe()
            await a.lookup("bob", wait=5)
            delivered = await a.send_direct_wait("bob", "psst")
            assert isinstance(delivered, ev.DirectDelivered) and delivered.attempts == 1
            (received,) = [e for e in drain(got) if isinstance(e, ev.DirectReceived)]
            assert received.text == "psst" and received.msg_id == delivered.msg_id
            lan.crash(lan.station(b))  # no goodbye: the process died
            sent = loop.time()
            failed = await a.send_direct_wait("bob", "are you there?")
            assert isinstance(failed, ev.DirectFailed) and not failed.peer_alive
            assert loop.time() - sent == pytest.approx(cfg.DIRECT_GIVE_UP, abs=0.01)

    run(main())
    tries = [s for s in lan.sent if isinstance(s.msg, codec.Direct)]
    assert len(tries) == 1 + len(cfg.DIRECT_DELAYS)  # one for psst, every retry after


def test_crashed_node_is_unreachable_then_removed_in_virtual_seconds() -> None:
    lan = FakeLan(seed=5)

    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        async with lan.node("alice") as a, lan.node("bob") as b:
            await a.lookup("bob", wait=5)
            await asyncio.sleep(3)
            seen = a.subscribe()
            lan.crash(lan.station(b))
            crash = loop.time()
            unreachable = await a.wait_for(lambda e: isinstance(e, ev.PeerUnreachable), 20)
            unreachable_after = loop.time() - crash
            left = await a.wait_for(lambda e: isinstance(e, ev.PeerLeft), 20)
            assert isinstance(left, ev.PeerLeft) and left.reason == "timeout"
            assert unreachable is not None and a.peers() == []
            assert len([e for e in drain(seen) if isinstance(e, ev.PeerLeft)]) == 1
            return unreachable_after, loop.time() - crash

    unreachable, removed = run(main())
    # The same bounds as the core's test (test_core): silence of 3 s with pings, then 10 s.
    assert 1.5 <= unreachable <= cfg.UNREACHABLE_AFTER + 0.5
    assert cfg.REMOVE_AFTER - 1.5 <= removed <= cfg.REMOVE_AFTER + 0.5


def test_nodes_and_bare_cores_share_one_lan() -> None:
    lan = FakeLan(seed=6)
    core = lan.add_node("core")  # before the loop: its timers move onto it

    async def main() -> None:
        async with lan.node("alice") as a:
            await a.lookup("core", wait=5)
            await a.say("lobby", "hello core")
            await asyncio.sleep(1)
            assert core.core.find_peer("alice").peer_id == a.peer_id

    run(main())
    assert [e.text for e in core.of_type(ev.ChatReceived)] == ["hello core"]
    assert [e.reason for e in core.of_type(ev.PeerLeft)] == ["bye"]
    with pytest.raises(RuntimeError, match="runs on its event loop"):
        lan.run(1)  # the LAN now runs on the loop's clock


def test_a_lan_ahead_of_the_loop_refuses_to_bind() -> None:
    lan = FakeLan(seed=7)
    lan.add_node("core")
    lan.run(5)

    async def main() -> None:
        async with lan.node("alice"):
            pass

    with pytest.raises(RuntimeError, match="behind the LAN"):
        run(main())
    ran = FakeLan(seed=7)
    ran.add_node("core")
    ran.run(5)

    async def again() -> None:
        async with ran.node("alice") as a:
            await a.lookup("core", wait=5)

    run(again(), start=ran.now)


def test_stuck_core_timer_fails_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    lan = FakeLan(seed=8)
    stuck = lan.add_node("stuck")
    monkeypatch.setattr(stuck.core, "handle_timer", lambda now: None)  # never moves it on
    with pytest.raises(TimerStuck, match="stuck: timer"):
        lan.run(1)

    lan_on_loop = FakeLan(seed=9)

    async def on_loop() -> None:
        lan_on_loop.bind(asyncio.get_running_loop())
        lame = lan_on_loop.add_node("lame")
        lame.core.handle_timer = lambda now: None  # type: ignore[method-assign]
        await asyncio.sleep(5)

    with pytest.raises(TimerStuck):
        run(on_loop())


def test_a_lan_runs_on_one_event_loop() -> None:
    lan = FakeLan(seed=11)

    async def main() -> None:
        async with lan.node("alice"):
            pass

    run(main())
    with pytest.raises(RuntimeError, match="already runs on another event loop"):
        run(main())


def test_virtual_loop_sleeps_and_timeouts_take_no_wall_time() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.sleep(3600)
        assert loop.time() - start == pytest.approx(3600)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.Event().wait(), timeout=60)
        fired: list[float] = []
        loop.call_at(loop.time() + 7, lambda: fired.append(loop.time()))
        await asyncio.sleep(10)
        assert fired == [pytest.approx(start + 3600 + 60 + 7)]
        return loop.time() - start

    started = time.perf_counter()
    assert run(main(), start=0.0) == pytest.approx(3670)
    assert time.perf_counter() - started < 2


def test_an_error_in_a_callback_fails_the_run() -> None:
    async def main() -> None:
        asyncio.get_running_loop().call_soon(lambda: 1 / 0)
        await asyncio.sleep(60)

    with pytest.raises(ZeroDivisionError):
        run(main())


def test_node_of_your_own_making_on_the_fake_lan() -> None:
    lan = FakeLan(seed=10)

    async def main() -> None:
        mine = lanchat.Node("mine", transport=lan.transport("mine"), member=False)
        async with mine, lan.node("peer") as peer:
            found = await mine.lookup("peer", wait=5)
            assert found.peer_id == peer.peer_id
            assert [i.name for i in mine.choice.used] == ["fake0"]

    run(main())


def test_the_chat_session_runs_on_the_fake_lan() -> None:
    lan = FakeLan(seed=12)

    async def main() -> str:
        async with lan.node("alice") as a, lan.node("bob") as b:
            await b.lookup("alice", wait=5)

            async def lines() -> AsyncIterator[str]:
                yield "hello from the session"
                await asyncio.sleep(2)  # virtual: alice answers meanwhile
                yield "/quit"

            out = io.StringIO()
            session = asyncio.create_task(
                run_join(b, interactive=False, room="lobby", lines=lines(), out=out)
            )
            chat = await a.wait_for(lambda e: isinstance(e, ev.ChatReceived), 5)
            assert isinstance(chat, ev.ChatReceived) and chat.text == "hello from the session"
            await a.say("lobby", "hi bob")
            assert await session == 0
            return out.getvalue()

    output = run(main())
    assert "<alice> hi bob" in output


def drain(queue: asyncio.Queue[ev.Event]) -> list[ev.Event]:
    return [queue.get_nowait() for _ in range(queue.qsize())]
