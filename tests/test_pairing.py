"""Random pairing (PROTOCOL.md section 12) on the seeded fake LAN, in virtual time."""

from __future__ import annotations

import pytest

from lanchat import codec, pairing
from lanchat import events as ev
from lanchat.testing import FakeLan, FakeNode, Sent, Station

STEP = 0.05


def lan_of(n: int, seed: int = 0, **kw: float) -> tuple[FakeLan, list[FakeNode]]:
    lan = FakeLan(seed, **kw)
    nodes = [lan.add_node(f"n{i}") for i in range(n)]
    everyone = lambda: all(a.knows(b) for a in nodes for b in nodes if a is not b)  # noqa: E731
    assert lan.run_until(everyone, timeout=10)
    return lan, nodes


def partner_of(node: FakeNode) -> str | None:
    peer = node.core._pairing.partner
    return peer.hex() if peer is not None else None


def check_no_double_pairing(nodes: list[FakeNode]) -> None:
    """No node is paired with two, and a paired node's partner is paired with nobody else.

    (The partner may still be accepting, waiting for the Confirm: one-sided for a moment.)
    """
    by_id = {n.peer_id: n for n in nodes}
    for node in nodes:
        other_id = partner_of(node)
        if other_id is None:
            continue
        other = by_id[other_id]
        assert partner_of(other) in (None, node.peer_id), "double pairing"
        if partner_of(other) is None:
            assert other.core._pairing.state in (pairing.ACCEPTING, pairing.SEEKING)


def check_event_order(node: FakeNode) -> None:
    """Paired and PairEnded alternate: at most one pair at a time, each ended once."""
    open_with: str | None = None
    for event in node.events:
        if isinstance(event, ev.Paired):
            assert open_with is None, f"{node.name} paired twice"
            open_with = event.peer.peer_id
        elif isinstance(event, ev.PairEnded):
            assert open_with == event.peer.peer_id
            open_with = None
    assert open_with == partner_of(node)


def run_checked(lan: FakeLan, nodes: list[FakeNode], seconds: float) -> None:
    for _ in range(round(seconds / STEP)):
        lan.run(STEP)
        check_no_double_pairing(nodes)


def test_two_seekers_pair_and_talk() -> None:
    lan, (a, b) = lan_of(2)
    assert lan.call(a, lambda c, now: c.seek_partner(now))
    assert a.core.pair_state == "seeking"
    assert not lan.call(a, lambda c, now: c.seek_partner(now))  # already looking
    start = lan.now
    assert [e.peer.nick for e in b.of_type(ev.PairSought)] == []
    lan.run(0.01)
    assert [e.peer.nick for e in b.of_type(ev.PairSought)] == ["n0"]
    lan.call(b, lambda c, now: c.seek_partner(now))
    assert lan.run_until(lambda: bool(a.of_type(ev.Paired) and b.of_type(ev.Paired)), timeout=2)
    assert lan.now - start < 0.1  # no loss: one Seek and one round trip
    assert [e.peer.peer_id for e in a.of_type(ev.Paired)] == [b.peer_id]
    assert [e.peer.peer_id for e in b.of_type(ev.Paired)] == [a.peer_id]
    assert a.core.pair_state == b.core.pair_state == "paired"
    partner = a.core.partner
    assert partner is not None and partner.nick == "n1"
    # The private conversation is direct messages, acknowledged as usual.
    lan.call(a, lambda c, now: c.send_direct(partner.peer_id, "hi stranger", now))
    assert lan.run_until(lambda: bool(b.of_type(ev.DirectReceived)), timeout=1)
    assert b.of_type(ev.DirectReceived)[0].text == "hi stranger"
    # Paired nodes stop seeking: no Seek goes out any more.
    lan.run(5)
    assert not a.of_type(ev.PairSearchExpired) and a.core.pair_state == "paired"
    check_event_order(a)
    check_event_order(b)


def test_a_paired_node_declines_and_others_see_the_wish_once() -> None:
    lan, (a, b, c) = lan_of(3)
    for node in (a, b):
        lan.call(node, lambda core, now: core.seek_partner(now))
    assert lan.run_until(lambda: a.core.pair_state == b.core.pair_state == "paired", timeout=2)
    # c saw each search once, however many Seeks were repeated.
    assert sorted(e.peer.nick for e in c.of_type(ev.PairSought)) == ["n0", "n1"]
    lan.call(c, lambda core, now: core.seek_partner(now))
    lan.run(20)
    assert c.core.pair_state == "seeking"
    assert partner_of(a) == b.peer_id and partner_of(b) == a.peer_id
    assert not c.of_type(ev.Paired)


