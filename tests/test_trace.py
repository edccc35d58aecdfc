"""The core's tracer (lanchat.trace): each datagram received is told once, with its fate."""

from __future__ import annotations

import random

from lanchat import codec
from lanchat import events as ev
from lanchat.config import NodeConfig
from lanchat.core import Identity, NodeCore
from lanchat.testing import FakeLan, run, run_timers
from lanchat.trace import GROUP, UNICAST, Traced, TraceLog, kind_of

ME, PEER = bytes(range(8)), bytes(range(8, 16))


def beat(sender: bytes, instance: int) -> bytes:
    return codec.encode(
        codec.Beat(sender, instance, "bob", "bob-pc", 40002, "online", "", ("lobby",), 0, 1000)
    )


def test_a_bare_core_tells_each_fate_with_the_stats_counter_as_reason() -> None:
    log = TraceLog()
    core = NodeCore(
        NodeConfig(nick="alice", host="alice-pc"), Identity(ME, 1), uport=40001,
        rng=random.Random(1), tracer=log,
    )  # fmt: skip
    core.start(1000.0)
    source = ("10.0.0.2", 50001)
    core.receive_datagram(beat(PEER, 7), source, 1000.1)
    core.receive_datagram(b"GET / HTTP/1.1\r\n", source, 1000.2)
    core.receive_datagram(codec.HEADER + b"\xc1", source, 1000.3)
    core.receive_datagram(beat(PEER, 6), source, 1000.4)  # its older start
    core.receive_datagram(beat(ME, 1), source, 1000.5)
    core.receive_datagram(beat(PEER, 7), ("192.0.2.1", 5), 1000.6, on_link=False)
    received = [line for line in log.lines if line.what != "queued"]
    assert received == [
        Traced("accepted", source, "", "Beat", sender=PEER),
        Traced("dropped", source, reason="foreign"),
        Traced("dropped", source, reason="malformed"),
        Traced("dropped", source, reason="stale"),
        Traced("dropped", source, reason="own"),
        Traced("dropped", ("192.0.2.1", 5), reason="off_link"),
    ]
    stats = core.stats
    assert (stats.foreign, stats.malformed, stats.stale, stats.own, stats.off_link) == (1,) * 5
    sent = [dgram for _, dgram in run_timers(core, 1002.0)]
    queued = [line for line in log.lines if line.what == "queued"]
    assert [(q.address, q.kind) for q in queued] == [(d.to, kind_of(d.data)) for d in sent]
    assert {q.kind for q in queued} >= {"Beat", "Query"}


def test_a_node_tells_its_tracer_the_socket_each_datagram_came_in_on() -> None:
    lan = FakeLan(seed=2)
    log = TraceLog()

    async def main() -> tuple[int, int, int, str, tuple[str, int]]:
        async with lan.node("alice", tracer=log) as alice, lan.node("bob") as bob:
            await alice.lookup("bob", wait=5)
            outcome = await bob.send_direct_wait("alice", "hi")
            assert isinstance(outcome, ev.DirectDelivered)
            stats = alice.stats
            bob_at = (lan.station(bob).ips[0], bob.unicast_port)
            return stats.received, stats.own, stats.sent, bob.peer_id, bob_at

    received, own, sent, bob_id, bob_at = run(main())
    lines = list(log.lines)[: received + sent]  # up to bob's goodbye
    heard = [line for line in lines if line.what != "queued"]
    assert len(heard) == received
    assert [line.channel for line in heard if line.reason == "own"] == [GROUP] * own > []
    beats = {line.channel for line in heard if line.kind == "Beat" and line.sender}
    assert beats == {GROUP, UNICAST}, "bob's heartbeats, and his answer to alice's query"
    (direct,) = [line for line in heard if line.kind == "Direct"]
    assert direct.channel == UNICAST and direct.sender == bytes.fromhex(bob_id)
    assert direct.address is not None and direct.address[0] == bob_at[0]
    assert Traced("queued", bob_at, kind="Ack") in lines


def test_kind_of_names_every_message_type_and_nothing_else() -> None:
    assert kind_of(beat(PEER, 1)) == "Beat"
    assert kind_of(codec.encode(codec.Ping(PEER, 1, 5))) == "Ping"
    assert kind_of(codec.encode(codec.Query(PEER, 1, 40000, ()))) == "Query"
    assert kind_of(b"") == kind_of(b"LC\x01\x00\x93\x7f") == kind_of(b"junk datagram") == ""
