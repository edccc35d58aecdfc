"""Loss repair of room chat and notices (PROTOCOL.md section 10), in virtual time.

Gap detection, Nack suppression, the sender's repair window and its bounds,
late and lost reporting, the Nack and Gone codec, and a small run of
scripts/simulate asserting the delivery targets. Nothing here sleeps.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lanchat.codec
from lanchat import codec
from lanchat import config as cfg
from lanchat import events as ev
from lanchat.codec import Gone, Nack
from lanchat.core import Address, Identity, NodeCore
from lanchat.errors import ConfigError
from lanchat.testing import FakeLan, FakeNode, Station, run_timers
from tests.script_loader import load_script
from tests.test_codec import REASONS as CODEC_REASONS
from tests.test_core import Lan, addr, decoded, pid, times

ALICE = bytes.fromhex("a11ce0000000a11c")
ALICE_INSTANCE = 0x019B76DAA8004C43
BOB = bytes.fromhex("b0b0000000000b0b")
BOB_INSTANCE = 0x019B76DAACD20042
U64_MAX = 2**64 - 1

# ------------------------------------------------------------------ helpers


def drop_first(node: FakeNode, match: Callable[[codec.Message], bool], count: int = 1) -> list[Any]:
    """Make `node` lose the first `count` arriving datagrams that match; returns them."""
    lost: list[Any] = []
    receive = node.core.receive_datagram

    def receive_datagram(data: bytes, source: Address, now: float, **kw: Any) -> None:
        msg = decoded(data)
        if msg is not None and len(lost) < count and match(msg):
            lost.append(msg)
            return
        receive(data, source, now, **kw)

    node.core.receive_datagram = receive_datagram  # type: ignore[method-assign]
    return lost


def chat_of(sender: FakeNode, seq: int | None = None) -> Callable[[codec.Message], bool]:
    """Matches Chat (or Notice) datagrams of `sender`, of one seq if given."""
    return lambda m: (
        isinstance(m, codec.Chat | codec.Notice)
        and m.sender == pid(sender)
        and (seq is None or m.seq == seq)
    )


def nacks(lan: Lan, node: FakeNode) -> list[Any]:
    return lan.sent_by(node, codec.Nack)


def repairs(lan: Lan, node: FakeNode, seq: int) -> list[Any]:
    """Copies of `node`'s Chat/Notice `seq` after the first."""
    return [
        s
        for s in lan.sent_by(node)
        if isinstance(s.msg, codec.Chat | codec.Notice) and s.msg.seq == seq
    ][1:]


def chats_sent(lan: Lan, node: FakeNode, since: float) -> list[int]:
    """The seqs of the Chat datagrams `node` sent since then (originals and repairs)."""
    return [
        s.msg.seq for s in lan.sent_by(node) if isinstance(s.msg, codec.Chat) and s.time >= since
    ]


def pair(seed: int, **kw: Any) -> tuple[Lan, FakeNode, FakeNode]:
    lan = Lan(seed, **kw)
    a, b = lan.add_node("a"), lan.add_node("b")
    lan.run(2)
    return lan, a, b


def say(lan: Lan, node: FakeNode, text: str = "hi") -> int:
    seq: int = lan.call(node, lambda core, now: core.say("lobby", text, now))
    return seq


def notice(lan: Lan, node: FakeNode, text: str) -> int:
    seq: int = lan.call(node, lambda core, now: core.notice(text, now))
    return seq


def feed(lan: Lan, node: FakeNode, msg: codec.Message, source: Address) -> None:
    data = codec.encode(msg)
    lan.call(node, lambda core, now: core.receive_datagram(data, source, now))


def nack_from(a: FakeNode, b: FakeNode, *ranges: tuple[int, int]) -> Nack:
    """A Nack from a (a peer b knows) for b's stream."""
    ai, bi = a.core.identity, b.core.identity
    return Nack(ai.peer_id, ai.instance, bi.peer_id, bi.instance, tuple(ranges))


def beat(sender: bytes, last_seq: int) -> codec.Beat:
    return codec.Beat(sender, 1, "b", "h", 40002, "online", "", ("lobby",), last_seq, 1000)


def lone_core() -> NodeCore:
    return NodeCore(cfg.NodeConfig("a"), Identity(b"A" * 8, 1), uport=40001, rng=random.Random(3))


def drive(core: NodeCore, until: float) -> list[tuple[float, codec.Message | None]]:
    """Run a lone core's timers up to `until`; what it sent, with times (-1: queued before)."""
    return [(-1.0 if t is None else t, decoded(d.data)) for t, d in run_timers(core, until)]


def lost_events(node: FakeNode) -> list[tuple[int, int, int]]:
    return [(e.count, e.first_seq, e.last_seq) for e in node.of_type(ev.MessagesLost)]


def first_nack_within() -> tuple[float, float]:
    """How soon after a gap is seen its first Nack goes out: a back-off, or more if put off."""
    low, high = cfg.NACK_BACKOFF
    return low, (1 + cfg.NACK_DEFERRALS) * high


