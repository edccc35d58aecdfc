"""Flood limits, answer credit and off-link drops (PROTOCOL.md section 13), in virtual time."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

import pytest

from lanchat import codec, ratelimit
from lanchat import config as cfg
from lanchat import events as ev
from lanchat.config import NodeConfig
from lanchat.core import Datagram, Identity, NodeCore
from lanchat.ratelimit import ADMITTED, FLOODED, OVERLOADED, Limits
from lanchat.testing import FakeLan, FakeNode
from tests.test_architecture import BANNED, PACKAGE, imported_modules

FLOODER = "10.0.0.99"
INSTANCE = 2**60 + 7


def test_ratelimit_does_no_io() -> None:
    mods = imported_modules(PACKAGE / "ratelimit.py")
    assert not (mods & BANNED)
    assert not (mods & {"lanchat.node", "lanchat.netif", "lanchat.cli", "lanchat.identity"})


# ------------------------------------------------------------------ Limits alone


def test_a_source_gets_its_burst_then_its_rate_and_others_keep_theirs() -> None:
    limits = Limits(rate=100, burst=10, total_rate=1e6, total_burst=1e6)
    verdicts = [limits.admit("10.0.0.1", 50, 0.0, known=False) for _ in range(15)]
    assert verdicts == [ADMITTED] * 10 + [FLOODED] * 5
    assert limits.admit("10.0.0.2", 50, 0.0, known=False) == ADMITTED  # another host: untouched
    assert limits.admit("10.0.0.1", 50, 0.005, known=False) == FLOODED  # 0.5 token refilled
    assert limits.admit("10.0.0.1", 50, 0.010, known=False) == ADMITTED  # a whole one
    # A long silence refills to the burst, never beyond it.
    later = [limits.admit("10.0.0.1", 50, 100.0, known=False) for _ in range(11)]
    assert later == [ADMITTED] * 10 + [FLOODED]


def test_a_known_peers_datagrams_have_their_own_larger_bucket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cfg, "KNOWN_SOURCE_RATE", 1000.0)
    monkeypatch.setattr(cfg, "KNOWN_SOURCE_BURST", 20.0)
    limits = Limits(rate=100, burst=10, total_rate=1e6, total_burst=1e6)
    strangers = [limits.admit("10.0.0.1", 50, 0.0, known=False) for _ in range(11)]
    assert strangers == [ADMITTED] * 10 + [FLOODED]  # junk from the host is held...
    known = [limits.admit("10.0.0.1", 50, 0.0, known=True) for _ in range(21)]
    assert known == [ADMITTED] * 20 + [FLOODED]  # ...its peer's chat is not, up to its own
    assert limits.admit("10.0.0.1", 50, 0.001, known=True) == ADMITTED  # 1000/s refills it
    assert limits.admit("10.0.0.1", 50, 0.001, known=False) == FLOODED  # strangers: still not


def test_past_the_total_only_datagrams_claiming_a_known_peer_get_in() -> None:
    limits = Limits(rate=1e6, burst=1e6, total_rate=100, total_burst=5)
    sources = [f"10.0.1.{i}" for i in range(1, 8)]
    assert [limits.admit(ip, 60, 0.0, known=False) for ip in sources] == [ADMITTED] * 5 + [
        OVERLOADED
    ] * 2
    assert limits.admit("10.0.2.1", 60, 0.0, known=True) == ADMITTED  # presence first
    assert limits.admit("10.0.2.2", 60, 0.0, known=False) == OVERLOADED
    assert limits.admit("10.0.2.2", 60, 0.01, known=False) == ADMITTED  # refilled at 100/s


def test_a_flooded_source_is_not_charged_to_the_total() -> None:
    limits = Limits(rate=10, burst=10, total_rate=10, total_burst=20)
    for _ in range(1000):
        limits.admit(FLOODER, 100, 0.0, known=False)
    others = [limits.admit(f"10.0.3.{i}", 100, 0.0, known=False) for i in range(1, 11)]
    assert others == [ADMITTED] * 10  # the flooder used 10 of 20, not all


def test_answer_credit_is_what_the_source_sent_capped() -> None:
    limits = Limits(max_credit=1000)
    assert not limits.spend("10.0.0.1", 1)  # never heard: nothing
    limits.admit("10.0.0.1", 300, 0.0, known=False)
    assert limits.credit("10.0.0.1") == 300
    assert not limits.spend("10.0.0.1", 301)
    assert limits.credit("10.0.0.1") == 300  # a refused answer costs nothing
    assert limits.spend("10.0.0.1", 300) and not limits.spend("10.0.0.1", 1)
    for _ in range(10):
        limits.admit("10.0.0.1", 300, 0.0, known=False)
    assert limits.credit("10.0.0.1") == 1000  # banked no further than the cap
    # Datagrams refused by a limit credit nothing.
    tight = Limits(rate=1, burst=1, max_credit=10_000)
    for _ in range(5):
        tight.admit("10.0.0.1", 1000, 0.0, known=False)
    assert tight.credit("10.0.0.1") == 1000


def test_loopback_is_exempt_from_every_limit() -> None:
    limits = Limits(rate=1, burst=1, total_rate=1, total_burst=1)
    assert all(limits.admit("127.0.0.1", 1200, 0.0, known=False) == ADMITTED for _ in range(100))
    assert limits.admit("::1", 1200, 0.0, known=False) == ADMITTED
    assert limits.spend("127.0.0.1", 10**9)
    assert len(limits) == 0  # and they take no table entry
    assert not ratelimit.is_loopback("10.127.0.1")


def test_the_source_table_is_bounded_least_recently_heard_out() -> None:
    limits = Limits(max_sources=3)
    for i in range(1, 4):
        limits.admit(f"10.0.0.{i}", 100, float(i), known=False)
    limits.admit("10.0.0.1", 100, 4.0, known=False)  # heard again: now the most recent
    limits.admit("10.0.0.4", 100, 5.0, known=False)
    assert len(limits) == 3
    assert limits.credit("10.0.0.2") == 0  # the least recently heard was forgotten
    assert limits.credit("10.0.0.1") == 200


# ----------------------------------------------------------------- in the core


def junk(count: int) -> Iterator[bytes]:
    """Lanchat-looking datagrams: valid headers, garbage bodies."""
    rng = random.Random(5)
    for _ in range(count):
        yield codec.HEADER + rng.randbytes(rng.randrange(1, 200))


def spoofed_chat(i: int) -> bytes:
    sender = (0xF100_0000_0000_0000 + i).to_bytes(8, "big")
    return codec.encode(codec.Chat(sender, INSTANCE, 1, f"x{i}", "lobby", "spam"))


def spoofed_beat(i: int) -> bytes:
    sender = (0xF200_0000_0000_0000 + i).to_bytes(8, "big")
    beat = codec.Beat(sender, INSTANCE, f"ghost{i}", "h", 40000, "online", "", ("lobby",), 0, 1000)
    return codec.encode(beat)


def flood(lan: FakeLan, victim: FakeNode, make: Iterator[bytes], rate: int, seconds: float) -> int:
    """Feed `victim` `rate` datagrams a second from FLOODER while the LAN runs; how many."""
    step, sent = 0.001, 0
    per_step = round(rate * step)
    receive = victim.core.receive_datagram
    for _ in range(round(seconds / step)):
        for _ in range(per_step):
            receive(next(make), (FLOODER, 7), lan.now)
        sent += per_step
        lan.call(victim, lambda core, now: None)  # send what it queued, book its timer
        lan.run(step)
    return sent


def honest_lan() -> tuple[FakeLan, FakeNode, list[FakeNode]]:
    lan = FakeLan(seed=11)
    victim = lan.add_node("victim", all_rooms=True)
    others = [lan.add_node(f"honest{i}") for i in range(3)]
    assert lan.run_until(lambda: all(victim.knows(o) and o.knows(victim) for o in others), 3)
    lan.run(2)
    return lan, victim, others


def bad_news(node: FakeNode, honest: list[FakeNode]) -> list[ev.Event]:
    """Departures, unreachability and losses of honest peers that `node` reported."""
    ids = {o.peer_id for o in honest}
    return [
        e
        for e in node.events
        if (isinstance(e, ev.PeerLeft | ev.PeerUnreachable) and e.peer.peer_id in ids)
        or (isinstance(e, ev.MessagesLost) and e.peer_id in ids)
    ]


@pytest.mark.parametrize("kind", ["junk", "spoofed chat", "spoofed beats"])
def test_a_20000_per_second_flood_from_one_host_costs_no_heartbeat_or_chat(kind: str) -> None:
    lan, victim, others = honest_lan()
    make = {
        "junk": junk(10**6),
        "spoofed chat": (spoofed_chat(i) for i in range(10**6)),
        "spoofed beats": (spoofed_beat(i) for i in range(10**6)),
    }[kind]
    lan.call(others[0], lambda core, now: core.say("lobby", "during the flood", now))
    sent = flood(lan, victim, make, rate=20_000, seconds=4.0)
    lan.call(others[1], lambda core, now: core.say("lobby", "still here", now))
    lan.run(1.0)
    stats = victim.core.stats
    assert sent == 80_000
    # What got past the limit is the burst plus the rate, no more.
    assert stats.flooded >= sent - cfg.SOURCE_BURST - cfg.SOURCE_RATE * 4.0 - 1
    assert bad_news(victim, others) == []
    assert all(victim.knows(o) for o in others)
    texts = [e.text for e in victim.of_type(ev.ChatReceived)]
    assert "during the flood" in texts and "still here" in texts
    assert sum(1 for t in texts if t == "spam") <= cfg.SOURCE_BURST + cfg.SOURCE_RATE * 4.0


def test_many_sources_past_the_total_still_let_known_peers_heartbeats_in() -> None:
    lan, victim, others = honest_lan()
    victim.core.limits = Limits(total_rate=2000, total_burst=2000)
    ghosts = itertools.cycle([spoofed_beat(i) for i in range(5000)])
    receive = victim.core.receive_datagram
    for step in range(11_000):  # 11 s: past the 10 s after which a silent peer is removed
        for j in range(20):  # 20,000/s from 1000 source addresses, each under its own rate
            receive(next(ghosts), (f"10.0.{100 + j % 4}.{(step + j) % 250 + 1}", 7), lan.now)
        lan.call(victim, lambda core, now: None)
        lan.run(0.001)
    assert victim.core.stats.overloaded > 100_000
    assert bad_news(victim, others) == []
    assert all(victim.knows(o) for o in others)


def test_off_link_sources_are_dropped_and_never_answered() -> None:
    core = NodeCore(
        NodeConfig(nick="v"), Identity(b"V" * 8, INSTANCE), uport=9, rng=random.Random(1)
    )
    core.start(0.0)
    core.handle_timer(1.0)
    core.datagrams_to_send()
    ping = codec.encode(codec.Ping(b"P" * 8, INSTANCE, 5))
    query = codec.encode(codec.Query(b"P" * 8, INSTANCE, 4000))
    for data in (ping, query):
        core.receive_datagram(data, ("192.0.2.7", 4000), 2.0, on_link=False)
    core.handle_timer(3.0)
    assert unicast(core) == []
    assert core.stats.off_link == 2 and core.stats.malformed == 0
    core.receive_datagram(ping, ("10.0.0.7", 4000), 3.0)  # the same on-link: answered
    assert [d.to for d in unicast(core)] == [("10.0.0.7", 4000)]


def member(peer_id: bytes = b"V" * 8, keys: tuple[bytes, ...] = ()) -> NodeCore:
    from lanchat.seal import KeyRing

    core = NodeCore(
        NodeConfig(nick="victim"),
        Identity(peer_id, INSTANCE),
        uport=9,
        rng=random.Random(1),
        keys=KeyRing(keys) if keys else None,
    )
    core.start(0.0)
    core.handle_timer(5.0)  # past the announcements and queries
    core.datagrams_to_send()
    return core


def unicast(core: NodeCore) -> list[Datagram]:
    """What the core queued for one address (not its own heartbeats to the group)."""
    return [d for d in core.datagrams_to_send() if d.to is not None]


def smallest_requests(i: int) -> list[bytes]:
    """The smallest datagram of each kind that makes a node answer (1-char nick, tiny ints)."""
    s = b"s" * 8
    return [
        codec.encode(codec.Ping(s, 0, 0)),
        codec.encode(codec.Direct(s, 0, 1 + i, "a", "")),
        codec.encode(codec.Notice(s, 0, 1 + i, "a", "", 1)),
        codec.encode(codec.Query(s, 0, 1)),
    ]


def test_no_source_ever_gets_more_bytes_than_it_sent() -> None:
    core = member()
    received = sent = 0
    answers = 0
    now = 10.0
    for i in range(300):
        for data in smallest_requests(i):
            now += 0.001
            core.receive_datagram(data, (FLOODER, 1), now)
            received += len(data)
            core.handle_timer(now)
            for out in unicast(core):
                assert out.to is not None and out.to[0] == FLOODER
                sent += len(out.data)
                answers += 1
            assert sent <= received
    core.handle_timer(now + 1)
    sent += sum(len(d.data) for d in unicast(core))
    assert sent <= received
    assert answers > 600  # most are still answered: the queries pay for the small ones
    assert core.stats.withheld > 0  # a Ping alone is smaller than its Pong here


def test_a_tiny_ping_from_a_fresh_source_gets_no_bigger_pong() -> None:
    core = member()
    ping = codec.encode(codec.Ping(b"s" * 8, 0, 0))
    pong = codec.encode(codec.Pong(b"V" * 8, INSTANCE, 0))
    assert len(pong) > len(ping)  # our 64-bit instance makes it bigger
    core.receive_datagram(ping, ("10.0.0.5", 1), 10.0)
    assert core.datagrams_to_send() == [] and core.stats.withheld == 1
    # A real node's Ping (same-size instance) is answered at once.
    real = codec.encode(codec.Ping(b"r" * 8, INSTANCE + 1, 77))
    core.receive_datagram(real, ("10.0.0.6", 1), 10.0)
    assert [len(d.data) for d in core.datagrams_to_send()] == [len(real)]


def test_sealed_answers_are_charged_their_sealed_size() -> None:
    key = bytes(range(32))
    core = member(keys=(key,))
    from lanchat.seal import KeyRing, Sealer

    sealer = Sealer(KeyRing((key,)), b"r" * 8, INSTANCE + 1)
    ping = codec.seal(codec.encode(codec.Ping(b"r" * 8, INSTANCE + 1, 77)), sealer)
    core.receive_datagram(ping, ("10.0.0.6", 1), 10.0)
    (pong,) = core.datagrams_to_send()
    assert len(pong.data) == len(ping)
    assert core.limits.credit("10.0.0.6") == 0  # charged exactly what went out


def test_query_answers_are_limited_per_address_whatever_the_port() -> None:
    core = member()
    for port in range(1000, 1050):  # one querier, fifty reply ports, within 20 ms
        query = codec.encode(codec.Query(b"q" * 8, INSTANCE, port))
        core.receive_datagram(query, (FLOODER, 5), 10.0 + port / 1e7)
    core.handle_timer(11.0)
    assert len(unicast(core)) == 1
    assert core.stats.rate_limited == 49


def test_nacks_from_strangers_make_no_repairs() -> None:
    core = member()
    core.say("lobby", "hello", 10.0)
    core.datagrams_to_send()
    nack = codec.encode(codec.Nack(b"n" * 8, INSTANCE, b"V" * 8, INSTANCE, ((1, 1),)))
    for i in range(100):
        core.receive_datagram(nack, (FLOODER, 5), 10.1 + i / 1000)
    core.handle_timer(12.0)
    assert [d for d in core.datagrams_to_send() if d.to is None and b"hello" in d.data] == []
    assert core.stats.repairs_sent == 0


def test_own_datagrams_are_dropped_before_decoding_and_cost_no_budget() -> None:
    core = member()
    core.limits = Limits(rate=1, burst=1)
    own = codec.encode(codec.Chat(b"V" * 8, INSTANCE, 1, "victim", "lobby", "me"))
    for _ in range(50):
        core.receive_datagram(own, ("10.0.0.1", 5), 10.0)
    assert core.stats.own == 50 and core.stats.flooded == 0
    other = codec.encode(codec.Chat(b"o" * 8, INSTANCE, 1, "o", "lobby", "x"))
    core.receive_datagram(other, ("10.0.0.1", 5), 10.0)
    assert core.stats.flooded == 0  # the one token was still there


def test_one_host_introduces_new_peers_only_at_the_new_peer_rate() -> None:
    core = member()
    for i in range(100):
        core.receive_datagram(spoofed_beat(i), (FLOODER, 7), 10.0)
    assert len(core.members) == cfg.NEW_PEERS_PER_SOURCE_BURST
    assert core.stats.refused == 100 - cfg.NEW_PEERS_PER_SOURCE_BURST
    core.receive_datagram(spoofed_beat(100), (FLOODER, 7), 10.0 + 1 / cfg.NEW_PEERS_PER_SOURCE_RATE)
    assert len(core.members) == cfg.NEW_PEERS_PER_SOURCE_BURST + 1
    # Known peers' Beats are never refused; another host still gets in at once.
    core.receive_datagram(spoofed_beat(0), (FLOODER, 7), 12.5)
    core.receive_datagram(spoofed_beat(200), ("10.0.0.5", 7), 12.5)
    assert len(core.members) == cfg.NEW_PEERS_PER_SOURCE_BURST + 2
