"""A short run of scripts/fuzz, and Hypothesis properties over a node's receive path.

The long run (1,000,000 datagrams per node) is `scripts/fuzz`; see README.md.
Each invariant the harness checks is shown to fail here when a bug is injected.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lanchat import (
    catchup,
    codec,
    core,
    dedup,
    heartbeat,
    membership,
    pairing,
    ratelimit,
    repair,
    reports,
    seal,
)
from lanchat import config as cfg
from lanchat.core import NodeCore
from tests.script_loader import load_script

fuzz = load_script("fuzz")


def _kinds(result: Any) -> set[str]:
    return {f.kind for f in result.failures}


# ------------------------------------------------------------------ the short run


@pytest.mark.parametrize("keyed", [False, True], ids=["plain", "keyed"])
def test_short_run_finds_nothing(keyed: bool) -> None:
    started = time.perf_counter()
    r = fuzz.run(15_000, seed=3, keyed=keyed)
    assert r.failure_count == 0, "\n".join(map(str, r.failures))
    # The run was real: every kind of datagram, accepted and dropped, answers sent.
    assert {"valid", "mutated", "bytes", "header", "random", "replay", "own"} <= set(r.kinds)
    assert r.accepted > 3000 and r.stats.malformed > 3000
    assert r.stats.forged > 100 if keyed else r.stats.sealed > 100
    assert r.emitted > 1000 and r.stats.repairs_sent > 0 and r.stats.nacks_sent > 0
    # Every type reached the handlers: the limits (section 13) let almost everything in.
    assert len(r.types) == 16 and min(r.types.values()) > 50, r.types
    assert r.stats.flooded + r.stats.overloaded < 15_000 // 20
    assert r.stats.recounts_sent > 10 and r.stats.recalls_sent > 0
    assert {"ChatRecalled", "PairSought", "Paired", "PairEnded"} <= set(r.event_types)
    assert r.liveness.startswith("found by a new node")
    assert len(r.receive.values) == len(r.decode.values) == 15_000
    assert time.perf_counter() - started < 60


def test_the_harness_knows_every_bounded_table() -> None:
    """A new `_MAX_*` table (core, membership, pairing, ratelimit) needs a line in table_sizes."""
    assert fuzz.unchecked_bounds() == []


SMALL_BOUNDS = {
    (membership, "_MAX_PEERS"): 40,
    (dedup, "MAX_SENDERS"): 40,
    (repair, "_MAX_STREAMS"): 40,
    (heartbeat, "_MAX_QUERIERS"): 5,
    (heartbeat, "_MAX_PENDING_ANSWERS"): 1,
    (repair, "_MAX_REQUESTERS"): 8,
    (reports, "_MAX_UNAUTH_SOURCES"): 8,
    (catchup, "_MAX_RING_ROOMS"): 2,
    (catchup, "_MAX_RECALL_SOURCES"): 4,
    (catchup, "_MAX_PENDING_RECALL_ANSWERS"): 1,
    (catchup, "_MAX_RECALL_NONCES"): 20,
    (pairing, "_MAX_SEEKERS"): 4,
    (pairing, "_MAX_UNPAIRS"): 2,
    (seal, "_MAX_SENDERS"): 40,
}


@pytest.mark.parametrize("keyed", [False, True], ids=["plain", "keyed"])
def test_tables_stay_within_their_bounds_once_full(
    keyed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the bounds made small, every table reaches its bound and never passes it."""
    for (module, name), value in SMALL_BOUNDS.items():
        monkeypatch.setattr(module, name, value)
        monkeypatch.setitem(fuzz.BOUNDS, f"{module.__name__.split('.')[-1]}.{name}", value)
    monkeypatch.setattr(fuzz, "CHECK_EVERY", 10)
    monkeypatch.setitem(fuzz.BOUNDS, "ratelimit._MAX_SOURCES", 40)
    full: set[str] = set()
    for seed in (4, 6, 8):  # which tables fill depends on the draws: three runs fill them all
        harness = fuzz.Harness(seed, keyed, flood_every=5_000)
        harness.core.limits = ratelimit.Limits(max_sources=40)  # its bound is read at init
        r = harness.run(6_000)
        assert r.failure_count == 0, "\n".join(map(str, r.failures))
        full |= {n for n, size in r.peak.items() if n in r.bounds and size == r.bounds[n]}
    expected = {"peers", "chat seq windows", "repair streams", "queriers", "pending answers"}
    expected |= {"sealed senders", "replay windows", "subkey ciphers"} if keyed else set()
    expected |= {"key-mismatch sources", "rate-limited sources", "kept rooms", "seekers"}
    expected |= {"recall requesters", "recall answers waiting", "recalls heard"}
    expected |= {"unpairs awaiting ack", "lines of a kept room"}
    assert expected - full == set(), r.peak


