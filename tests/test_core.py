"""NodeCore on the seeded in-memory LAN, in virtual time: nothing here sleeps.

`Lan` is `lanchat.testing.FakeLan` plus `sent_by`, the datagrams one node sent
(from the LAN's `sent` log, decoded). The LAN records the time of every event
(`node.times`) and raises `TimerStuck` in any test in which a core's timer stops
moving on (which would hang it).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lanchat import codec
from lanchat import config as cfg
from lanchat import events as ev
from lanchat.core import Address, Identity, NodeCore, SeqWindow
from lanchat.errors import ClosedError, PeerError
from lanchat.testing import FakeLan, FakeNode, Sent, Station
from tests.probe_helpers import verify

# ------------------------------------------------------------------ helpers


def decoded(data: bytes) -> codec.Message | None:
    try:
        return codec.decode(data)
    except codec.DecodeError:
        return None


class Lan(FakeLan):
    """FakeLan with a per-node view of its sent log."""

    def sent_by(self, node: FakeNode, kind: type[Any] | None = None) -> list[Sent]:
        """What `node` sent (its current instance), optionally only messages of `kind`."""
        return [
            s for s in self.sent if s.sender is node and (kind is None or isinstance(s.msg, kind))
        ]


def times(
    node: FakeNode, kind: type[Any], where: Callable[[Any], bool] | None = None
) -> list[float]:
    """When `node` emitted events of `kind` (matching `where`)."""
    return [
        t
        for e, t in zip(node.events, node.times, strict=True)
        if isinstance(e, kind) and (where is None or where(e))
    ]


def about(node: FakeNode, other: FakeNode) -> Callable[[Any], bool]:
    """Matches peer events about `other`."""
    return lambda e: e.peer.peer_id == other.peer_id


def addr(node: FakeNode, index: int = 0) -> Address:
    return (node.ips[index], node.core.uport)


def mesh(lan: Lan, count: int, **kw: Any) -> list[FakeNode]:
    nodes = [lan.add_node(f"n{i}", **kw) for i in range(count)]
    assert lan.run_until(lambda: all_know(nodes), timeout=3)
    return nodes


def all_know(nodes: list[FakeNode]) -> bool:
    return all(x.knows(y) for x in nodes for y in nodes if x is not y)


def drop_incoming(node: FakeNode, drop: Callable[[codec.Message], bool]) -> list[codec.Message]:
    """Make `node` lose arriving datagrams whose message matches `drop`; returns what it lost."""
    lost: list[codec.Message] = []
    receive = node.core.receive_datagram

    def receive_datagram(data: bytes, source: Address, now: float, **kw: Any) -> None:
        msg = decoded(data)
        if msg is not None and drop(msg):
            lost.append(msg)
            return
        receive(data, source, now, **kw)

    node.core.receive_datagram = receive_datagram  # type: ignore[method-assign]
    return lost


def table(core: NodeCore) -> list[ev.PeerInfo]:
    return core.peers()


def pid(node: FakeNode) -> bytes:
    return node.core.identity.peer_id


# --------------------------------------------------------- join and discovery


def test_second_node_is_known_both_ways_within_milliseconds() -> None:
    lan = Lan(1)
    a = lan.add_node("a")
    lan.run(3)
    t0 = lan.now
    b = lan.add_node("b")
    assert lan.run_until(lambda: a.knows(b) and b.knows(a), timeout=0.05)
    assert lan.now - t0 < 0.02
    # b learnt of a from a's unicast answer to b's query, not from a heartbeat.
    answers = [s for s in lan.sent_by(a, codec.Beat) if s.to == addr(b)]
    assert answers and answers[0].time - t0 < 0.01
    assert lan.sent_by(b, codec.Query)[0].time == t0
    (joined,) = b.of_type(ev.PeerJoined)
    assert (joined.peer.nick, joined.peer.peer_id, joined.peer.state) == ("a", a.peer_id, "alive")
    assert joined.peer.address == a.ips[0] and joined.peer.port == a.core.uport
    assert [e.peer.nick for e in a.of_type(ev.PeerJoined)] == ["b"]


def test_late_node_discovers_five_members_by_query_before_one_heartbeat() -> None:
    lan = Lan(2)
    old = mesh(lan, 5)
    lan.run(5)
    t0 = lan.now
    new = lan.add_node("late")
    assert lan.run_until(lambda: all(new.knows(o) for o in old), timeout=0.1)
    assert lan.now - t0 < 0.03  # answers are spread over max(5 ms, 2 ms x 6)
    for o in old:
        assert any(s.to == addr(new) for s in lan.sent_by(o, codec.Beat)), o.name
    joined = times(new, ev.PeerJoined)
    assert len(joined) == 5 and max(joined) - t0 < 0.03


def test_a_small_group_answers_a_newcomer_every_half_second() -> None:
    # Nine members started together spent most of their first answers on each
    # other; their answer budget must still keep up with churn (or `lanchat
    # peers` run in a loop), not leave newcomers to wait for regular Beats.
    lan = Lan(4)
    members = [lan.add_node(f"m{i}") for i in range(9)]
    lan.run(3)
    for i in range(12):
        new = lan.add_node(f"new{i}")
        t0 = lan.now
        assert lan.run_until(lambda: all(new.knows(m) for m in members), timeout=1.0)  # noqa: B023
        assert lan.now - t0 < 0.01, i
        lan.leave(new)
        lan.run(0.5)


def test_one_shot_node_sees_members_but_is_never_listed() -> None:
    lan = Lan(3)
    members = mesh(lan, 3)
    tool = lan.add_node("tool", member=False)
    assert lan.run_until(lambda: all(tool.knows(m) for m in members), timeout=0.1)
    lan.run(5)
    assert all(tool.knows(m) for m in members)
    for m in members:
        assert not m.knows(tool)
        assert len(m.core.members) == 2
        assert not any(isinstance(e, ev.PeerJoined) and e.peer.nick == "tool" for e in m.events)
    assert lan.sent_by(tool, codec.Beat) == []
    queries = [round(s.time - lan.sent_by(tool)[0].time, 6) for s in lan.sent_by(tool, codec.Query)]
    assert queries == list(cfg.QUERY_DELAYS_ONESHOT)


# ----------------------------------------------------------------- heartbeats


def test_announce_back_off_then_jittered_heartbeats() -> None:
    lan = Lan(4)
    t0 = lan.now
    node = lan.add_node("solo")
    lan.run(400)
    beats = [s.time - t0 for s in lan.sent_by(node, codec.Beat)]
    assert all(s.to is None for s in lan.sent_by(node, codec.Beat))
    burst = len(cfg.ANNOUNCE_DELAYS)
    assert cfg.ANNOUNCE_DELAYS[0] == 0 and list(cfg.ANNOUNCE_DELAYS) == sorted(cfg.ANNOUNCE_DELAYS)
    assert beats[:burst] == pytest.approx(list(cfg.ANNOUNCE_DELAYS), abs=1e-9)
    gaps = [b - a for a, b in itertools.pairwise(beats[burst - 1 :])]
    assert len(gaps) > 300
    # [0.5, 1.5] / (e - 3/2) with reconsideration: mean 1 s, gaps 0.41-1.23 s (RFC 3550 6.3.1).
    low, high = 0.5 / cfg.RECONSIDERATION_FACTOR, 1.5 / cfg.RECONSIDERATION_FACTOR
    assert all(low - 1e-9 <= g <= high + 1e-9 for g in gaps)
    assert sum(gaps) / len(gaps) == pytest.approx(1.0, abs=0.07)
    assert min(gaps) < low + 0.1 and max(gaps) > high - 0.1  # really jittered


def test_change_restarts_the_announce_burst() -> None:
    lan = Lan(5)
    node = lan.add_node("solo")
    lan.run(10.3)
    t0 = lan.now
    lan.call(node, lambda core, now: core.set_nick("solo2", now))
    lan.run(cfg.ANNOUNCE_DELAYS[-1] + 0.4)  # the next jittered beat is >= 0.41 s later
    beats = [s.time - t0 for s in lan.sent_by(node, codec.Beat) if s.time >= t0]
    assert beats == pytest.approx(list(cfg.ANNOUNCE_DELAYS), abs=1e-9)


# ------------------------------------------------------------ presence changes

PRESENCE: list[tuple[str, Callable[[NodeCore, float], None], type[Any], Callable[[Any], bool]]] = [
    (
        "rename",
        lambda c, now: c.set_nick("bobby", now),
        ev.PeerRenamed,
        lambda e: e.old_nick == "b" and e.peer.nick == "bobby",
    ),
    (
        "away",
        lambda c, now: c.set_away("at lunch", now),
        ev.PeerStatusChanged,
        lambda e: (e.peer.status, e.peer.status_text) == ("away", "at lunch"),
    ),
    (
        "join room",
        lambda c, now: c.join_room("#dev", now),
        ev.PeerJoinedRoom,
        lambda e: e.room == "dev" and e.peer.rooms == ("lobby", "dev"),
    ),
    (
        "leave room",
        lambda c, now: c.leave_room("lobby", now),
        ev.PeerLeftRoom,
        lambda e: e.room == "lobby" and e.peer.rooms == (),
    ),
]


@pytest.mark.parametrize(
    ("change", "action", "kind", "check"), PRESENCE, ids=[p[0] for p in PRESENCE]
)
def test_presence_change_is_seen_at_once(
    change: str,
    action: Callable[[NodeCore, float], None],
    kind: type[Any],
    check: Callable[[Any], bool],
) -> None:
    lan = Lan(6)
    a, b = lan.add_node("a"), lan.add_node("b")
    lan.run(3)
    assert a.of_type(kind) == []
    t0 = lan.now
    lan.call(b, action)
    assert lan.run_until(lambda: bool(a.of_type(kind)), timeout=1)
    assert lan.now - t0 < 0.01
    lan.run(3)
    (event,) = a.of_type(kind)  # once, though the burst repeats the beat
    assert check(event)
    (info,) = a.core.peers()
    assert info == a.core.find_peer(b.peer_id[:6])


def test_back_online_is_a_status_change() -> None:
    lan = Lan(7)
    a, b = lan.add_node("a"), lan.add_node("b")
    lan.run(2)
    lan.call(b, lambda c, now: c.set_away("brb", now))
    lan.run(cfg.ANNOUNCE_DELAYS[-1] + 0.2)  # after the burst, before the next heartbeat
    lan.call(b, lambda c, now: c.set_away(None, now))
    lan.run(1)
    changes = [(e.peer.status, e.peer.status_text) for e in a.of_type(ev.PeerStatusChanged)]
    assert changes == [("away", "brb"), ("online", "")]


# ----------------------------------------------------------------------- chat


def test_chat_reaches_room_members_and_listeners_only_never_self() -> None:
    lan = Lan(8)
    a = lan.add_node("a", rooms=("lobby", "dev"))
    lobby = lan.add_node("lob")
    dev = lan.add_node("dev", rooms=("dev",))
    listener = lan.add_node("lis", rooms=("dev",), all_rooms=True)
    lan.run(2)
    seq = lan.call(a, lambda c, now: c.say("#lobby", "héllo", now))
    lan.run(1)
    expected = [ev.ChatReceived(a.peer_id, "a", "lobby", "héllo", seq)]
    assert lobby.of_type(ev.ChatReceived) == expected
    assert listener.of_type(ev.ChatReceived) == expected
    assert dev.of_type(ev.ChatReceived) == []
    assert a.of_type(ev.ChatReceived) == []
    assert a.core.stats.own >= 1


def test_duplicated_chat_is_delivered_once() -> None:
    lan = Lan(9, duplicate=0.5)
    a, b = lan.add_node("a"), lan.add_node("b")
    lan.run(2)
    for i in range(60):

        def say(c: NodeCore, now: float, i: int = i) -> int:
            return c.say("lobby", f"m{i}", now)

        lan.call(a, say)
    lan.run(1)
    texts = [e.text for e in b.of_type(ev.ChatReceived)]
    assert sorted(texts) == sorted(f"m{i}" for i in range(60))
    assert b.core.stats.duplicates >= 15


def test_reordered_chat_is_delivered_once_each() -> None:
    lan = Lan(10, delay=(0.0, 0.05))
    a, b = lan.add_node("a"), lan.add_node("b")
    lan.run(2)
    for i in range(40):

        def say(c: NodeCore, now: float, i: int = i) -> int:
            return c.say("lobby", f"m{i}", now)

        lan.call(a, say)
        lan.run(0.002)
    lan.run(1)
    seqs = [e.seq for e in b.of_type(ev.ChatReceived)]
    assert seqs != sorted(seqs)  # the LAN did reorder them
    assert sorted(seqs) == list(range(1, 41))


def test_seq_window_accepts_late_numbers_once() -> None:
    w = SeqWindow()
    accepted = [w.accept(s) for s in (5, 3, 4, 3, 5, 1, 2, 2)]
    assert accepted == [True, True, True, False, False, True, True, False]
    assert w.accept(2000)
    assert not w.accept(2000 - 1024)  # too old to tell: treated as seen
    assert w.accept(2000 - 1023)


def test_huge_sequence_jump_is_accepted_without_a_huge_window() -> None:
    lan = Lan(11)
    a, b = lan.add_node("a"), lan.add_node("b")
    lan.run(2)
    bi = b.core.identity
    for seq in (1, 2**64 - 1, 2**64 - 1, 2**64 - 2, 2):
        chat = codec.encode(codec.Chat(bi.peer_id, bi.instance, seq, "b", "lobby", f"s{seq}"))

        def receive(c: NodeCore, now: float, chat: bytes = chat) -> None:
            c.receive_datagram(chat, addr(b), now)

        lan.call(a, receive)
    assert [e.seq for e in a.of_type(ev.ChatReceived)] == [1, 2**64 - 1, 2**64 - 2]
    assert a.core.stats.duplicates == 2  # the repeat, and 2: far below the window


def test_seq_window_jump_past_the_window_forgets_it() -> None:
    w = SeqWindow()
    assert w.accept(1) and w.accept(2**64 - 1)
    assert w.mask == 1 and w.highest == 2**64 - 1
    assert not w.accept(1)


# ------------------------------------------------------------ silence, pings


@pytest.mark.parametrize("seed", [12, 13, 14])
def test_crashed_peer_is_pinged_then_unreachable_then_removed(seed: int) -> None:
    lan = Lan(seed)
    a, b = lan.add_node("a"), lan.add_node("b")
    lan.run(3 + seed / 10)
    crash = lan.now
    lan.crash(b)
    lan.run(14)
    (unreachable,) = times(a, ev.PeerUnreachable, about(a, b))
    (left,) = times(a, ev.PeerLeft, about(a, b))
    assert 1.5 <= unreachable - crash <= 3.5
    assert 8.5 <= left - crash <= 10.5
    assert [e.reason for e in a.of_type(ev.PeerLeft)] == ["timeout"]
    assert not a.knows(b) and len(a.core.members) == 0
    pings = [s.time for s in lan.sent_by(a, codec.Ping) if s.to == addr(b)]
    # Before the crash: only the probe that verified b's address when b joined (13.6).
    verify = [t for t in pings if t <= crash]
    assert verify and verify[-1] - verify[0] < 1.0, verify
    pings = pings[len(verify) :]
    assert len([t for t in pings if t < unreachable]) >= 3  # PROTOCOL.md section 5
    assert all(crash < t <= left for t in pings)
    gaps = [y - x for x, y in itertools.pairwise(pings)]
    assert gaps == pytest.approx([cfg.PING_EVERY_INTERVALS] * len(gaps), abs=1e-6)


def test_any_datagram_is_a_sign_of_life() -> None:
    lan = Lan(15)
    a, b = lan.add_node("a"), lan.add_node("b")
    lan.run(2)
    lost = drop_incoming(a, lambda m: isinstance(m, codec.Beat) and m.sender == pid(b))
    for _ in range(60):
        lan.call(b, lambda c, now: c.say("lobby", "still here", now))
        lan.run(0.5)
    assert len(lost) > 20
    assert a.of_type(ev.PeerUnreachable) == [] and a.knows(b)
    # Never silent for 1.5 s: no ping but the probe that verified b's address at the start.
    assert len(lan.sent_by(a, codec.Ping)) == 1


def test_pongs_keep_a_peer_whose_heartbeats_are_lost() -> None:
    lan = Lan(16)
    a, b = lan.add_node("a"), lan.add_node("b")
    lan.run(2)
    drop_incoming(a, lambda m: isinstance(m, codec.Beat) and m.sender == pid(b))
    lan.run(30)
    assert len(lan.sent_by(a, codec.Ping)) >= 15
    assert len(lan.sent_by(b, codec.Pong)) >= 15
    assert a.of_type(ev.PeerUnreachable) == [] and a.of_type(ev.PeerLeft) == []
    assert a.knows(b)


def test_unreachable_peer_heard_again_is_reachable() -> None:
    lan = Lan(17)
    a, b = lan.add_node("a"), lan.add_node("b")
    lan.run(2)
    lan.partition(b)
    lan.run(5)
    assert len(a.of_type(ev.PeerUnreachable)) == 1
    assert a.core.find_peer("b").state == "unreachable"
    lan.heal(b)
    healed = lan.now
    assert lan.run_until(lambda: bool(a.of_type(ev.PeerReachable)), timeout=2)
    assert lan.now - healed <= 1.5  # the next ping or heartbeat
    (event,) = a.of_type(ev.PeerReachable)
    assert event.peer.state == "alive" and a.core.find_peer("b").state == "alive"
    lan.run(15)
    assert a.of_type(ev.PeerLeft) == [] and len(a.of_type(ev.PeerUnreachable)) == 1


def test_handle_timer_moves_the_timer_on_even_when_a_deadline_rounds_down() -> None:
    core = NodeCore(cfg.NodeConfig("a"), Identity(b"A" * 8, 1), uport=40001, rng=random.Random(0))
    heard = 1023.4163014089496  # (heard + 1.5) - heard == 1.4999999999998863
    assert (heard + 1.5) - heard < 1.5
    beat = codec.Beat(b"B" * 8, 1, "b", "h", 40002, "online", "", ("lobby",), 0, 1000)
    core.receive_datagram(codec.encode(beat), ("10.0.0.2", 40002), heard)
    verify(core, b"B" * 8, 1, ("10.0.0.2", 40002), heard)
    while (due := core.get_timer()) is not None and due < heard + 1.5:
        core.handle_timer(due)  # the verification probe's retry check: nothing left to do
    core.datagrams_to_send()
    assert due == heard + 1.5
    core.handle_timer(due)
    pings = [d for d in core.datagrams_to_send() if isinstance(decoded(d.data), codec.Ping)]
    assert pings  # the probe deadline has come
    assert core.get_timer() > due  # type: ignore[operator]


def test_lossy_lan_never_spins_the_timer() -> None:
    lan = Lan(19, loss=0.2)  # the LAN raises TimerStuck at the first stuck timer
    nodes = mesh(lan, 10)
    lan.run(120)
    assert all_know(nodes)


# ------------------------------------------------------------------- leaving


def test_graceful_leave_is_seen_at_once() -> None:
    lan = Lan(20)
    a, b = lan.add_node("a"), lan.add_node("b")
    lan.run(2.2)
    t0 = lan.now
    lan.leave(b)
    lan.run(0.2)
    (left,) = times(a, ev.PeerLeft)
    assert left - t0 < 0.01
    assert [e.reason for e in a.of_type(ev.PeerLeft)] == ["bye"]
    assert b.core.closed and not a.knows(b)
    byes = [round(s.time - t0, 6) for s in lan.sent_by(b, codec.Bye)]
    assert byes == list(cfg.BYE_DELAYS)
    lan.run(5)
    assert [s for s in lan.sent_by(b, codec.Beat) if s.time >= t0] == []
    with pytest.raises(ClosedError):
        b.core.say("lobby", "too late", lan.now)


def test_leave_survives_a_lost_bye() -> None:
    lan = Lan(21)
    a, b = lan.add_node("a"), lan.add_node("b")
    lan.run(2.2)
    lost: list[float] = []

    def first_copy_lost(src: Station, dst: Station) -> bool:
        if src is b and dst is a and not lost:
            lost.append(lan.now)
            return True
        return False

    lan.loss_model = first_copy_lost
    t0 = lan.now
    lan.leave(b)
    lan.run(0.2)
    assert lost == [t0]
    (left,) = times(a, ev.PeerLeft)
    assert cfg.BYE_DELAYS[1] <= left - t0 < 0.2  # the second copy did it
    assert [e.reason for e in a.of_type(ev.PeerLeft)] == ["bye"]


def test_peer_whose_byes_all_get_lost_times_out() -> None:
    """A closed node stops (as its process would), so no pong keeps a ghost alive."""
    lan = Lan(22)
    a, b = lan.add_node("a"), lan.add_node("b")
    lan.run(2)
    drop_incoming(a, lambda m: isinstance(m, codec.Bye))
    t0 = lan.now
    lan.leave(b)
    lan.run(11)
    assert not b.up
    (left,) = times(a, ev.PeerLeft)
    assert left - t0 <= 10.5
    assert a.of_type(ev.PeerLeft)[0].reason == "timeout"


def test_closed_core_sends_nothing_after_its_last_bye() -> None:
    lan = Lan(41)
    a, b = lan.add_node("a"), lan.add_node("b")
    lan.run(2)
    lan.call(a, lambda c, now: c.notice("going", now))
    lan.call(a, lambda c, now: c.send_direct(b.peer_id, "bye?", now))
    lan.crash(b)  # nothing gets acknowledged
    lan.leave(a)
    lan.run(0.3)
    assert a.core.closed
    last_bye = max(s.time for s in lan.sent_by(a, codec.Bye))
    core, now, after = a.core, lan.now, []
    for _ in range(150):  # drive the core by hand: the LAN stopped the closed node
        now += 0.1
        core.handle_timer(now)
        after += [decoded(d.data) for d in core.datagrams_to_send()]
    assert [s for s in lan.sent_by(a) if s.time > last_bye] == []
    assert [type(m).__name__ for m in after] == []


# ------------------------------------------------------------------- restart


def test_restart_replaces_the_peer_and_ignores_the_old_instance() -> None:
    lan = Lan(23)
    a, b = lan.add_node("a"), lan.add_node("b")
    lan.run(2)
    lan.call(b, lambda c, now: c.say("lobby", "before", now))
    lan.run(0.1)
    old = b.core.identity
    stale_chat = codec.encode(codec.Chat(old.peer_id, old.instance, 2, "b", "lobby", "ghost"))
    stale_beat = b.core._beat()
    b2 = lan.restart(b)
    assert b2.peer_id == b.peer_id and b2.core.identity.instance > old.instance
    assert lan.run_until(lambda: a.knows(b2), timeout=0.05)
    (restarted,) = a.of_type(ev.PeerRestarted)
    assert restarted.peer.instance == b2.core.identity.instance
    assert [p.peer_id for p in a.core.peers()] == [b.peer_id]
    assert len(a.of_type(ev.PeerJoined)) == 1
    for data in (stale_chat, stale_beat):

        def receive(c: NodeCore, now: float, data: bytes = data) -> None:
            c.receive_datagram(data, addr(b), now)

        lan.call(a, receive)
    assert a.core.stats.stale == 2
    assert a.core.find_peer("b").instance == b2.core.identity.instance
    lan.call(b2, lambda c, now: c.say("lobby", "after", now))  # seq 1 again, a new stream
    lan.run(15)
    assert [e.text for e in a.of_type(ev.ChatReceived)] == ["before", "after"]
    assert a.of_type(ev.PeerLeft) == [] and len(a.core.members) == 1


# ------------------------------------------------------------ two interfaces


@pytest.mark.parametrize("prefix", [24, 16])
def test_fake_lan_multicast_stays_in_the_subnet_its_prefix_says(prefix: int) -> None:
    lan = Lan(25, prefix=prefix)
    a = lan.add_node("a", ips=("10.0.0.5",))
    b = lan.add_node("b", ips=("10.0.1.5",))
    lan.run(3)
    assert (a.knows(b) and b.knows(a)) is (prefix == 16)


def test_node_on_two_subnets_is_one_peer_with_two_addresses() -> None:
    lan = Lan(24)
    obs = lan.add_node("obs", ips=("10.0.0.5", "10.0.1.5"))
    two = lan.add_node("two", ips=("10.0.0.9", "10.0.1.9"))
    lan.run(3)
    (info,) = obs.core.peers()
    assert info.peer_id == two.peer_id
    assert sorted(info.addresses) == ["10.0.0.9", "10.0.1.9"]
    assert sorted(d[0] for d in obs.core.members.get(pid(two)).destinations()) == [  # type: ignore[union-attr]
        "10.0.0.9",
        "10.0.1.9",
    ]
    assert len(obs.of_type(ev.PeerJoined)) == 1
    dups = obs.core.stats.duplicates
    lan.call(two, lambda c, now: c.say("lobby", "twice on the wire", now))
    lan.run(0.5)
    assert [e.text for e in obs.of_type(ev.ChatReceived)] == ["twice on the wire"]
    assert obs.core.stats.duplicates == dups + 1


# -------------------------------------------------------------------- direct


def test_direct_message_is_delivered_and_acknowledged() -> None:
    lan = Lan(25)
    a, b = lan.add_node("a"), lan.add_node("b")
    lan.run(2)
    msg_id = lan.call(a, lambda c, now: c.send_direct(b.peer_id, "psst", now))
    assert lan.run_until(lambda: bool(a.of_type(ev.DirectDelivered)), timeout=0.05)
    assert a.of_type(ev.DirectDelivered) == [ev.DirectDelivered(msg_id, b.peer_id, 1)]
    assert b.of_type(ev.DirectReceived) == [ev.DirectReceived(a.peer_id, "a", "psst", msg_id)]
    lan.run(6)
    assert a.of_type(ev.DirectFailed) == []
    assert len([s for s in lan.sent_by(a, codec.Direct)]) == 1  # no retry after the ack


def test_direct_message_to_a_crashed_peer_fails() -> None:
    lan = Lan(26)
    a, b = lan.add_node("a"), lan.add_node("b")
    lan.run(2)
    lan.crash(b)
    t0 = lan.now
    msg_id = lan.call(a, lambda c, now: c.send_direct(b.peer_id, "hello?", now))
    lan.run(6)
    (failed,) = a.of_type(ev.DirectFailed)
    assert failed == ev.DirectFailed(msg_id, b.peer_id, 6, False)
    assert times(a, ev.DirectFailed)[0] - t0 == pytest.approx(cfg.DIRECT_GIVE_UP, abs=1e-6)
    tries = [s.time - t0 for s in lan.sent_by(a, codec.Direct) if s.to == addr(b)]
    assert tries == pytest.approx(list(cfg.DIRECT_DELAYS), abs=1e-6)
    assert a.of_type(ev.DirectDelivered) == []


def test_direct_with_every_ack_lost_shows_once_and_is_unconfirmed() -> None:
    lan = Lan(27)
    a, b = lan.add_node("a"), lan.add_node("b")
    lan.run(2)
    lost = drop_incoming(a, lambda m: isinstance(m, codec.Ack) and m.sender == pid(b))
    msg_id = lan.call(a, lambda c, now: c.send_direct(b.peer_id, "did you get this?", now))
    lan.run(6)
    assert len(lost) == len(cfg.DIRECT_DELAYS)  # every try arrived and was acked in vain
    assert b.of_type(ev.DirectReceived) == [
        ev.DirectReceived(a.peer_id, "a", "did you get this?", msg_id)
    ]
    assert b.core.stats.duplicates == len(cfg.DIRECT_DELAYS) - 1
    # b was heard (its heartbeats) all along: "unconfirmed", not "failed".
    assert a.of_type(ev.DirectFailed) == [ev.DirectFailed(msg_id, b.peer_id, 6, True)]
    assert a.of_type(ev.DirectDelivered) == []


def test_direct_to_an_unknown_peer_id_raises() -> None:
    lan = Lan(28)
    a = lan.add_node("a")
    with pytest.raises(PeerError):
        a.core.send_direct("00112233445566ff", "hi", lan.now)
    assert a.core.datagrams_to_send() == []


@pytest.mark.parametrize("peer_id", ["bob", "abc", "0011223344556g"])
def test_direct_to_a_malformed_peer_id_raises_peer_error(peer_id: str) -> None:
    lan = Lan(29)
    a = lan.add_node("a")
    with pytest.raises(PeerError):
        a.core.send_direct(peer_id, "hi", lan.now)


def test_find_peer_by_nick_case_and_id_prefix() -> None:
    lan = Lan(30)
    me = lan.add_node("me")
    bob = lan.add_node("bob", peer_id=bytes.fromhex("b0b0000000000001"))
    carol = lan.add_node("Carol", peer_id=bytes.fromhex("ca20100000000002"))
    lan.add_node("carl", peer_id=bytes.fromhex("b0b1000000000003"))
    lan.run(2)
    find = me.core.find_peer
    assert find("bob").peer_id == bob.peer_id
    assert find("BOB").peer_id == bob.peer_id
    assert find("carol").peer_id == carol.peer_id
    assert find("ca201").peer_id == carol.peer_id
    assert find("B0B0").peer_id == bob.peer_id
    with pytest.raises(PeerError, match="ambiguous"):
        find("b0b")
    with pytest.raises(PeerError, match="no peer"):
        find("dave")
    with pytest.raises(PeerError, match="no peer"):
        find("b")  # one character is no id prefix


def test_find_peer_prefers_the_exact_nick_and_names_duplicates() -> None:
    lan = Lan(31)
    me = lan.add_node("me")
    lan.add_node("Bob", ips=("10.0.0.20",))
    lower = lan.add_node("bob", ips=("10.0.0.21",))
    lan.run(2)
    assert me.core.find_peer("bob").peer_id == lower.peer_id  # exact beats case-insensitive
    with pytest.raises(PeerError, match="ambiguous"):
        me.core.find_peer("BOB")
    lan.add_node("bob", ips=("10.0.0.22",))
    lan.run(2)
    with pytest.raises(PeerError, match=r"ambiguous.*host-bob"):
        me.core.find_peer("bob")


# ------------------------------------------------------------------- notices


def test_notice_reaches_each_member_once_and_is_acknowledged_once() -> None:
    lan = Lan(32, duplicate=0.5)
    a, *others = mesh(lan, 4)
    tool = lan.add_node("tool", member=False)
    lan.run(1)
    seq = lan.call(a, lambda c, now: c.notice("fire drill at 3", now))
    lan.run(5)
    for o in others:
        assert o.of_type(ev.NoticeReceived) == [
            ev.NoticeReceived(a.peer_id, "n0", "fire drill at 3", seq)
        ]
    assert tool.of_type(ev.NoticeReceived) == []
    acks = a.of_type(ev.NoticeAcknowledged)
    assert sorted(acks, key=lambda e: e.peer_id) == sorted(
        (ev.NoticeAcknowledged(seq, o.peer_id) for o in others), key=lambda e: e.peer_id
    )
    assert len(lan.sent_by(a, codec.Notice)) == len(cfg.NOTICE_DELAYS)
    assert a.core.stats.duplicates > 0  # later acks of the repeats were ignored


def test_notice_from_a_one_shot_tool_is_acknowledged() -> None:
    lan = Lan(33)
    members = mesh(lan, 3)
    tool = lan.add_node("tool", member=False)
    seq = lan.call(tool, lambda c, now: c.notice("deploy", now))
    lan.run(5)
    assert sorted(e.peer_id for e in tool.of_type(ev.NoticeAcknowledged)) == sorted(
        m.peer_id for m in members
    )
    assert all(
        m.of_type(ev.NoticeReceived) == [ev.NoticeReceived(tool.peer_id, "tool", "deploy", seq)]
        for m in members
    )


def test_notices_get_through_twenty_percent_loss() -> None:
    lan = Lan(34, loss=0.2)
    nodes = mesh(lan, 10)
    sent: set[tuple[str, int]] = set()
    for i in range(20):
        sender = nodes[i % 10]

        def notice(c: NodeCore, now: float, i: int = i) -> int:
            return c.notice(f"notice {i}", now)

        seq = lan.call(sender, notice)
        sent.add((sender.peer_id, seq))
        lan.run(0.1)
    lan.run(5)
    got = 0
    for n in nodes:
        keys = [(e.peer_id, e.seq) for e in n.of_type(ev.NoticeReceived)]
        assert len(keys) == len(set(keys))  # never twice
        assert set(keys) <= sent and all(k[0] != n.peer_id for k in keys)
        got += len(keys)
        acks = [(e.seq, e.peer_id) for e in n.of_type(ev.NoticeAcknowledged)]
        assert len(acks) == len(set(acks))
    assert got / (20 * 9) >= 0.99


# ---------------------------------------------------------------- robustness


def _valid_datagrams() -> dict[str, bytes]:
    s, i = b"Z" * 8, 7
    return {
        "beat": codec.encode(
            codec.Beat(s, i, "zed", "host", 40009, "away", "out", ("lobby", "dev"), 3, 1000)
        ),
        "query": codec.encode(codec.Query(s, i, 40009)),
        "bye": codec.encode(codec.Bye(s, i)),
        "chat": codec.encode(codec.Chat(s, i, 4, "zed", "lobby", "hi")),
        "notice": codec.encode(codec.Notice(s, i, 5, "zed", "hi all", 40009)),
        "direct": codec.encode(codec.Direct(s, i, 1, "zed", "hi you")),
        "ack": codec.encode(codec.Ack(s, i, codec.T_DIRECT, 1, 9)),
        "ping": codec.encode(codec.Ping(s, i, 1)),
        "pong": codec.encode(codec.Pong(s, i, 1)),
    }


def _raw(*body: Any, header: bytes = codec.HEADER) -> bytes:
    packed: bytes = msgpack.packb(list(body), use_bin_type=True)
    return header + packed


_S = b"Z" * 8
_BEAT = [codec.T_BEAT, _S, 7, "zed", "host", 40009, 0, "", ["lobby"], 0, 1000]

MALFORMED: dict[str, bytes] = {
    "empty": b"",
    "header only": codec.HEADER,
    "oversized": codec.HEADER + b"\x00" * (codec.MAX_DATAGRAM + 1),
    "not msgpack": codec.HEADER + b"\xc1\xc1\xc1",
    "trailing bytes": _raw(*_BEAT) + b"\x00",
    "body is a map": codec.HEADER + msgpack.packb({"t": 1}),
    "body too short": _raw(codec.T_BYE, _S),
    "unknown type": _raw(42, _S, 7),
    "type is a string": _raw("1", _S, 7),
    "sender is str": _raw(codec.T_BYE, "ZZZZZZZZ", 7),
    "sender 7 bytes": _raw(codec.T_BYE, b"Z" * 7, 7),
    "instance negative": _raw(codec.T_BYE, _S, -1),
    "instance bool": _raw(codec.T_BYE, _S, True),
    "instance float": _raw(codec.T_BYE, _S, 7.0),
    "beat nick int": _raw(*_BEAT[:3], 5, *_BEAT[4:]),
    "beat nick with space": _raw(*_BEAT[:3], "z ed", *_BEAT[4:]),
    "beat port 0": _raw(*_BEAT[:5], 0, *_BEAT[6:]),
    "beat status 2": _raw(*_BEAT[:6], 2, *_BEAT[7:]),
    "beat rooms str": _raw(*_BEAT[:8], "lobby", *_BEAT[9:]),
    "beat 17 rooms": _raw(*_BEAT[:8], [f"r{i}" for i in range(17)], *_BEAT[9:]),
    "beat room bytes": _raw(*_BEAT[:8], [b"lobby"], *_BEAT[9:]),
    "beat interval 0": _raw(*_BEAT[:10], 0),
    "beat interval over an hour": _raw(*_BEAT[:10], 3_600_001),  # PROTOCOL.md 3.1
    "beat missing field": _raw(*_BEAT[:10]),
    "chat seq 0": _raw(codec.T_CHAT, _S, 7, 0, "zed", "lobby", "hi"),
    "chat text bytes": _raw(codec.T_CHAT, _S, 7, 1, "zed", "lobby", b"hi"),
    "chat text too long": _raw(codec.T_CHAT, _S, 7, 1, "zed", "lobby", "x" * 1001),
    "notice port str": _raw(codec.T_NOTICE, _S, 7, 1, "zed", "hi", "40009"),
    "ack kind 3": _raw(codec.T_ACK, _S, 7, 3, 1, 9),
    "ack ref 0": _raw(codec.T_ACK, _S, 7, codec.T_DIRECT, 0, 9),
    "ping token nil": _raw(codec.T_PING, _S, 7, None),
    "direct id negative": _raw(codec.T_DIRECT, _S, 7, -1, "zed", "hi"),
}


def _observer() -> tuple[Lan, FakeNode, list[ev.PeerInfo]]:
    lan = Lan(35)
    a, _ = lan.add_node("a"), lan.add_node("b")
    lan.run(2)
    a.events.clear()
    return lan, a, table(a.core)


def _feed(lan: Lan, node: FakeNode, data: bytes) -> None:
    node.core.receive_datagram(data, ("10.0.0.66", 40066), lan.now)


def _drops(core: NodeCore) -> dict[str, int]:
    s = core.stats
    return {
        "foreign": s.foreign,
        "wrong_version": s.wrong_version,
        "sealed": s.sealed,
        "malformed": s.malformed,
    }


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_datagram_is_dropped_and_counted(case: str) -> None:
    lan, a, before = _observer()
    _feed(lan, a, MALFORMED[case])
    assert _drops(a.core) == {"foreign": 0, "wrong_version": 0, "sealed": 0, "malformed": 1}
    assert table(a.core) == before and a.events == []
    assert a.core.datagrams_to_send() == []


@pytest.mark.parametrize(
    ("header", "counter"),
    [(b"XX\x01\x00", "foreign"), (b"LC\x02\x00", "wrong_version"), (b"LC\x01\x01", "sealed")],
)
def test_foreign_and_future_datagrams_are_counted_by_reason(header: bytes, counter: str) -> None:
    lan, a, before = _observer()
    for data in _valid_datagrams().values():
        _feed(lan, a, header + data[len(codec.HEADER) :])
    drops = _drops(a.core)
    assert drops.pop(counter) == 9 and set(drops.values()) == {0}
    assert table(a.core) == before and a.events == []


@pytest.mark.parametrize("kind", list(_valid_datagrams()))
def test_every_truncation_of_a_valid_datagram_is_dropped(kind: str) -> None:
    lan, a, before = _observer()
    data = _valid_datagrams()[kind]
    for cut in range(len(data)):
        _feed(lan, a, data[:cut])
    assert a.core.stats.malformed == len(data)
    assert table(a.core) == before and a.events == []
    assert a.core.datagrams_to_send() == []


@settings(max_examples=150, deadline=None, database=None)
@given(
    data=st.one_of(
        st.binary(max_size=1300),
        st.binary(max_size=200).map(lambda b: codec.HEADER + b),
        st.tuples(st.sampled_from(sorted(_valid_datagrams().values())), st.integers(4, 200)).map(
            lambda t: t[0][: t[1]] + b"\xff" + t[0][t[1] + 1 :]
        ),
    )
)
def test_random_bytes_never_raise_nor_add_peers(data: bytes) -> None:
    lan, a, before = _observer()
    _feed(lan, a, data)
    after = table(a.core)
    if decoded(data) is None:
        assert after == before and a.events == []
        assert sum(_drops(a.core).values()) == 1
    else:
        assert {p.peer_id for p in after} >= {p.peer_id for p in before}


def test_unpadded_query_is_dropped_not_answered() -> None:
    lan, a, _ = _observer()
    full = codec.encode(codec.Query(_S, 7, 40066))
    assert len(full) == codec.QUERY_SIZE
    short = _raw(codec.T_QUERY, _S, 7, 40066, b"")
    one_short = _raw(codec.T_QUERY, _S, 7, 40066, bytes(len(full) - len(short) - 2))
    assert len(short) < 30 and len(one_short) == codec.QUERY_SIZE - 1
    for data in (short, one_short):
        _feed(lan, a, data)
    lan.call(a, lambda c, now: None)
    lan.run(1)
    assert not [s for s in lan.sent_by(a, codec.Beat) if s.to == ("10.0.0.66", 40066)]
    assert a.core.stats.malformed == 2
    _feed(lan, a, full)  # the padded one is answered
    lan.call(a, lambda c, now: None)
    lan.run(1)
    assert len([s for s in lan.sent_by(a, codec.Beat) if s.to == ("10.0.0.66", 40066)]) == 1


# ------------------------------------------------ long runs, lossy LANs


def test_no_false_departures_in_ten_minutes_at_twenty_percent_loss() -> None:
    lan = Lan(36, loss=0.2)
    nodes = mesh(lan, 10)
    lan.run(600)
    for n in nodes:
        assert n.of_type(ev.PeerLeft) == [], n.name
        assert sorted(p.peer_id for p in n.core.peers()) == sorted(
            o.peer_id for o in nodes if o is not n
        )
    # The loss was real: peers were missed and probed, yet nobody was removed.
    assert sum(len(lan.sent_by(n, codec.Ping)) for n in nodes) > 100


@settings(
    max_examples=6,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(seed=st.integers(0, 2**32 - 1), loss=st.floats(0.0, 0.3))
def test_peer_tables_agree_after_a_quiet_period(seed: int, loss: float) -> None:
    lan = Lan(seed, loss=loss)
    nodes = [lan.add_node(f"n{i}") for i in range(6)]
    lan.run(4)
    lan.crash(nodes[0])
    nodes[1] = lan.restart(nodes[1])
    lan.leave(nodes[2])
    late = lan.add_node("late")
    lan.run(6)
    lan.loss = 0.0
    lan.run(cfg.REMOVE_AFTER + 2)
    live = [nodes[1], *nodes[3:], late]
    for n in live:
        ids = [p.peer_id for p in n.core.peers()]
        assert sorted(ids) == sorted(o.peer_id for o in live if o is not n), n.name
        assert all(n.knows(o) for o in live if o is not n)
        assert all(p.state == "alive" for p in n.core.peers())


# ------------------------------------------------------------- query answers


def test_query_answers_are_rate_limited_per_querier() -> None:
    lan = Lan(37)
    member = lan.add_node("m")
    lan.run(2)
    q1, q2 = ("10.0.0.201", 40201), ("10.0.0.202", 40202)

    def query(source: Address) -> None:
        data = codec.encode(codec.Query(bytes([source[1] % 256]) * 8, 1, source[1]))
        lan.call(member, lambda c, now: c.receive_datagram(data, source, now))

    def answers(source: Address) -> int:
        return len([s for s in lan.sent_by(member, codec.Beat) if s.to == source])

    for _ in range(3):
        query(q1)
        lan.run(cfg.QUERY_ANSWER_GAP / 4)
    query(q2)  # another querier is not held back by q1's flood
    lan.run(0.6)
    assert (answers(q1), answers(q2)) == (1, 1)
    assert member.core.stats.rate_limited == 2
    query(q1)  # past QUERY_ANSWER_GAP: answered again
    lan.run(0.6)
    assert answers(q1) == 2 and member.core.stats.rate_limited == 2


def test_query_naming_a_known_member_is_not_answered_by_it() -> None:
    lan = Lan(40)
    a, b = lan.add_node("a"), lan.add_node("b")
    lan.run(2)
    source = ("10.0.0.203", 40203)
    data = codec.encode(codec.Query(b"Q" * 8, 1, source[1], known=(pid(a),)))
    for node in (a, b):
        lan.call(node, lambda c, now: c.receive_datagram(data, source, now))
    lan.run(0.6)
    assert [s for s in lan.sent_by(a, codec.Beat) if s.to == source] == []
    assert len([s for s in lan.sent_by(b, codec.Beat) if s.to == source]) == 1


def test_query_is_padded_so_its_answer_is_never_larger() -> None:
    lan = Lan(38)
    big = lan.add_node(
        "é" * 16,
        rooms=tuple(f"{i:02d}" + "r" * 30 for i in range(codec.MAX_ROOMS)),
        status="away",
        status_text="s" * codec.MAX_STATUS_BYTES,
    )
    big.core.config = cfg.NodeConfig(**{**big.core.config.__dict__, "host": "h" * 200})
    small = lan.add_node("s")
    lan.run(2)
    tool = lan.add_node("tool", member=False)
    lan.run(1)
    queries = lan.sent_by(tool, codec.Query)
    assert len(queries) == len(cfg.QUERY_DELAYS_ONESHOT)
    assert {len(q.data) for q in queries} == {codec.QUERY_SIZE}
    for member in (big, small):
        replies = [s for s in lan.sent_by(member, codec.Beat) if s.to == addr(tool)]
        assert 1 <= len(replies) <= len(queries)
        assert all(len(r.data) <= codec.QUERY_SIZE for r in replies)
    worst = max(len(r.data) for r in lan.sent_by(big, codec.Beat))
    assert worst > 700  # a worst-case beat really was tried
    assert len(tool.core.find_peer(big.core.nick).host.encode()) == codec.MAX_HOST_BYTES


def test_stats_count_what_was_sent_and_received() -> None:
    lan = Lan(39)
    a, b = lan.add_node("a"), lan.add_node("b")
    lan.run(5)
    lan.call(a, lambda c, now: c.say("lobby", "hi", now))
    lan.run(1)
    sent = lan.sent_by(a)
    assert a.core.stats.sent == len(sent) > 10
    assert {s.to for s in sent} <= {None, addr(b)}
    # No loss: every datagram of a arrived once, beside b's own looped-back multicast.
    assert b.core.stats.received - b.core.stats.own == len(sent)
    assert a.core.stats.own == len([s for s in sent if s.to is None])
