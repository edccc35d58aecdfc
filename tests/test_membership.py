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


def answer(
    table: Membership, ip: str, now: float, *, sender: bytes = BOB, instance: int = 1
) -> list[ev.Event]:
    """The peer at `ip` answers every probe queued for `ip` (as its `instance`)."""
    events: list[ev.Event] = []
    probes = table.take_probes()
    assert any(p.ip == ip for p in probes), (ip, probes)
    for probe in probes:
        if probe.ip == ip:
            events += table.on_pong(sender, instance, probe.token, ip, now)
    return events


def joined(table: Membership, now: float = T0, **fields: Any) -> mb.PeerRecord:
    """Bob joined from 10.0.0.2 and answered the probe that verified that address."""
    events = table.on_beat(beat(**fields), "10.0.0.2", now)
    assert [type(e) for e in events] == [ev.PeerJoined]
    assert answer(table, "10.0.0.2", now, instance=fields.get("instance", 1)) == []
    rec = table.get(BOB)
    assert rec is not None and list(rec.addresses) == ["10.0.0.2"] and not rec.candidates
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
    # Its address is a candidate, probed with a random token, until the Pong comes back.
    (probe,) = table.take_probes()
    assert (probe.ip, probe.port) == ("10.0.0.2", 40002) and probe.token.bit_length() > 32
    assert table.get(BOB).addresses == {}  # type: ignore[union-attr]
    # Its candidate is where it is shown: until some address is verified, that is life.
    assert table.on_beat(beat(), "10.0.0.2", T0 + 0.5) == []
    assert table.get(BOB).last_heard == T0 + 0.5  # type: ignore[union-attr]
    assert table.get(BOB).addresses == {}  # type: ignore[union-attr]
    assert table.on_pong(BOB, 1, probe.token, "10.0.0.2", T0 + 0.75) == []
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


def test_higher_instance_restarts_once_the_known_one_is_silent_lower_is_stale() -> None:
    table = Membership(DEFAULT)
    joined(table)
    # The restarted peer moved to another address: the known instance is probed there,
    # the newcomer at its source; nobody answers for the known one, so it is believed.
    assert table.on_beat(beat(instance=5, nick="bob2"), "10.0.0.7", T0 + 1) == []
    probes = table.take_probes()
    assert sorted(p.ip for p in probes) == ["10.0.0.2", "10.0.0.7"]
    assert table.sweep(T0 + 1 + mb.CHALLENGE_WAIT - 0.25)[0] == []
    (event,) = table.sweep(T0 + 1 + mb.CHALLENGE_WAIT)[0]
    assert isinstance(event, ev.PeerRestarted)
    assert (event.peer.instance, event.peer.nick, event.peer.addresses) == (
        5,
        "bob2",
        ("10.0.0.7",),
    )
    assert len(table) == 1
    assert answer(table, "10.0.0.7", T0 + 2, instance=5) == []  # its new address verified
    rec = table.get(BOB)
    assert rec is not None and list(rec.addresses) == ["10.0.0.7"]
    assert table.on_beat(beat(instance=4), "10.0.0.2", T0 + 2) == []
    assert table.on_heard(BOB, 1, "10.0.0.2", T0 + 2) == []
    assert table.stale == 2
    assert table.is_stale(BOB, 4) and not table.is_stale(BOB, 5) and not table.is_stale(BOB, 6)
    assert not table.is_stale(b"C" * 8, 0)
    assert (rec.instance, rec.nick) == (5, "bob2")
    # A datagram from a newer instance is not life of the known one (its Beat will come).
    heard = rec.last_heard
    assert table.on_heard(BOB, 6, "10.0.0.7", T0 + 3) == []
    assert rec.last_heard == heard and table.stale == 2


def test_a_restart_at_a_verified_address_is_believed_at_its_first_pong() -> None:
    table = Membership(DEFAULT)
    joined(table)
    assert table.on_beat(beat(instance=2, uport=40009), "10.0.0.2", T0 + 1) == []
    probes = {p.port: p for p in table.take_probes()}
    assert set(probes) == {40002, 40009}  # the old instance's port and the new one's
    (event,) = table.on_pong(BOB, 2, probes[40009].token, "10.0.0.2", T0 + 1.001)
    assert isinstance(event, ev.PeerRestarted) and event.peer.instance == 2
    rec = table.get(BOB)
    assert rec is not None and list(rec.addresses) == ["10.0.0.2"] and rec.uport == 40009


