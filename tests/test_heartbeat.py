"""Heartbeats at scale (PROTOCOL.md 3.1, 5): the group budget, reconsideration, presence.

Short deterministic versions of `scripts/simulate --scale` and `--presence`.
Nothing here sleeps.
"""

from __future__ import annotations

import random
import statistics

import pytest

from lanchat import codec
from lanchat import config as cfg
from lanchat.config import NodeConfig
from lanchat.core import Datagram, Identity, NodeCore
from lanchat.testing import run_timers
from tests.script_loader import load_script


def _core(seed: int = 1) -> NodeCore:
    core = NodeCore(
        NodeConfig(nick="me", host="h"),
        Identity(bytes(7) + b"\x01", 1),
        uport=40000,
        rng=random.Random(seed),
    )
    core.start(1000.0)
    return core


def _run_datagrams(core: NodeCore, until: float) -> list[Datagram]:
    """Handle every timer due until `until`; the datagrams sent meanwhile."""
    return [d for _, d in run_timers(core, until)]


def _run(core: NodeCore, until: float) -> list[codec.Message]:
    return [codec.decode(d.data) for d in _run_datagrams(core, until)]


def _feed(core: NodeCore, peers: int, now: float, *, big: bool = False) -> list[bytes]:
    ids = [i.to_bytes(4, "big") + b"peer" for i in range(1, peers + 1)]
    rooms = tuple(f"{'r' * 30}{j:02d}" for j in range(16)) if big else ("lobby",)
    for i, peer in enumerate(ids):
        beat = codec.Beat(peer, 7, f"p{i}", "h", 41000, codec.STATUS_ONLINE, "x" * 64 * big,
                          rooms, 0, 1000)  # fmt: skip
        core.receive_datagram(codec.encode(beat), (f"10.0.{i // 250}.{i % 250 + 1}", 5000), now)
    return ids


def test_interval_grows_with_the_group_within_both_budgets() -> None:
    core = _core()
    assert core.heartbeat_interval() == cfg.HEARTBEAT_INTERVAL  # alone: the floor
    _feed(core, 49, 1000.0)
    assert core.heartbeat_interval() == cfg.HEARTBEAT_INTERVAL  # 50 members: 50/s
    _feed(core, 199, 1000.0)
    assert core.heartbeat_interval() == pytest.approx(200 / cfg.HEARTBEAT_RATE_BUDGET)
    # Big Beats: the byte budget decides (n x mean size on the wire / 8000 B/s).
    big = _core(2)
    _feed(big, 199, 1000.0, big=True)  # ~650-byte Beats; the mean follows them (1/16 each)
    assert big.heartbeat_interval() > 200 / cfg.HEARTBEAT_RATE_BUDGET
    assert big.heartbeat_interval() == pytest.approx(
        200 * big._heartbeat.beat_size / cfg.HEARTBEAT_BYTE_BUDGET
    )


def test_beats_advertise_the_interval_in_use() -> None:
    core = _core()
    _feed(core, 199, 1000.0)
    beats = [b for b in _run(core, 1010.0) if isinstance(b, codec.Beat)]
    assert beats and all(b.interval_ms == 4000 for b in beats)


def test_timer_reconsideration_postpones_a_beat_when_the_group_grew() -> None:
    core = _core()
    _run(core, 1001.001)  # the announce burst is over; a regular Beat is booked
    last = core._heartbeat.last_beat
    assert (
        last == pytest.approx(1000.0 + cfg.ANNOUNCE_DELAYS[-1])
        and core._heartbeat.next_beat < last + 1.3
    )
    _feed(core, 499, 1001.01)  # 500 members now: interval 10 s
    sent = _run(core, core._heartbeat.next_beat)
    assert not any(isinstance(m, codec.Beat) for m in sent)
    assert core._heartbeat.next_beat >= last + 0.41 * 10  # redrawn with n = 500


def test_reverse_reconsideration_brings_the_next_beat_closer() -> None:
    core = _core()
    ids = _feed(core, 199, 1000.0)
    _run(core, 1003.0)
    before = core._heartbeat.next_beat - 1003.0
    for peer in ids[:150]:  # 3/4 of the group says goodbye
        core.receive_datagram(codec.encode(codec.Bye(peer, 7)), ("10.0.0.1", 5000), 1003.0)
    after = core._heartbeat.next_beat - 1003.0
    assert after == pytest.approx(before * 50 / 200)


