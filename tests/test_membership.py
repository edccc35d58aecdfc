"""lanchat.membership.Membership on its own: the state table, timeouts and bounds.

Times are chosen exactly representable (multiples of 1/4 from 100.0) so that a
deadline and the silence measured against it agree to the bit.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import pytest

from lanchat import events as ev
from lanchat import membership as mb
from lanchat.codec import Beat
from lanchat.membership import Membership, Timeouts

T0 = 100.0
DEFAULT = Timeouts(
    heartbeat_interval=1.0,
    probe_after=1.5,
    ping_interval=0.5,
    unreachable_after=3.0,
    remove_after=10.0,
)
BOB = b"B" * 8


def beat(sender: bytes = BOB, instance: int = 1, **fields: Any) -> Beat:
    values: dict[str, Any] = {
        "nick": "bob",
        "host": "bob-pc",
        "uport": 40002,
        "status": "online",
        "status_text": "",
        "rooms": ("lobby",),
        "last_seq": 0,
        "interval_ms": 1000,
    }
    values.update(fields)
    return Beat(sender, instance, **values)


def joined(table: Membership, now: float = T0, **fields: Any) -> mb.PeerRecord:
    events = table.on_beat(beat(**fields), "10.0.0.2", now)
    assert [type(e) for e in events] == [ev.PeerJoined]
    rec = table.get(BOB)
    assert rec is not None
    return rec


def kinds(events: list[ev.Event]) -> list[str]:
    return [type(e).__name__ for e in events]


# ---------------------------------------------------------------- the table


def _documented_table() -> dict[tuple[str, str], str]:
    """The transitions the module docstring draws, as (state, trigger) -> next."""
    doc = mb.__doc__ or ""
    rows = re.findall(r"^\s{4}(ALIVE|UNREACHABLE|any)\s+([A-Z]+)\s+([A-Z]+)\s", doc, re.M)
    assert len(rows) >= 9
    out: dict[tuple[str, str], str] = {}
    for state, trigger, new in rows:
        for s in ("ALIVE", "UNREACHABLE") if state == "any" else (state,):
            out[(getattr(mb, s), getattr(mb, trigger))] = getattr(mb, new)
    return out


def test_transition_table_matches_the_documented_rules() -> None:
    assert _documented_table() == mb.TRANSITIONS
    states = {mb.ALIVE, mb.UNREACHABLE}
    triggers = {mb.HEARD, mb.SILENT, mb.EXPIRED, mb.BYE, mb.RESTARTED}
    assert set(mb.TRANSITIONS) == {(s, t) for s in states for t in triggers}
    gone = {k for k, v in mb.TRANSITIONS.items() if v == mb.GONE}
    assert {t for _, t in gone} == {mb.EXPIRED, mb.BYE}


def test_first_beat_creates_an_entry_and_a_repeat_changes_nothing() -> None:
    table = Membership(DEFAULT)
    (event,) = table.on_beat(beat(), "10.0.0.2", T0)
    assert isinstance(event, ev.PeerJoined)
    info = event.peer
    assert (info.peer_id, info.instance, info.nick, info.host) == (BOB.hex(), 1, "bob", "bob-pc")
    assert (info.address, info.port, info.addresses) == ("10.0.0.2", 40002, ("10.0.0.2",))
    assert (info.state, info.last_heard, info.heartbeat_interval) == ("alive", T0, 1.0)
    assert len(table) == 1
    assert table.on_beat(beat(), "10.0.0.2", T0 + 1) == []
    assert table.get(BOB).last_heard == T0 + 1  # type: ignore[union-attr]


def test_only_a_beat_creates_an_entry() -> None:
    table = Membership(DEFAULT)
    assert table.on_heard(BOB, 1, "10.0.0.2", T0) == []
    assert table.on_bye(BOB, 1) == []
    assert len(table) == 0 and table.get(BOB) is None


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"nick": "robert"}, ["PeerRenamed"]),
        ({"status": "away", "status_text": "lunch"}, ["PeerStatusChanged"]),
        ({"status_text": "still here"}, ["PeerStatusChanged"]),
        ({"rooms": ("lobby", "dev")}, ["PeerJoinedRoom"]),
        ({"rooms": ()}, ["PeerLeftRoom"]),
        ({"rooms": ("dev",)}, ["PeerLeftRoom", "PeerJoinedRoom"]),
        ({"host": "new-pc", "uport": 40003, "last_seq": 9}, []),
        (
            {"nick": "robert", "status": "away", "rooms": ("dev",)},
            ["PeerRenamed", "PeerStatusChanged", "PeerLeftRoom", "PeerJoinedRoom"],
        ),
    ],
)
def test_beat_changes_emit_events(change: dict[str, Any], expected: list[str]) -> None:
    table = Membership(DEFAULT)
    joined(table)
    events = table.on_beat(beat(**change), "10.0.0.2", T0 + 1)
    assert kinds(events) == expected
    info = table.get(BOB).info()  # type: ignore[union-attr]
    for key, value in change.items():
        if key != "last_seq":  # not shown in PeerInfo
            assert getattr(info, "port" if key == "uport" else key) == value
    for e in events:
        assert e.peer == info  # type: ignore[union-attr]
        if isinstance(e, ev.PeerRenamed):
            assert e.old_nick == "bob"
        if isinstance(e, ev.PeerLeftRoom):
            assert e.room == "lobby"
        if isinstance(e, ev.PeerJoinedRoom):
            assert e.room == "dev"


def test_higher_instance_restarts_lower_is_stale() -> None:
    table = Membership(DEFAULT)
    joined(table)
    (event,) = table.on_beat(beat(instance=5, nick="bob2"), "10.0.0.7", T0 + 1)
    assert isinstance(event, ev.PeerRestarted)
    assert (event.peer.instance, event.peer.nick, event.peer.addresses) == (
        5,
        "bob2",
        ("10.0.0.7",),
    )
    assert len(table) == 1
    assert table.on_beat(beat(instance=4), "10.0.0.2", T0 + 2) == []
    assert table.on_heard(BOB, 1, "10.0.0.2", T0 + 2) == []
    assert table.stale == 2
    assert table.is_stale(BOB, 4) and not table.is_stale(BOB, 5) and not table.is_stale(BOB, 6)
    assert not table.is_stale(b"C" * 8, 0)
    rec = table.get(BOB)
    assert rec is not None and (rec.instance, rec.last_heard, rec.nick) == (5, T0 + 1, "bob2")
    # A datagram from a newer instance is not life of the known one (its Beat will come).
    assert table.on_heard(BOB, 6, "10.0.0.2", T0 + 3) == []
    assert rec.last_heard == T0 + 1 and table.stale == 2


def test_restart_revives_an_unreachable_peer() -> None:
    table = Membership(DEFAULT)
    joined(table)
    assert kinds(table.sweep(T0 + 3)[0]) == ["PeerUnreachable"]
    (event,) = table.on_beat(beat(instance=2), "10.0.0.2", T0 + 4)
    assert isinstance(event, ev.PeerRestarted) and event.peer.state == "alive"


def test_bye_removes_only_the_current_instance() -> None:
    table = Membership(DEFAULT)
    joined(table, instance=3)
    assert table.on_bye(BOB, 2) == [] and table.on_bye(BOB, 4) == []
    assert len(table) == 1
    (event,) = table.on_bye(BOB, 3)
    assert isinstance(event, ev.PeerLeft) and event.reason == "bye"
    assert len(table) == 0
    assert table.sweep(T0 + 20) == ([], [], float("inf"))


# -------------------------------------------------------------- timeouts


def test_silent_peer_is_probed_then_unreachable_then_removed() -> None:
    table = Membership(DEFAULT)
    rec = joined(table)
    assert table.next_deadline_for(rec) == T0 + 1.5
    timeline: list[tuple[float, list[str], int, float]] = []
    now = T0 + 1.0
    while len(table):
        events, to_ping, next_check = table.sweep(now)
        timeline.append((now - T0, kinds(events), len(to_ping), next_check - T0))
        assert next_check > now
        now = next_check
    assert timeline[:6] == [
        (1.0, [], 0, 1.5),
        (1.5, [], 1, 2.0),
        (2.0, [], 1, 2.5),
        (2.5, [], 1, 3.0),
        (3.0, ["PeerUnreachable"], 1, 3.5),
        (3.5, [], 1, 4.0),
    ]
    assert timeline[-1] == (10.0, ["PeerLeft"], 0, float("inf"))
    assert sum(pings for _, _, pings, _ in timeline) == 17  # 1.5 .. 9.5 every 0.5 s
    assert [t for t, names, _, _ in timeline if names] == [3.0, 10.0]


def test_removal_by_silence_says_timeout() -> None:
    table = Membership(DEFAULT)
    joined(table)
    events, _, _ = table.sweep(T0 + 10)
    assert [(type(e), e.reason) for e in events] == [(ev.PeerLeft, "timeout")]  # type: ignore[union-attr]


def test_heard_again_makes_an_unreachable_peer_reachable() -> None:
    table = Membership(DEFAULT)
    rec = joined(table)
    table.sweep(T0 + 3)
    assert rec.state == mb.UNREACHABLE
    assert (
        table.on_heard(BOB, 1, "10.0.0.2", T0 + 3.25) == [ev.PeerReachable(rec.info())]
        and rec.state == mb.ALIVE
    )
    assert rec.next_ping == 0.0
    assert table.on_heard(BOB, 1, "10.0.0.2", T0 + 3.5) == []  # reachable once, not per datagram
    # The silence clock restarted: nothing is due until 1.5 s after the last datagram.
    assert table.sweep(T0 + 4.75) == ([], [], T0 + 5.0)


def test_a_beat_makes_an_unreachable_peer_reachable() -> None:
    table = Membership(DEFAULT)
    joined(table)
    table.sweep(T0 + 3.5)
    assert kinds(table.on_beat(beat(nick="bobby"), "10.0.0.2", T0 + 4)) == [
        "PeerReachable",
        "PeerRenamed",
    ]


def test_timeouts_scale_to_a_peer_beating_every_four_seconds() -> None:
    # Probe and removal scale with the interval; the three quick pings do not.
    assert DEFAULT.scaled(4.0) == (6.0, 0.5, 7.5, 40.0)
    assert DEFAULT.scaled(0.25) == DEFAULT.scaled(1.0) == (1.5, 0.5, 3.0, 10.0)
    table = Membership(DEFAULT)
    rec = joined(table, interval_ms=4000)
    assert rec.interval == 4.0 and table.next_deadline_for(rec) == T0 + 6
    assert table.sweep(T0 + 5.75) == ([], [], T0 + 6)
    events, to_ping, next_check = table.sweep(T0 + 6)
    assert (events, to_ping, next_check) == ([], [rec], T0 + 6.5)
    pings = [T0 + 6]
    t, seen = T0 + 6.5, []
    while len(table):
        events, to_ping, next_check = table.sweep(t)
        pings += [t] * len(to_ping)
        seen += [(t, name) for name in kinds(events)]
        t = next_check
    assert seen == [(T0 + 7.5, "PeerUnreachable"), (T0 + 40, "PeerLeft")]
    # Three pings 0.5 s apart, then backing off (1, 2 s) to half the interval (2 s).
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(pings)]
    assert gaps[:5] == [0.5, 0.5, 0.5, 1.0, 2.0] and set(gaps[5:]) == {2.0}


def test_our_own_longer_interval_covers_a_peer_that_slowed_down() -> None:
    table = Membership(DEFAULT)
    rec = joined(table, interval_ms=1000)  # its last Beat said 1 s; the group grew since
    table.group_interval = 20.0
    assert table.next_deadline_for(rec) == T0 + 30
    assert table.sweep(T0 + 29.9)[0:2] == ([], [])
    assert table.sweep(T0 + 30)[1] == [rec]


def test_a_faster_peer_gets_our_timeouts_not_shorter_ones() -> None:
    table = Membership(DEFAULT)
    joined(table, interval_ms=250)
    assert table.sweep(T0 + 2.75)[0] == []
    assert kinds(table.sweep(T0 + 3)[0]) == ["PeerUnreachable"]


def test_sweep_handles_many_peers_on_their_own_clocks() -> None:
    table = Membership(DEFAULT)
    table.on_beat(beat(b"A" * 8), "10.0.0.1", T0)
    table.on_beat(beat(b"C" * 8, interval_ms=4000), "10.0.0.3", T0)
    table.on_beat(beat(b"D" * 8), "10.0.0.4", T0 + 2)
    events, to_ping, next_check = table.sweep(T0 + 3)
    assert [e.peer.peer_id for e in events] == [(b"A" * 8).hex()]  # type: ignore[union-attr]
    assert [r.peer_id for r in to_ping] == [b"A" * 8]
    assert next_check == T0 + 3.5  # A's next ping; D is due at T0 + 3.5 too


def test_a_check_at_its_own_deadline_always_acts() -> None:
    heard = 1023.4163014089496
    assert (heard + 1.5) - heard < 1.5  # the addition rounded down
    table = Membership(DEFAULT)
    joined(table, now=heard)
    rec = table.get(BOB)
    assert rec is not None
    due = table.next_deadline_for(rec)
    _, to_ping, next_check = table.sweep(due)
    assert to_ping == [rec]
    assert next_check > due


# ----------------------------------------------------------------- bounds


def test_address_list_is_bounded_and_keeps_the_most_recent() -> None:
    table = Membership(DEFAULT)
    rec = joined(table)
    ips = [f"10.0.{i}.2" for i in range(1, 13)]
    for i, ip in enumerate(ips):
        table.on_heard(BOB, 1, ip, T0 + 0.25 * (i + 1))
    assert len(rec.addresses) == mb._MAX_ADDRESSES == 8
    info = rec.info()
    assert info.addresses == tuple(reversed(ips[-8:]))
    assert info.address == ips[-1]
    assert rec.destinations() == [(ip, 40002) for ip in reversed(ips[-8:])]
    table.on_heard(BOB, 1, ips[-8], T0 + 10)  # an old address heard again moves to the front
    assert rec.destinations()[0] == (ips[-8], 40002) and len(rec.addresses) == 8


def test_uport_comes_from_the_latest_beat() -> None:
    table = Membership(DEFAULT)
    rec = joined(table)
    table.on_heard(BOB, 1, "10.0.1.2", T0 + 0.5)
    table.on_beat(beat(uport=41000), "10.0.0.2", T0 + 1)
    assert rec.destinations() == [("10.0.0.2", 41000), ("10.0.1.2", 41000)]


def test_table_refuses_new_peers_past_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mb, "_MAX_PEERS", 3)
    table = Membership(DEFAULT)
    ids = [bytes([65 + i]) * 8 for i in range(4)]
    for i, peer in enumerate(ids[:3]):
        assert kinds(table.on_beat(beat(peer), f"10.0.0.{i + 1}", T0)) == ["PeerJoined"]
    assert table.on_beat(beat(ids[3]), "10.0.0.4", T0) == []
    assert (len(table), table.refused, table.get(ids[3])) == (3, 1, None)
    # Known peers still update and restart while the table is full.
    assert kinds(table.on_beat(beat(ids[0], nick="alice"), "10.0.0.1", T0 + 1)) == ["PeerRenamed"]
    assert kinds(table.on_beat(beat(ids[1], instance=2), "10.0.0.2", T0 + 1)) == ["PeerRestarted"]
    assert table.refused == 1 and len(table) == 3
    # Room again once one has left.
    table.on_bye(ids[2], 1)
    assert kinds(table.on_beat(beat(ids[3]), "10.0.0.4", T0 + 2)) == ["PeerJoined"]
    assert len(table) == 3 and table.refused == 1