@pytest.mark.parametrize("count", [3, 4])
@pytest.mark.parametrize("seed", range(25))
def test_many_seekers_make_disjoint_pairs_under_loss(count: int, seed: int) -> None:
    lan, nodes = lan_of(count, seed, loss=0.2, duplicate=0.2)
    for node in nodes:  # all at once
        lan.call(node, lambda core, now: core.seek_partner(now))
    run_checked(lan, nodes, 30)
    paired = [n for n in nodes if n.core.pair_state == "paired"]
    assert len(paired) == count - count % 2, [n.core._pairing.state for n in nodes]
    pairs = {frozenset((n.peer_id, partner_of(n))) for n in paired}
    assert len(pairs) == count // 2
    assert all(len(p) == 2 for p in pairs) and len(set().union(*pairs)) == len(paired)
    for node in nodes:
        check_event_order(node)
    if count % 2:
        (odd,) = [n for n in nodes if n.core.pair_state != "paired"]
        assert odd.core.pair_state == "seeking"


def test_seekers_over_time_pair_in_order() -> None:
    """Seekers arriving one by one: each newcomer pairs with the one left waiting."""
    lan, nodes = lan_of(5, seed=3, loss=0.1)
    for node in nodes:
        lan.call(node, lambda core, now: core.seek_partner(now))
        run_checked(lan, nodes, 4)
    assert sum(n.core.pair_state == "paired" for n in nodes) == 4
    assert sum(n.core.pair_state == "seeking" for n in nodes) == 1


def pair_up(lan: FakeLan, a: FakeNode, b: FakeNode) -> None:
    for node in (a, b):
        lan.call(node, lambda core, now: core.seek_partner(now))
    assert lan.run_until(lambda: partner_of(a) == b.peer_id and partner_of(b) == a.peer_id, 5)


@pytest.mark.parametrize("seed", range(10))
def test_leave_tells_the_partner(seed: int) -> None:
    lan, (a, b) = lan_of(2, seed, loss=0.2)
    pair_up(lan, a, b)
    assert lan.call(a, lambda core, now: core.end_pair(now))
    assert a.core.pair_state == "idle"
    assert [(e.peer.nick, e.reason) for e in a.of_type(ev.PairEnded)] == [("n1", "you left")]
    assert lan.run_until(lambda: b.core.pair_state == "idle", timeout=6)
    assert [(e.peer.nick, e.reason) for e in b.of_type(ev.PairEnded)] == [("n0", "partner left")]
    lan.run(6)  # retries end: acknowledged, or given up after 5 s
    assert not a.core._pairing._unpairs
    assert not lan.call(a, lambda core, now: core.end_pair(now))  # nothing left to end
    # Both can look again, and find each other again.
    pair_up(lan, a, b)
    check_event_order(a)
    check_event_order(b)


def test_a_partner_seen_seeking_again_has_left() -> None:
    """Every Unpair lost: the partner's newer search still ends the old pair."""
    lan, (a, b) = lan_of(2)
    pair_up(lan, a, b)
    lan.partition(b)
    lan.call(a, lambda core, now: core.end_pair(now))
    lan.run(0.5)
    lan.heal(b)
    assert b.core.pair_state == "paired"
    lan.call(a, lambda core, now: core.seek_partner(now))
    assert lan.run_until(lambda: b.core.pair_state != "paired", timeout=3)
    assert [e.reason for e in b.of_type(ev.PairEnded)] == ["partner left"]


@pytest.mark.parametrize("seed", range(5))
def test_a_crashed_partner_ends_the_pair(seed: int) -> None:
    lan, (a, b) = lan_of(2, seed, loss=0.2)
    pair_up(lan, a, b)
    lan.crash(b)
    assert lan.run_until(lambda: a.core.pair_state == "idle", timeout=15)
    assert [(e.peer.nick, e.reason) for e in a.of_type(ev.PairEnded)] == [("n1", "partner gone")]
    assert a.of_type(ev.PeerLeft)