COPIES = 1 + len(cfg.REPAIR_REPEATS)  # a repair and its repeats


# --------------------------------------------------------------- gap detection


def test_gap_shown_by_a_later_seq_is_asked_for_after_a_random_back_off() -> None:
    lan, a, b = pair(101)
    drop_first(a, chat_of(b, 1))
    say(lan, b, "one")
    lan.run(0.005)
    say(lan, b, "two")
    assert lan.run_until(lambda: len(a.of_type(ev.ChatReceived)) == 1, timeout=0.01)
    seen = lan.now  # seq 2 arrived: seq 1 is missing
    lan.run(1)
    (nack,) = nacks(lan, a)
    assert nack.to is None  # multicast: others missing it hold back
    assert nack.msg == nack_from(a, b, (1, 1))
    low, high = first_nack_within()
    assert low <= nack.time - seen <= high
    got = [(e.seq, e.text, e.late) for e in a.of_type(ev.ChatReceived)]
    assert got == [(2, "two", False), (1, "one", True)]  # shown when it came, marked late
    assert len(repairs(lan, b, 1)) == COPIES  # the repair and its repeats
    assert a.core.stats.duplicates >= 1 and a.of_type(ev.MessagesLost) == []


def test_lost_last_message_is_noticed_from_the_first_tail_beat() -> None:
    lan, a, b = pair(102)
    drop_first(a, chat_of(b, 1))
    t0 = lan.now
    say(lan, b, "last words")
    lan.run(1)
    tail = [s.time - t0 for s in lan.sent_by(b, codec.Beat) if s.time >= t0]
    assert tail[:3] == pytest.approx(list(cfg.TAIL_BEAT_DELAYS), abs=1e-9)
    (nack,) = nacks(lan, a)
    low, high = first_nack_within()
    assert cfg.TAIL_BEAT_DELAYS[0] + low <= nack.time - t0 <= cfg.TAIL_BEAT_DELAYS[0] + high + 0.005
    (got,) = a.of_type(ev.ChatReceived)
    assert (got.text, got.late) == ("last words", False)  # nothing later had arrived


def test_beat_last_seq_above_what_arrived_opens_a_hole() -> None:
    core = lone_core()
    source = ("10.0.0.2", 40002)
    core.receive_datagram(codec.encode(beat(b"B" * 8, 0)), source, 10.0)
    assert [m for _, m in drive(core, 10.2) if isinstance(m, codec.Nack)] == []
    core.receive_datagram(codec.encode(beat(b"B" * 8, 3)), source, 10.5)
    sent = [(t, m) for t, m in drive(core, 10.6) if isinstance(m, codec.Nack)]
    assert [m.ranges for _, m in sent] == [((1, 3),)]
    low, high = first_nack_within()
    assert 10.5 + low <= sent[0][0] <= 10.5 + high


def test_history_before_a_stream_was_first_heard_is_never_asked_for() -> None:
    core = lone_core()
    source = ("10.0.0.2", 40002)
    core.receive_datagram(codec.encode(beat(b"B" * 8, 500)), source, 10.0)
    chat = codec.Chat(b"C" * 8, 1, 7, "c", "lobby", "first heard")  # not even a known peer
    core.receive_datagram(codec.encode(chat), ("10.0.0.3", 40003), 10.0)
    assert [m for _, m in drive(core, 20.0) if isinstance(m, codec.Nack)] == []
    assert not any(isinstance(e, ev.MessagesLost) for e in iter(core.next_event, None))


def test_lossless_chat_and_notices_cause_no_nack_and_no_loss_report() -> None:
    lan = Lan(103)
    nodes = [lan.add_node(f"n{i}") for i in range(4)]
    lan.run(2)
    for i in range(40):
        node = nodes[i % 4]
        if i % 10 == 0:
            notice(lan, node, f"notice {i}")
        else:
            say(lan, node, f"chat {i}")
        lan.run(0.03)
    lan.run(5)
    for n in nodes:
        assert nacks(lan, n) == [] and n.of_type(ev.MessagesLost) == []
        assert len(n.of_type(ev.ChatReceived)) + len(n.of_type(ev.NoticeReceived)) == 30
        assert not any(e.late for e in n.of_type(ev.ChatReceived))


def test_one_shot_tool_never_asks_for_repairs() -> None:
    lan, _, b = pair(104)
    tool = lan.add_node("tool", member=False)
    lan.run(1)
    drop_first(tool, chat_of(b, 1))
    say(lan, b)
    say(lan, b)
    lan.run(5)
    assert nacks(lan, tool) == [] and tool.of_type(ev.MessagesLost) == []


# ---------------------------------------------------------------- suppression