def test_a_big_group_neither_repeats_queries_nor_answers_every_one() -> None:
    core = _core()
    sent = _run(core, 1000.0)
    _feed(core, 199, 1000.0)
    sent += _run(core, 1001.0)
    # The first query only: repeats stop once the group is big.
    assert sum(isinstance(m, codec.Query) for m in sent) == 1
    answers = 0
    for i in range(200):  # 200 strangers ask who is there, over 20 s
        q = codec.encode(codec.Query(i.to_bytes(4, "big") + b"newc", 9, 41000, ()))
        core.receive_datagram(q, (f"10.9.{i // 250}.{i % 250 + 1}", 41000), 1010.0 + i * 0.1)
        datagrams = _run_datagrams(core, 1010.0 + i * 0.1 + 0.06)
        answers += sum(
            d.to is not None and isinstance(codec.decode(d.data), codec.Beat) for d in datagrams
        )
    # ~50/200 of them are for us; of those a burst of 4, then one per interval (4 s).
    assert 0 < answers <= cfg.QUERY_ANSWER_BURST + 20 / 4 + 1


def test_a_node_starts_with_a_few_answers_in_hand_not_a_full_burst() -> None:
    core = _core()  # started at t = 1000: the bucket holds QUERY_ANSWER_START, not a refill
    for i in range(30):  # 30 newcomers of a mass join ask within 30 ms of our start
        q = codec.encode(codec.Query(i.to_bytes(4, "big") + b"newc", 9, 41000, ()))
        core.receive_datagram(q, (f"10.9.0.{i + 1}", 41000), 1000.0 + i * 0.001)
    sent = _run_datagrams(core, 1000.1)
    answers = sum(d.to is not None and isinstance(codec.decode(d.data), codec.Beat) for d in sent)
    # 8, + what 29 ms of queries refill alone (50 a second): not the burst of 32.
    assert cfg.QUERY_ANSWER_START <= answers <= cfg.QUERY_ANSWER_START + 2


def test_mass_join_converges_within_budget_after_the_transient() -> None:
    sim = load_script("simulate")
    r = sim.scale(peers=80, window=1.0, seed=3, settle=10.0, limit=30.0)
    assert r.converged is not None and r.converged < 10
    assert r.false_departures == 0
    assert all(i == pytest.approx(80 / cfg.HEARTBEAT_RATE_BUDGET) for i in r.intervals)
    rate, size = sim.BEAT_BUDGET
    steady = r.steady()
    assert steady.count["beat"] <= rate and steady.size["beat"] <= size
    # After the first 3 s no second goes past 1.5 x the budget (timers are random).
    late = [t for s, t in r.seconds.items() if s >= 3]
    assert max(t.count["beat"] for t in late) <= 1.5 * rate
    assert steady.count["ping"] == steady.count["query"] == 0  # no loss: nothing to probe


def test_mass_join_past_one_subnet_converges() -> None:
    # More than 250 nodes: FakeLan's default /24s would split them (they never met).
    sim = load_script("simulate")
    r = sim.scale(peers=251, window=1.0, seed=2, settle=1.0, limit=20.0)
    assert r.converged is not None and r.false_departures == 0


def test_a_newcomer_to_ten_hosts_at_20_percent_loss_is_discovered_within_a_second() -> None:
    sim = load_script("simulate")
    # 100 joins: the second query round lands near 150 ms, so 40 left the median at the
    # mercy of one run (scripts/simulate --discovery 400: median 84 ms).
    r = sim.discovery(hosts=10, runs=100, loss=0.2, seed=1)
    assert len(r.both) == 100 and max(r.both) < 1.0
    assert statistics.median(r.both) < 0.15  # the median target at 20 % loss
    assert all(b == max(s, t) for b, s, t in zip(r.both, r.seen, r.sees, strict=True))


def test_no_false_departures_at_20_percent_loss_and_crashes_found_fast() -> None:
    sim = load_script("simulate")
    r = sim.presence(peers=49, hours=2 / 49, loss=0.2, seed=4)  # 2 observer-peer hours
    assert r.removals == 0
    assert r.unreachable > 0 and r.pings > 0  # the loss was real and was probed
    assert sim.false_removal_probability(0.2, samples=2000) < 1e-12
    unreachable, removed = sim.crash_detection(49, runs=5, loss=0.2, seed=5)
    assert len(removed) == 5
    assert max(unreachable) <= cfg.UNREACHABLE_AFTER + 0.01
    assert max(removed) <= cfg.REMOVE_AFTER + 0.01


def test_the_removal_model_matches_the_simulation_where_removals_happen() -> None:
    sim = load_script("simulate")
    # The model counts every ping; at 70 % loss a peer earns less answer credit
    # than its pings cost, so the real node withholds some (PROTOCOL.md section 13).
    r = sim.presence(peers=49, hours=4 / 49, loss=0.7, seed=6, credit=False)
    predicted = sim.false_removal_probability(0.7, samples=4000) * 3600 * 0.3 * r.pair_hours
    assert predicted > 20
    assert 0.5 * predicted <= r.removals <= 2 * predicted