@pytest.mark.parametrize("keyed", [False, True], ids=["plain", "keyed"])
def test_the_rate_limits_are_hit_and_the_counters_still_match(
    keyed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the limits of section 13 made small, floods hit each of them; the drop
    counters still agree with the shadow decode (limited datagrams are not decoded)."""
    monkeypatch.setattr(cfg, "NEW_PEERS_BURST", 16.0)
    monkeypatch.setattr(cfg, "NEW_PEERS_RATE", 4.0)
    monkeypatch.setattr(cfg, "KNOWN_SOURCE_RATE", 40.0)  # the fake senders become known
    monkeypatch.setattr(cfg, "KNOWN_SOURCE_BURST", 80.0)
    harness = fuzz.Harness(7, keyed, flood_every=2_000)
    harness.core.limits = ratelimit.Limits(rate=20, burst=40, total_rate=1000, total_burst=150)
    r = harness.run(4_000)
    assert r.failure_count == 0, "\n".join(map(str, r.failures))
    limits = (r.stats.flooded, r.stats.overloaded, r.stats.refused)
    assert min(limits) > 20, limits
    assert r.accepted > r.stats.flooded + r.stats.overloaded  # most still reach decode


# ------------------------------------------------- each check fails when it should


def _raise(*args: object) -> None:
    raise RuntimeError("injected")


def test_an_exception_escaping_a_handler_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(repair.Repair, "on_gone", _raise)
    r = fuzz.run(3_000, seed=5, keyed=False)
    assert "exception" in _kinds(r)
    failure = next(f for f in r.failures if f.kind == "exception")
    assert "injected" in failure.detail and failure.data  # with the datagram that did it
    assert isinstance(codec.decode(failure.data), codec.Gone)


def test_an_exception_escaping_decode_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    original = codec._ranges

    def ranges(value: object) -> codec.Ranges:
        if type(value) is list and len(value) == 3:
            raise IndexError("injected")
        return original(value)

    monkeypatch.setattr(codec, "_ranges", ranges)
    r = fuzz.run(3_000, seed=5, keyed=False)
    assert {"decode", "exception"} <= _kinds(r)


def test_a_slow_datagram_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    def busy(*args: object) -> None:
        end = time.thread_time() + 0.012  # CPU time: preemption alone never fails a run
        while time.thread_time() < end:
            pass

    monkeypatch.setattr(repair.Repair, "on_gone", busy)
    r = fuzz.run(2_000, seed=5, keyed=False)
    assert _kinds(r) == {"slow"}


def test_a_table_past_its_bound_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(fuzz.BOUNDS, "catchup._MAX_RECALL_NONCES", 10)  # the core allows 1024
    r = fuzz.run(3_000, seed=5, keyed=False)
    assert _kinds(r) == {"state"}
    assert any("recalls heard has" in f.detail for f in r.failures)


def test_a_lost_pairing_timer_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    original = pairing.Pairing.take_timers
    monkeypatch.setattr(pairing.Pairing, "take_timers", lambda self: original(self)[1:])
    r = fuzz.run(3_000, seed=5, keyed=False)
    assert _kinds(r) == {"state"}
    assert any("pairing timers" in f.detail for f in r.failures)


def test_a_recall_answer_without_its_timer_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catchup.Catchup, "_book_answer", lambda self, when, nonce: None)
    r = fuzz.run(3_000, seed=5, keyed=False)
    assert "state" in _kinds(r)
    assert any("has no timer" in f.detail for f in r.failures)


def test_a_miscounted_drop_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    original = NodeCore._dropped

    def count(self: NodeCore, counter: str, source: core.Address, channel: str, now: float) -> None:
        if counter != "wrong_version":
            original(self, counter, source, channel, now)

    monkeypatch.setattr(NodeCore, "_dropped", count)
    r = fuzz.run(3_000, seed=5, keyed=False)
    assert _kinds(r) == {"counters"}


def test_a_bad_emitted_datagram_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    original = NodeCore._beat
    monkeypatch.setattr(NodeCore, "_beat", lambda self: original(self)[:-1])
    r = fuzz.run(2_000, seed=5, keyed=False)
    assert "emitted" in _kinds(r)


def test_a_node_that_stops_answering_fails_the_liveness_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    harness = fuzz.Harness(6, keyed=False)
    assert harness.run(1_000, liveness=False).failure_count == 0
    monkeypatch.setattr(NodeCore, "_on_chat", lambda self, msg, late, now: None)  # deaf to chat
    harness._liveness()
    assert _kinds(harness.result) == {"liveness"}


# ------------------------------------------------------------ Hypothesis properties


def _fresh(keyed: bool) -> Any:
    harness = fuzz.Harness(0, keyed=keyed)
    harness.core.start(harness.now)
    harness._service(-1)
    return harness


def _feed_all(harness: Any, datagrams: list[bytes], steps: list[float] | None = None) -> None:
    for i, data in enumerate(datagrams):
        harness.now += steps[i % len(steps)] if steps else 0.001
        harness.result.kinds["given"] = i + 1
        harness.feed(i, data, (f"10.1.0.{i % 200 + 1}", 40000 + i % 7))
    harness._check(len(datagrams))
    assert harness.result.failure_count == 0, "\n".join(map(str, harness.result.failures))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=codec.MAX_DATAGRAM + 50), max_size=20), st.booleans())
def test_any_bytes_through_the_receive_path(datagrams: list[bytes], keyed: bool) -> None:
    _feed_all(_fresh(keyed), [codec.HEADER[: len(d) % 5] + d for d in datagrams])


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=40),
    st.binary(max_size=12),
    st.lists(st.integers(0, 2**64 - 1), max_size=3),
    st.builds(fuzz.RawStr, st.binary(max_size=8)),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(1, 16), st.integers(0, 12), _values), min_size=1, max_size=8),
    st.booleans(),
)
def test_one_wrong_field_of_any_type_through_the_receive_path(
    edits: list[tuple[int, int, object]], keyed: bool
) -> None:
    harness = _fresh(keyed)
    gen = harness.gen
    datagrams = []
    for kind, index, value in edits:
        sender = gen.sender()
        body = gen.valid_body(sender, kind)
        body[index % len(body)] = value
        datagrams.append(gen.sealed(body, sender) if keyed else gen.plain(body))
    _feed_all(harness, datagrams)


_seqs = st.one_of(st.integers(1, 3000), st.integers(1, 2**64 - 1))


@st.composite
def _stream_traffic(draw: st.DrawFn) -> list[tuple[int, list[Any]]]:
    """Valid Beats, Chats, Nacks, Gones and Byes of three peers, seqs anywhere in u64."""
    out = []
    for _ in range(draw(st.integers(1, 25))):
        who = draw(st.integers(0, 2))
        instance = draw(st.sampled_from([1, 2, 2**64 - 1]))
        kind = draw(st.sampled_from(["beat", "chat", "nack", "gone", "bye"]))
        first = draw(_seqs)
        last = draw(
            st.integers(first, min(2**64 - 1, first + draw(st.sampled_from([0, 5, 2**64]))))
        )
        out.append((who, [kind, instance, first, last]))
    return out


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_stream_traffic(), st.lists(st.sampled_from([0.0, 0.001, 0.03, 0.5, 20.0]), min_size=1))
def test_valid_stream_traffic_keeps_the_repair_state_sound(
    traffic: list[tuple[int, list[Any]]], steps: list[float]
) -> None:
    harness = _fresh(False)
    me = harness.core.identity
    ids = [bytes([i + 1]) * 8 for i in range(3)]
    harness.core.say("lobby", "one", harness.now)
    datagrams = []
    for who, (kind, instance, first, last) in traffic:
        head = (ids[who], instance)
        msg: codec.Message
        if kind == "beat":
            msg = codec.Beat(*head, "p", "h", 40000, "online", "", ("lobby",), first, 1000)
        elif kind == "chat":
            msg = codec.Chat(*head, first, "p", "lobby", "hi")
        elif kind == "nack":
            target, target_instance = (
                (me.peer_id, me.instance) if first % 2 else (ids[(who + 1) % 3], instance)
            )
            msg = codec.Nack(*head, target, target_instance, ((first, last),))
        elif kind == "gone":
            msg = codec.Gone(*head, ((first, last),))
        else:
            msg = codec.Bye(*head)
        datagrams.append(codec.encode(msg))
    _feed_all(harness, datagrams, steps)


# ------------------------------------------------------------ regressions it found


def test_one_beat_cannot_end_thousands_of_streams() -> None:
    """Chat from one peer id under thousands of made-up instances, each stream with
    holes, then one Beat of a newer instance: ending them took 164 ms of CPU and
    emitted 131,073 events (4096 streams x 32 holes) before repair._MAX_INSTANCES.
    """
    harness = _fresh(False)
    node = harness.core
    sender = b"\x01" * 8
    datagrams = [
        codec.encode(codec.Chat(sender, instance, seq, "x", "lobby", "hi"))
        for instance in range(1, 201)
        for seq in range(1, 2 * repair._MAX_HOLES + 2, 2)  # every other seq: 32 holes
    ]
    _feed_all(harness, datagrams, [0.0])
    assert len(node._repair._stream_instances[sender]) == repair._MAX_INSTANCES
    events = harness.result.events
    beat = codec.Beat(sender, 1000, "x", "h", 40000, "online", "", ("lobby",), 0, 1000)
    harness.feed(len(datagrams), codec.encode(beat), ("10.1.0.1", 40000))
    assert harness.result.events - events <= repair._MAX_INSTANCES * repair._MAX_HOLES + 1
    assert node._repair._stream_instances == {sender: {1000}}  # only the new start's stream is left