@pytest.mark.parametrize("seed", range(110, 118))
def test_two_receivers_missing_the_same_seq_put_one_nack_on_the_wire(seed: int) -> None:
    lan = Lan(seed)
    s, r1, r2, r3 = (lan.add_node(n) for n in ("s", "r1", "r2", "r3"))
    lan.run(2)
    for r in (r1, r2):
        drop_first(r, chat_of(s, 1))
    say(lan, s, "once")
    lan.run(2)
    asked = nacks(lan, r1) + nacks(lan, r2)
    assert len(asked) == 1, [(x.time, x.msg) for x in asked]
    assert nacks(lan, r3) == []  # it has the message
    # The other one heard the Nack (suppressed), or the repair came first.
    assert r1.core.stats.nacks_suppressed + r2.core.stats.nacks_suppressed <= 1
    for r in (r1, r2, r3):
        assert [e.text for e in r.of_type(ev.ChatReceived)] == ["once"]


@pytest.mark.parametrize(
    ("heard", "asked", "suppressed"),
    [
        (((1, 1),), [(2, 2)], 1),  # the part it covers is asked for; the rest is ours to ask
        (((2, 2),), [(1, 1)], 1),
        (((1, 2),), [], 1),
        (((1, 5),), [], 2),  # it also shows 4 and 5 exist: a second hole, asked for too
        (((7, 9),), [(1, 2), (4, 6)], 1),  # 4-9 exist: 7-9 asked by it, 1-2 and 4-6 by us
    ],
)
def test_a_nack_suppresses_the_part_of_a_hole_it_covers(
    heard: tuple[tuple[int, int], ...],
    asked: list[Any],
    suppressed: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cfg, "REPAIR_WAITS", (1.0,) * 10)  # no second round in sight
    core = lone_core()
    b, c = ("10.0.0.2", 40002), ("10.0.0.3", 40003)
    core.receive_datagram(codec.encode(beat(b"B" * 8, 0)), b, 10.0)
    core.receive_datagram(codec.encode(beat(b"C" * 8, 0)), c, 10.0)
    chat = codec.Chat(b"B" * 8, 1, 3, "b", "lobby", "three")
    core.receive_datagram(codec.encode(chat), b, 10.0)  # 1 and 2 are missing
    other = Nack(b"C" * 8, 1, b"B" * 8, 1, heard)
    core.receive_datagram(codec.encode(other), c, 10.001)
    sent = [m for _, m in drive(core, 10.9) if isinstance(m, codec.Nack)]
    assert sorted(r for m in sent for r in m.ranges) == asked
    assert core.stats.nacks_suppressed == suppressed


@pytest.mark.parametrize("seed", range(160, 166))
def test_of_twenty_receivers_missing_one_seq_one_asks(seed: int) -> None:
    # Each waits a random back-off; the first Nack reaches the others before theirs fire.
    lan = Lan(seed)
    nodes = [lan.add_node(f"n{i}") for i in range(21)]
    assert lan.run_until(lambda: all(a.knows(b) for a in nodes for b in nodes if a is not b), 5)
    sender, receivers = nodes[0], nodes[1:]
    for r in receivers:
        drop_first(r, chat_of(sender, 1))
    say(lan, sender, "once")
    lan.run(2)
    assert sum(len(nacks(lan, r)) for r in receivers) == 1
    assert all(len(r.of_type(ev.ChatReceived)) == 1 for r in receivers)