def test_a_partner_saying_goodbye_ends_the_pair_at_once() -> None:
    lan, (a, b) = lan_of(2)
    pair_up(lan, a, b)
    lan.leave(b)
    assert lan.run_until(lambda: a.core.pair_state == "idle", timeout=0.5)
    # Its Unpair and its Bye race: either way the pair ends once.
    assert [e.reason for e in a.of_type(ev.PairEnded)] in (["partner left"], ["partner gone"])


def test_a_restarted_partner_ends_the_pair() -> None:
    lan, (a, b) = lan_of(2)
    pair_up(lan, a, b)
    lan.restart(b)
    assert lan.run_until(lambda: a.core.pair_state == "idle", timeout=3)
    assert [e.reason for e in a.of_type(ev.PairEnded)] == ["partner gone"]


def test_stopping_a_search_and_its_expiry() -> None:
    lan, (a, b) = lan_of(2)
    lan.call(a, lambda core, now: core.seek_partner(now))
    assert lan.call(a, lambda core, now: core.end_pair(now))
    assert a.core.pair_state == "idle"
    lan.call(b, lambda core, now: core.seek_partner(now))
    lan.run(5)
    assert b.core.pair_state == "seeking" and not b.of_type(ev.Paired)
    lan.run(pairing.SEEK_FOR)
    assert b.core.pair_state == "idle"
    (expired,) = b.of_type(ev.PairSearchExpired)
    assert pairing.SEEK_FOR <= expired.waited <= pairing.SEEK_FOR + 2


def test_lost_confirms_abort_the_pair_and_both_look_on() -> None:
    """The proposer is paired at the Accept; if every Confirm is lost it hears so, and seeks on."""
    lan, (a, b) = lan_of(2)
    low, high = sorted((a, b), key=lambda n: n.peer_id)  # the lower id proposes
    confirms = 0
    dropping = True
    original = lan._deliver

    def deliver(sent: Sent, dst: Station, source: tuple[str, int]) -> None:
        nonlocal confirms
        msg = sent.msg
        if isinstance(msg, codec.Pair) and msg.step == codec.PAIR_CONFIRM and dropping:
            confirms += 1
            return  # the proposer's Confirms never arrive
        original(sent, dst, source)

    lan._deliver = deliver  # type: ignore[method-assign]
    for node in (low, high):
        lan.call(node, lambda core, now: core.seek_partner(now))
    assert lan.run_until(lambda: bool(low.of_type(ev.Paired)), timeout=1)
    assert high.core._pairing.state == pairing.ACCEPTING
    assert lan.run_until(
        lambda: bool(low.of_type(ev.PairEnded)), timeout=pairing.ACCEPT_GIVE_UP + 1
    )
    assert [e.reason for e in low.of_type(ev.PairEnded)] == ["unconfirmed"]
    assert not high.of_type(ev.Paired)
    assert confirms == len(pairing.ACCEPT_DELAYS)  # one Confirm per Accept
    dropping = False
    # Both are seeking again and pair once Confirms get through.
    assert lan.run_until(lambda: low.core.pair_state == high.core.pair_state == "paired", 15)


def test_bad_remote_input_never_pairs() -> None:
    """A Confirm or Accept for no handshake, or a Seek from a stranger, changes nothing."""
    lan, (a, b) = lan_of(2)
    stranger = bytes(range(8))
    lan.call(a, lambda core, now: core.seek_partner(now))
    src = (b.ips[0], b.core.uport)
    for msg in (
        codec.Seek(stranger, 1, 1),
        codec.Pair(b.core.identity.peer_id, b.core.identity.instance, codec.PAIR_CONFIRM, 7, 1),
        codec.Pair(b.core.identity.peer_id, b.core.identity.instance, codec.PAIR_ACCEPT, 7, 1),
        codec.Unpair(b.core.identity.peer_id, b.core.identity.instance, stranger, 7, 0),
    ):
        a.core.receive_datagram(codec.encode(msg), src, lan.now)
    assert a.core.pair_state == "seeking" and a.core.partner is None
    assert not a.core._pairing._seekers
    sent = [codec.decode(d.data) for d in a.core.datagrams_to_send()]
    kinds = [(type(m).__name__, getattr(m, "step", getattr(m, "kind", None))) for m in sent]
    # The Confirm is answered by an abort, the Accept by a withdrawal, the Unpair by its ack.
    assert ("Unpair", codec.UNPAIR_ABORT) in kinds
    assert ("Pair", codec.PAIR_WITHDRAW) in kinds
    assert ("Unpair", codec.UNPAIR_ACK) in kinds