def test_restart_revives_an_unreachable_peer() -> None:
    table = Membership(DEFAULT)
    joined(table)
    assert kinds(table.sweep(T0 + 3)[0]) == ["PeerUnreachable"]
    table.take_probes()
    assert table.on_beat(beat(instance=2), "10.0.0.2", T0 + 4) == []
    (event,) = answer(table, "10.0.0.2", T0 + 4, instance=2)
    assert isinstance(event, ev.PeerRestarted) and event.peer.state == "alive"


def test_a_forged_higher_instance_cannot_take_over_a_live_peer() -> None:
    table = Membership(DEFAULT)
    rec = joined(table)
    # The attacker at 10.0.0.66 claims Bob with the largest instance and interval there is.
    forged = beat(instance=2**64 - 1, interval_ms=3_600_000, uport=40666)
    assert table.on_beat(forged, "10.0.0.66", T0 + 1) == []
    probes = table.take_probes()
    real = next(p for p in probes if p.ip == "10.0.0.2")
    fake = next(p for p in probes if p.ip == "10.0.0.66")
    # The attacker answers its own probe: that proves nothing about Bob's address.
    assert table.on_pong(BOB, 2**64 - 1, fake.token, "10.0.0.66", T0 + 1.001) == []
    # Nor can it answer the probe sent to Bob without its token.
    assert table.on_pong(BOB, 2**64 - 1, real.token ^ 1, "10.0.0.2", T0 + 1.001) == []
    assert table.unexpected_pongs == 2
    # Bob answers as himself: the claim is refused and Bob stays, unchanged.
    assert table.on_pong(BOB, 1, real.token, "10.0.0.2", T0 + 1.002) == []
    assert table.takeovers_refused == 1 and rec.challenge is None
    assert table.sweep(T0 + 2.5)[0] == []
    assert table.get(BOB) is rec and rec.instance == 1 and list(rec.addresses) == ["10.0.0.2"]
    assert not table.is_stale(BOB, 1)  # Bob's datagrams still count


def test_an_unverified_address_gets_no_unicast_and_no_life() -> None:
    table = Membership(DEFAULT)
    rec = joined(table)
    # A forged datagram as Bob from the attacker's own address (the 26-byte Ping attack).
    assert table.on_heard(BOB, 1, "10.0.0.66", T0 + 1) == []
    (probe,) = table.take_probes()
    assert probe.ip == "10.0.0.66" and rec.destinations() == [("10.0.0.2", 40002)]
    assert rec.last_heard == T0 and table.unverified == 1
    assert rec.info().addresses == ("10.0.0.2",)  # not shown either
    # More of the same within the round sends no more probes; the sweep retries it twice.
    table.on_heard(BOB, 1, "10.0.0.66", T0 + 1.1)
    assert table.take_probes() == []
    tokens = set()
    t = T0 + 1.25
    while t < T0 + 2:
        table.sweep(t)
        tokens |= {p.token for p in table.take_probes() if p.ip == "10.0.0.66"}
        t += 0.25
    assert tokens == {probe.token}  # the same token each time: one round of PROBE_TRIES
    assert "10.0.0.66" not in rec.candidates  # never answered: forgotten
    assert rec.destinations() == [("10.0.0.2", 40002)]


def test_a_second_nic_is_verified_by_its_pong() -> None:
    table = Membership(DEFAULT)
    rec = joined(table)
    table.on_heard(BOB, 1, "10.0.1.2", T0 + 1)
    assert answer(table, "10.0.1.2", T0 + 1.001) == []
    assert set(rec.addresses) == {"10.0.0.2", "10.0.1.2"}
    assert rec.last_heard == T0 + 1.001