def test_backoff_is_skewed_late_in_a_big_group_and_bounded() -> None:
    lan = Lan(167)
    nodes = [lan.add_node(f"n{i}") for i in range(30)]
    assert lan.run_until(lambda: len(nodes[0].core.members) == 29, 5)
    low, high = cfg.NACK_BACKOFF
    draws = sorted(nodes[0].core._repair._backoff() for _ in range(2000))
    assert low <= draws[0] and draws[-1] <= high
    # lambda = ln 30 + 1 = 4.4: the density at the end is e^4.4 = 82 times the one at the start.
    assert draws[len(draws) // 2] > low + 0.8 * (high - low)
    assert draws[len(draws) // 50] < low + 0.3 * (high - low)  # yet a few fire early
    alone = sorted(lone_core()._repair._backoff() for _ in range(2000))  # no member known: uniform
    assert draws[len(draws) // 2] - alone[len(alone) // 2] > 0.25 * (high - low)


def _gap_then(silent: bool) -> float:
    """When a lone core asks for a gap, hearing the group every 5 ms or nothing at all."""
    core = lone_core()
    b = ("10.0.0.2", 40002)
    core.receive_datagram(codec.encode(beat(b"B" * 8, 0)), b, 10.0)
    chat = codec.Chat(b"B" * 8, 1, 2, "b", "lobby", "two")
    core.receive_datagram(codec.encode(chat), b, 10.0)  # seq 1 is missing
    now = 10.0
    while now < 11.0:
        now = round(now + 0.005, 3)
        if not silent:
            core.receive_datagram(codec.encode(beat(b"B" * 8, 2)), b, now)
        for when, msg in drive(core, now):
            if isinstance(msg, codec.Nack):
                return when
    raise AssertionError("no Nack within 1 s")


def test_a_receiver_that_hears_nothing_puts_its_nack_off(monkeypatch: pytest.MonkeyPatch) -> None:
    # Deaf (in a loss burst?) it may have missed the Nack or repair that would have
    # suppressed it: it waits up to NACK_DEFERRALS more back-offs, then asks anyway.
    monkeypatch.setattr(cfg, "NACK_DEAF_BEATS", 0.03)  # one member beating at 1/s: 30 ms
    monkeypatch.setattr(cfg, "NACK_BACKOFF", (0.06, 0.09))
    heard, silent = _gap_then(silent=False), _gap_then(silent=True)
    low, high = cfg.NACK_BACKOFF
    assert 10.0 + low <= heard <= 10.0 + high + 0.005
    assert heard + low <= silent <= 10.0 + (1 + cfg.NACK_DEFERRALS) * high + 0.005


# ---------------------------------------------------- the sender's repair window


def test_repair_window_keeps_the_last_1024_messages() -> None:
    lan, a, b = pair(120)
    for i in range(1030):
        say(lan, b, f"m{i}")
    lan.run(1)
    assert nacks(lan, a) == []
    t0 = lan.now
    feed(lan, b, nack_from(a, b, (5, 8)), addr(a))
    feed(lan, b, nack_from(a, b, (1030, 1030)), addr(a))
    (gone,) = [s for s in lan.sent_by(b, codec.Gone) if s.time >= t0]
    assert gone.to is None and gone.msg == Gone(pid(b), b.core.identity.instance, ((5, 6),))
    assert len(gone.data) < len(codec.encode(nack_from(a, b, (5, 8))))  # never amplifies
    assert chats_sent(lan, b, t0) == [7, 8, 1030]  # seqs 1..6 were pushed out by 1024 newer ones


def test_repair_window_forgets_messages_older_than_60_s() -> None:
    lan, a, b = pair(121)
    say(lan, b, "old")
    lan.run(cfg.REPAIR_KEEP / 2)
    say(lan, b, "newer")
    lan.run(cfg.REPAIR_KEEP / 2 + 1)
    t0 = lan.now
    feed(lan, b, nack_from(a, b, (1, 2)), addr(a))
    lan.run(1)
    assert [s.msg for s in lan.sent_by(b, codec.Gone)] == [
        Gone(pid(b), b.core.identity.instance, ((1, 1),))
    ]
    assert chats_sent(lan, b, t0) == [2] * COPIES  # the repair and its repeats


def test_sender_ignores_requests_for_seqs_it_never_sent() -> None:
    lan, a, b = pair(122)
    say(lan, b)
    lan.run(1)
    t0 = lan.now
    feed(lan, b, nack_from(a, b, (2, 50)), addr(a))
    lan.run(1)
    assert [s for s in lan.sent_by(b) if s.time >= t0 and not isinstance(s.msg, codec.Beat)] == []


def test_expired_message_is_reported_lost_as_soon_as_the_sender_says_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cfg, "REPAIR_KEEP", 0.0)  # b forgets at once
    lan, a, b = pair(123)
    drop_first(a, chat_of(b, 1))
    t0 = lan.now
    say(lan, b, "gone")
    lan.run(5)
    assert len(lan.sent_by(b, codec.Gone)) == 1
    assert lost_events(a) == [(1, 1, 1)]
    (event,) = a.of_type(ev.MessagesLost)
    assert (event.peer_id, event.nick) == (b.peer_id, "b")
    (when,) = times(a, ev.MessagesLost)
    assert when - t0 < cfg.TAIL_BEAT_DELAYS[0] + first_nack_within()[1] + 0.01  # no retries
    assert a.of_type(ev.ChatReceived) == [] and len(nacks(lan, a)) == 1


def test_message_never_repaired_is_reported_lost_once_after_the_last_round() -> None:
    lan, a, b = pair(124)
    drop_first(a, chat_of(b, 1), count=1000)  # every copy, repairs too
    t0 = lan.now
    say(lan, b, "never")
    lan.run(10)
    assert lost_events(a) == [(1, 1, 1)]
    (when,) = times(a, ev.MessagesLost)
    seen = t0 + cfg.TAIL_BEAT_DELAYS[0]
    low, high = cfg.NACK_BACKOFF
    rounds = len(cfg.REPAIR_WAITS)
    waits = sum(cfg.REPAIR_WAITS)
    backoffs = rounds * (1 + cfg.NACK_DEFERRALS) + 1  # at most, each round's put off
    assert seen + waits + (rounds + 1) * low <= when <= seen + waits + backoffs * high + 0.01
    assert len(nacks(lan, a)) == rounds
    assert len(repairs(lan, b, 1)) == COPIES * rounds
    assert a.core.stats.lost == 1


# ----------------------------------------------------------- no repair storm


def test_many_nacks_for_one_seq_cause_one_repair() -> None:
    lan, a, b = pair(130)
    say(lan, b)
    lan.run(1)
    t0 = lan.now
    for _ in range(10):
        feed(lan, b, nack_from(a, b, (1, 1)), addr(a))
    for _ in range(9):
        lan.run(cfg.REPAIR_HOLDOFF / 10)
        feed(lan, b, nack_from(a, b, (1, 1)), addr(a))
    lan.run(1)
    sent = [s.time - t0 for s in repairs(lan, b, 1)]
    assert sent == pytest.approx([0.0, *cfg.REPAIR_REPEATS])  # one repair and its repeats
    assert b.core.stats.repairs_held == 18


def test_one_nack_repairs_at_most_four_seqs_and_a_flood_is_rate_limited() -> None:
    lan, a, b = pair(131)
    for i in range(100):
        say(lan, b, f"m{i}")
    lan.run(1)
    t0 = lan.now
    feed(lan, b, nack_from(a, b, (1, 100)), addr(a))
    assert chats_sent(lan, b, t0) == [1, 2, 3, 4]
    # Then 1 s of Nacks every 2 ms, each for another seq: a's bucket (32, +32/s) holds.
    for i in range(500):
        lan.run(0.002)
        feed(lan, b, nack_from(a, b, (5 + i % 90, 5 + i % 90)), addr(a))
    allowed = 32 + 32 * (lan.now - t0)  # seqs repaired in all, each sent COPIES times
    lan.run(1)
    assert allowed - 2 <= b.core.stats.repairs_sent / COPIES <= allowed
    assert b.core.stats.rate_limited >= 500 - allowed


def test_nack_from_a_stranger_makes_a_node_send_nothing() -> None:
    lan, _, b = pair(132)
    say(lan, b)
    lan.run(1)
    t0 = lan.now
    bi = b.core.identity
    stranger = Nack(b"S" * 8, 1, bi.peer_id, bi.instance, ((1, 1),))
    before = b.core.stats.unexpected
    feed(lan, b, stranger, ("10.0.0.99", 40099))
    lan.run(0.3)
    assert [s for s in lan.sent_by(b) if s.time >= t0 and not isinstance(s.msg, codec.Beat)] == []
    assert b.core.stats.unexpected == before + 1


# -------------------------------------------------------- loss reports, bounds


def test_holes_of_a_peer_that_left_are_reported_once() -> None:
    lan, a, b = pair(140)
    drop_first(a, chat_of(b, 1), count=1000)
    say(lan, b, "one")
    say(lan, b, "two")
    lan.run(0.005)  # a has seen the hole, not yet asked
    lan.leave(b)
    lan.run(12)
    assert [e.reason for e in a.of_type(ev.PeerLeft)] == ["bye"]
    assert lost_events(a) == [(1, 1, 1)]


def test_holes_of_a_crashed_peer_are_reported_once() -> None:
    lan, a, b = pair(141)
    drop_first(a, chat_of(b, 1), count=1000)
    say(lan, b, "one")
    say(lan, b, "two")
    lan.run(0.005)
    lan.crash(b)
    lan.run(15)
    assert [e.reason for e in a.of_type(ev.PeerLeft)] == ["timeout"]
    assert lost_events(a) == [(1, 1, 1)]


def test_timed_out_peer_that_comes_back_is_asked_for_what_it_said_meanwhile() -> None:
    lan, a, b = pair(142)
    lan.partition(a)
    lan.run(cfg.REMOVE_AFTER + 1)
    assert [e.reason for e in a.of_type(ev.PeerLeft)] == ["timeout"]
    say(lan, b, "while you were away")
    lan.run(1)
    lan.heal(a)
    lan.run(3)
    assert a.knows(b)
    assert [(e.text, e.late) for e in a.of_type(ev.ChatReceived)] == [
        ("while you were away", False)
    ]
    assert a.of_type(ev.MessagesLost) == []


def test_a_stream_with_too_many_holes_reports_the_oldest_lost() -> None:
    core = lone_core()
    source = ("10.0.0.2", 40002)
    core.receive_datagram(codec.encode(beat(b"B" * 8, 0)), source, 10.0)
    for seq in range(2, 82, 2):  # 40 holes: 1, 3, ..., 79
        chat = codec.Chat(b"B" * 8, 1, seq, "b", "lobby", "x")
        core.receive_datagram(codec.encode(chat), source, 10.0)
    lost = [e for e in iter(core.next_event, None) if isinstance(e, ev.MessagesLost)]
    assert [(e.count, e.first_seq) for e in lost] == [(1, s) for s in range(1, 17, 2)]
    sent = [m for _, m in drive(core, 10.01 + first_nack_within()[1]) if isinstance(m, codec.Nack)]
    asked = {r for m in sent for r in m.ranges}
    assert len(asked) == 32
    assert all(len(m.ranges) <= codec.MAX_NACK_RANGES for m in sent)


def test_a_huge_seq_jump_reports_what_no_window_can_repair() -> None:
    core = lone_core()
    source = ("10.0.0.2", 40002)
    core.receive_datagram(codec.encode(beat(b"B" * 8, 1)), source, 10.0)
    chat = codec.Chat(b"B" * 8, 1, U64_MAX, "b", "lobby", "far")
    core.receive_datagram(codec.encode(chat), source, 10.0)
    lost = [e for e in iter(core.next_event, None) if isinstance(e, ev.MessagesLost)]
    floor = U64_MAX - 1023
    assert [(e.first_seq, e.last_seq, e.count) for e in lost] == [(2, floor - 1, floor - 2)]
    (nack, *_) = [m for _, m in drive(core, 10.1) if isinstance(m, codec.Nack)]
    assert nack.ranges == ((floor, U64_MAX - 1),)


# ------------------------------------------------------------- end to end


def test_notice_lost_in_all_four_copies_is_repaired() -> None:
    lan, a, b = pair(150)
    drop_first(a, chat_of(b, 1), count=len(cfg.NOTICE_DELAYS))
    notice(lan, b, "fire drill")
    lan.run(cfg.NOTICE_DELAYS[-1] + 2.5)  # the next regular heartbeat shows it
    assert [(e.text, e.late) for e in a.of_type(ev.NoticeReceived)] == [("fire drill", False)]
    assert len(nacks(lan, a)) == 1 and a.of_type(ev.MessagesLost) == []


def test_repairs_in_a_keyed_group_are_sealed_anew_and_accepted() -> None:
    key = bytes(range(32))
    lan = Lan(151)
    a, b = lan.add_node("a", keys=(key,)), lan.add_node("b", keys=(key,))
    lan.run(2)
    dropped: list[float] = []

    def lose_next_from_b(src: Station, dst: Station) -> bool:
        if src is b and dst is a and not dropped:
            dropped.append(lan.now)
            return True
        return False

    lan.loss_model = lose_next_from_b
    say(lan, b, "sealed")
    lan.run(1)
    assert dropped
    assert [e.text for e in a.of_type(ev.ChatReceived)] == ["sealed"]
    assert a.core.stats.replayed == 0 and b.core.stats.repairs_sent == COPIES
    assert a.core.stats.nacks_sent == 1


def test_chat_gets_through_twenty_percent_loss_with_repair() -> None:
    lan = Lan(152, loss=0.2)
    nodes = [lan.add_node(f"n{i}") for i in range(6)]
    lan.run(3)
    said: set[tuple[str, int]] = set()
    for i in range(120):
        node = nodes[i % 6]
        said.add((node.peer_id, say(lan, node, f"m{i}")))
        lan.run(0.05)
    lan.run(6)
    for n in nodes:
        got = [(e.peer_id, e.seq) for e in n.of_type(ev.ChatReceived)]
        assert len(got) == len(set(got))
        lost = {
            (e.peer_id, s)
            for e in n.of_type(ev.MessagesLost)
            for s in range(e.first_seq, e.last_seq + 1)
        }
        mine = {k for k in said if k[0] != n.peer_id}
        assert mine <= set(got) | lost  # arrived or reported: never silently missing
        assert len(set(got) & mine) == len(mine)  # and here all arrived


# --------------------------------------------------- the simulation, smaller


@pytest.mark.parametrize("model", ["independent", "bursty"])
def test_simulation_meets_the_targets_with_ten_peers(model: str) -> None:
    sim = load_script("simulate")
    # ~1900 deliveries: enough that 99.9 % in time allows one straggler, not none.
    r = sim.simulate(peers=10, seconds=40.0, rate=0.5, loss=0.2, model=model, seed=1)
    assert r.expected > 1800 and r.first_copy_lost > 0.15 * r.expected  # the loss was real
    assert r.in_time / r.expected >= 0.999
    assert r.nacks / r.messages_hit <= 1.7
    assert r.unreported == 0 and r.twice == 0 and r.false_reports == 0
    assert r.false_departures == 0


def test_simulation_reports_every_message_a_crashed_sender_could_not_repair(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What a receiver knows of each stream: the highest seq a Chat, Beat or Nack showed it.
    known: dict[tuple[int, str], int] = {}
    nodes: list[FakeNode] = []
    receive, add_node = NodeCore.receive_datagram, FakeLan.add_node

    def tracking_add_node(self: FakeLan, *args: Any, **kwargs: Any) -> FakeNode:
        nodes.append(add_node(self, *args, **kwargs))
        return nodes[-1]

    def tracking_receive(
        self: NodeCore, data: bytes, source: Address, now: float, **kw: Any
    ) -> None:
        msg = decoded(data)
        shown: tuple[bytes, int] | None = None
        if isinstance(msg, codec.Chat | codec.Notice):
            shown = (msg.sender, msg.seq)
        elif isinstance(msg, codec.Beat):
            shown = (msg.sender, msg.last_seq)
        elif isinstance(msg, codec.Nack):
            shown = (msg.target_sender, msg.ranges[-1][1])
        if shown is not None:
            key = (id(self), shown[0].hex())
            known[key] = max(known.get(key, 0), shown[1])
        receive(self, data, source, now, **kw)

    monkeypatch.setattr(FakeLan, "add_node", tracking_add_node)
    monkeypatch.setattr(NodeCore, "receive_datagram", tracking_receive)
    sim = load_script("simulate")
    r = sim.simulate(peers=10, seconds=20.0, rate=0.5, loss=0.2, seed=1, crashes=3)
    assert r.expected > r.delivered  # some final messages were unrecoverable
    assert r.reported_lost - r.false_reports + r.unreported == r.expected - r.delivered
    # A receiver cannot report a last message it never heard of: the sender crashed
    # before any Beat showed it, and no other receiver missed it and asked. Every
    # message it did hear of arrived or was reported.
    unknowable = 0
    for node in nodes[:7]:  # the receivers (the last three crashed)
        got = {(e.peer_id, e.seq) for e in node.of_type(ev.ChatReceived)}
        lost = node.of_type(ev.MessagesLost)
        for other in nodes:
            for seq in range(1, other.core._seq + 1):
                if other is node or (other.peer_id, seq) in got:
                    continue
                if any(
                    e.peer_id == other.peer_id and e.first_seq <= seq <= e.last_seq for e in lost
                ):
                    continue
                assert seq > known.get((id(node.core), other.peer_id), 0)  # never heard of
                unknowable += 1
    assert unknowable == r.unreported


# ---------------------------------------------------------------------- codec

NACK_GOLDEN = bytes.fromhex(
    "4c430100960ac408b0b0000000000b0bcf019b76daacd20042c408a11ce0000000a11ccf019b"
    "76daa8004c4392920808920a0c"
)
GONE_GOLDEN = bytes.fromhex("4c430100940bc408a11ce0000000a11ccf019b76daa8004c4391920103")
GOLDEN: list[tuple[codec.Message, bytes]] = [
    (Nack(BOB, BOB_INSTANCE, ALICE, ALICE_INSTANCE, ((8, 8), (10, 12))), NACK_GOLDEN),
    (Gone(ALICE, ALICE_INSTANCE, ((1, 3),)), GONE_GOLDEN),
]


@pytest.mark.parametrize(("msg", "data"), GOLDEN, ids=["Nack", "Gone"])
def test_golden_bytes(msg: codec.Message, data: bytes) -> None:
    assert codec.encode(msg) == data
    assert codec.decode(data) == msg
    assert (codec.T_NACK, codec.T_GONE) == (10, 11)


@pytest.mark.parametrize(("msg", "data"), GOLDEN, ids=["Nack", "Gone"])
def test_protocol_md_shows_the_golden_bytes(msg: codec.Message, data: bytes) -> None:
    text = (Path(lanchat.codec.__file__).parent / "PROTOCOL.md").read_text("utf-8")
    joined = "".join(line.strip() for line in text.splitlines())
    assert re.search(data.hex() + "=", joined)


def _ranges() -> st.SearchStrategy[tuple[tuple[int, int], ...]]:
    def build(cuts: list[int]) -> tuple[tuple[int, int], ...]:
        points = sorted(set(cuts))
        return tuple(zip(points[::2], points[1::2], strict=False))

    return (
        st.lists(st.integers(1, U64_MAX), min_size=2, max_size=2 * codec.MAX_NACK_RANGES)
        .map(build)
        .filter(lambda r: len(r) >= 1)
    )


_ids = st.binary(min_size=8, max_size=8)
_u64 = st.integers(0, U64_MAX)
repair_messages = st.one_of(
    st.builds(Nack, _ids, _u64, _ids, _u64, _ranges()),
    st.builds(Gone, _ids, _u64, _ranges()),
)


@settings(max_examples=300, deadline=None)
@given(repair_messages)
def test_round_trip(msg: codec.Message) -> None:
    data = codec.encode(msg)
    assert codec.decode(data) == msg
    assert len(data) <= codec.MAX_PLAIN


@settings(max_examples=200, deadline=None)
@given(_ids, _u64, _ids, _u64, _ranges(), st.integers(0, U64_MAX))
def test_a_gone_is_never_larger_than_the_nack_it_answers(
    sender: bytes, inst: int, target: bytes, target_inst: int, ranges: Any, window_first: int
) -> None:
    nack = Nack(sender, inst, target, target_inst, ranges)
    cut = tuple((f, min(last, window_first - 1)) for f, last in ranges if f < window_first)
    if cut:
        assert len(codec.encode(Gone(target, target_inst, cut))) < len(codec.encode(nack))


def _raw(*body: Any) -> bytes:
    return codec.HEADER + bytes(msgpack.packb(list(body), use_bin_type=True))


_NACK = [codec.T_NACK, BOB, 1, ALICE, 2, [[1, 2]]]


def _nack(ranges: Any) -> bytes:
    return _raw(*_NACK[:5], ranges)


REJECTED = {
    "nack missing ranges": (_raw(*_NACK[:5]), "missing fields"),
    "gone missing ranges": (_raw(codec.T_GONE, ALICE, 1), "missing fields"),
    "target 7 bytes": (_raw(*_NACK[:3], b"A" * 7, *_NACK[4:]), "bad peer id"),
    "target is str": (_raw(*_NACK[:3], "AAAAAAAA", *_NACK[4:]), "bad peer id"),
    "target instance negative": (_raw(*_NACK[:4], -1, _NACK[5]), "bad integer"),
    "ranges not a list": (_nack(b"\x01\x02"), "malformed"),
    "no ranges": (_nack([]), "malformed"),
    "17 ranges": (_nack([[2 * i + 1, 2 * i + 1] for i in range(17)]), "malformed"),
    "range of three": (_nack([[1, 2, 3]]), "malformed"),
    "range of one": (_nack([[1]]), "malformed"),
    "range as map": (_nack([{"a": 1}]), "malformed"),
    "first above last": (_nack([[3, 2]]), "malformed"),
    "overlapping": (_nack([[1, 5], [5, 9]]), "malformed"),
    "descending": (_nack([[7, 8], [1, 2]]), "malformed"),
    "seq 0": (_nack([[0, 2]]), "bad integer"),
    "seq negative": (_nack([[-1, 2]]), "bad integer"),
    "seq float": (_nack([[1.0, 2]]), "bad integer"),
    "seq bool": (_nack([[True, 2]]), "bad integer"),
    "gone ranges str": (_raw(codec.T_GONE, ALICE, 1, "1-3"), "malformed"),
}


@pytest.mark.parametrize("case", list(REJECTED))
def test_rejected(case: str) -> None:
    data, reason = REJECTED[case]
    with pytest.raises(codec.DecodeError) as info:
        codec.decode(data)
    assert info.value.reason == reason


def test_limits_are_inclusive() -> None:
    sixteen = tuple((2 * i + 1, 2 * i + 1) for i in range(codec.MAX_NACK_RANGES))
    assert codec.decode(codec.encode(Gone(ALICE, 1, sixteen))) == Gone(ALICE, 1, sixteen)
    edge = ((1, 1), (2, U64_MAX))  # adjacent ranges, the largest seq
    assert codec.decode(_nack([list(r) for r in edge])) == Nack(BOB, 1, ALICE, 2, edge)


SEVENTEEN = tuple((2 * i + 1, 2 * i + 1) for i in range(17))


@pytest.mark.parametrize(
    "ranges",
    [(), ((0, 1),), ((2, 1),), ((1, 2), (2, 3)), ((5, 6), (1, 2)), ((1, 2**64),), SEVENTEEN],
)
def test_encode_refuses_bad_ranges(ranges: Any) -> None:
    with pytest.raises(ConfigError):
        codec.encode(Nack(BOB, 1, ALICE, 2, ranges))
    with pytest.raises(ConfigError):
        codec.encode(Gone(ALICE, 2, ranges))


def test_extra_trailing_fields_are_ignored() -> None:
    assert codec.decode(_raw(*_NACK, "later", 7)) == Nack(BOB, 1, ALICE, 2, ((1, 2),))


WORST = {Nack: 351, Gone: 332}  # the table of PROTOCOL.md section 7


def test_worst_case_sizes() -> None:
    big, peer = U64_MAX, b"\xff" * 8
    ranges = tuple((big - 2 * i - 1, big - 2 * i) for i in reversed(range(16)))
    for msg in (Nack(peer, big, peer, big, ranges), Gone(peer, big, ranges)):
        data = codec.encode(msg)
        assert codec.decode(data) == msg
        assert len(data) == WORST[type(msg)] <= codec.MAX_PLAIN
    text = (Path(lanchat.codec.__file__).parent / "PROTOCOL.md").read_text("utf-8")
    assert "| 756 | 840 (always) | 25 | 1105 | 1074 | 1071 | 44 | 34 | 34 | 351 | 332 |" in text


# The decode invariant (PROTOCOL.md section 4) with the new types in reach.
_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), U64_MAX),
    st.floats(),
    st.text(max_size=10),
    st.binary(max_size=12),
)
_pairs = st.lists(st.one_of(st.integers(-1, 40), _leaves), max_size=3)
_range_lists = st.one_of(st.lists(_pairs, max_size=18), _leaves)
_shaped = st.one_of(
    st.tuples(st.just(codec.T_NACK), st.one_of(_ids, _leaves), _u64, st.one_of(_ids, _leaves))
    .flatmap(lambda t: st.tuples(st.just(t), st.one_of(_u64, _leaves), _range_lists))
    .map(lambda t: [*t[0], t[1], t[2]]),
    st.tuples(st.just(codec.T_GONE), st.one_of(_ids, _leaves), _u64, _range_lists).map(list),
)


def _check_invariant(data: bytes) -> None:
    try:
        msg = codec.decode(data)
    except codec.DecodeError as exc:
        assert exc.reason in CODEC_REASONS  # no new reasons: all count as malformed
        return
    assert codec.decode(codec.encode(msg)) == msg


@settings(max_examples=600, deadline=None)
@given(_shaped)
def test_fuzz_shaped_nack_and_gone(body: list[Any]) -> None:
    _check_invariant(codec.HEADER + msgpack.packb(body, use_bin_type=True))


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([NACK_GOLDEN, GONE_GOLDEN]),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_fuzz_mutated_golden(data: bytes, edits: list[tuple[int, int]]) -> None:
    mutated = bytearray(data)
    for position, value in edits:
        mutated[position % len(mutated)] = value
    _check_invariant(bytes(mutated))


def test_every_truncation_is_rejected() -> None:
    for data in (NACK_GOLDEN, GONE_GOLDEN):
        for length in range(len(data)):
            with pytest.raises(codec.DecodeError):
                codec.decode(data[:length])