def test_an_address_silent_for_the_removal_time_is_forgotten() -> None:
    table = Membership(DEFAULT)
    rec = joined(table)
    table.on_heard(BOB, 1, "10.0.1.2", T0 + 1)
    answer(table, "10.0.1.2", T0 + 1)
    for i in range(1, 20):  # Bob is heard on his second address only
        table.on_heard(BOB, 1, "10.0.1.2", T0 + i)
        table.sweep(T0 + i)
    assert list(rec.addresses) == ["10.0.1.2"]


def test_an_advertised_interval_stretches_timeouts_ten_times_ours_at_most() -> None:
    table = Membership(DEFAULT)
    rec = joined(table, interval_ms=3_600_000)
    assert table.interval_of(rec) == 10.0
    events: list[str] = []
    t = T0
    while len(table) and t < T0 + 1000:
        got, _, t = table.sweep(t)
        events += kinds(got)
    assert events == ["PeerUnreachable", "PeerLeft"] and t == float("inf")


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
    assert rec.info().state == mb.UNREACHABLE
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
    answer(table, "10.0.0.1", T0, sender=b"A" * 8)
    table.on_beat(beat(b"C" * 8, interval_ms=4000), "10.0.0.3", T0)
    answer(table, "10.0.0.3", T0, sender=b"C" * 8)
    table.on_beat(beat(b"D" * 8), "10.0.0.4", T0 + 2)
    answer(table, "10.0.0.4", T0 + 2, sender=b"D" * 8)
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
        answer(table, ip, T0 + 0.25 * (i + 1))
    assert len(rec.addresses) == mb._MAX_ADDRESSES == 8
    info = rec.info()
    assert info.addresses == tuple(reversed(ips[-8:]))
    assert info.address == ips[-1]
    assert rec.destinations() == [(ip, 40002) for ip in reversed(ips[-8:])]
    table.on_heard(BOB, 1, ips[-8], T0 + 10)  # an old address heard again moves to the front
    assert rec.destinations()[0] == (ips[-8], 40002) and len(rec.addresses) == 8


def test_candidates_per_peer_are_bounded() -> None:
    table = Membership(DEFAULT)
    rec = joined(table)
    for i in range(20):
        table.on_heard(BOB, 1, f"10.9.{i}.1", T0 + 1)
    assert len(rec.candidates) == mb._MAX_CANDIDATES
    assert len(table.take_probes()) == 20  # one probe each, never more


def test_uport_comes_from_the_latest_beat() -> None:
    table = Membership(DEFAULT)
    rec = joined(table)
    table.on_heard(BOB, 1, "10.0.1.2", T0 + 0.5)
    answer(table, "10.0.1.2", T0 + 0.5)
    table.on_beat(beat(uport=41000), "10.0.0.2", T0 + 1)
    assert rec.destinations() == [("10.0.0.2", 41000), ("10.0.1.2", 41000)]


def test_table_refuses_new_peers_past_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mb, "_MAX_PEERS", 3)
    table = Membership(DEFAULT)
    ids = [bytes([65 + i]) * 8 for i in range(4)]
    for i, peer in enumerate(ids[:3]):
        assert kinds(table.on_beat(beat(peer), f"10.0.0.{i + 1}", T0)) == ["PeerJoined"]
        answer(table, f"10.0.0.{i + 1}", T0, sender=peer)
    assert table.on_beat(beat(ids[3]), "10.0.0.4", T0) == []
    assert (len(table), table.refused, table.get(ids[3])) == (3, 1, None)
    # Known peers still update and restart while the table is full.
    assert kinds(table.on_beat(beat(ids[0], nick="alice"), "10.0.0.1", T0 + 1)) == ["PeerRenamed"]
    assert table.on_beat(beat(ids[1], instance=2), "10.0.0.2", T0 + 1) == []
    assert kinds(answer(table, "10.0.0.2", T0 + 1, sender=ids[1], instance=2)) == ["PeerRestarted"]
    assert table.refused == 1 and len(table) == 3
    # Room again once one has left.
    table.on_bye(ids[2], 1)
    assert kinds(table.on_beat(beat(ids[3]), "10.0.0.4", T0 + 2)) == ["PeerJoined"]
    assert len(table) == 3 and table.refused == 1
