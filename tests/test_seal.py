"""Keyed groups (`lanchat.seal`): sealing, every rejection, replay windows, rotation, key files.

No sockets except the two CLI tests, which pin `lanchat peers` to loopback on a
port of their own. Everything else runs in virtual time on NodeCore or FakeLan.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

import lanchat.seal
from lanchat import codec
from lanchat import events as ev
from lanchat.cli import cli
from lanchat.codec import (
    MAX_DATAGRAM,
    MAX_INTERVAL_MS,
    MAX_KNOWN,
    SEAL_RESERVE,
    T_CHAT,
    T_DIRECT,
    T_NOTICE,
    Ack,
    Beat,
    Bye,
    Chat,
    DecodeError,
    Direct,
    Message,
    Notice,
    Ping,
    Pong,
    Query,
    decode,
    encode,
    seal,
)
from lanchat.config import DEFAULT_GROUP, DEFAULT_PORT, NOTICE_DELAYS, NodeConfig
from lanchat.core import Identity, NodeCore
from lanchat.errors import ConfigError
from lanchat.ratelimit import Limits
from lanchat.seal import (
    KEY_FILE_HEADER,
    SEALED_HEADER,
    KeyRing,
    Opener,
    OpenError,
    Sealer,
    key_from_passphrase,
    key_id,
    new_key_text,
    parse_key_text,
    read_key_file,
)
from lanchat.testing import FakeLan, FakeNode

K1 = bytes(range(32))
K2 = bytes(range(100, 132))
K3 = hashlib.sha256(b"a third key").digest()
ALICE = bytes.fromhex("a11ce0000000a11c")
ALICE_INSTANCE = 0x019B76DAA8004C43  # a real node's: start time in ms << 16, 64 bits
BOB = bytes.fromhex("b0b0000000000b0b")
BOB_INSTANCE = 0x019B76DAACD20042
MALLORY = bytes.fromhex("3a11031000003a11")
ALICE_ADDR = ("10.0.0.1", 40001)
MALLORY_ADDR = ("10.0.0.66", 40066)
NOW = 1000.0
U64_MAX = 2**64 - 1
# Instances at every msgpack integer size boundary: 1, 2, 3, 5 and 9 bytes.
INSTANCES = (0, 127, 128, 255, 256, 2**16 - 1, 2**16, 2**32 - 1, 2**32, ALICE_INSTANCE, U64_MAX)
MESSAGE_TYPES = (Beat, Query, Bye, Chat, Notice, Direct, Ack, Ping, Pong)
# Stats fields that count a dropped or ignored datagram.
DROP_FIELDS = (
    "foreign", "wrong_version", "sealed", "unknown_key", "forged", "replayed", "unsealed",
    "malformed", "own", "duplicates", "stale", "unexpected", "rate_limited",
)  # fmt: skip
# What UnauthenticatedReceived.why says, per drop reason (user-facing wording).
WHY_SEALED = "sealed with a key this node does not have"
WHY_UNKNOWN_KEY = "sealed with an unknown key"
WHY_UNSEALED = "without a key (this node requires one)"

assert len({key_id(K1), key_id(K2), key_id(K3)}) == 3  # the tests below rely on distinct ids


def worst_messages(sender: bytes, instance: int) -> list[Message]:
    """The largest message of every type: every field at its size limit."""
    nick, text = "N" * codec.MAX_NICK_BYTES, "\u00e9" * (codec.MAX_TEXT_BYTES // 2)
    rooms = tuple(f"{i:02d}".ljust(codec.MAX_ROOM_BYTES, "r") for i in range(codec.MAX_ROOMS))
    known = tuple(i.to_bytes(codec.KNOWN_PREFIX, "big") for i in range(MAX_KNOWN))
    return [
        Beat(sender, instance, nick, "H" * codec.MAX_HOST_BYTES, 65535, "away",
             "S" * codec.MAX_STATUS_BYTES, rooms, U64_MAX, MAX_INTERVAL_MS),
        Query(sender, instance, 65535, known),
        Bye(sender, instance),
        Chat(sender, instance, U64_MAX, nick, "R" * codec.MAX_ROOM_BYTES, text),
        Notice(sender, instance, U64_MAX, nick, text, 65535),
        Direct(sender, instance, U64_MAX, nick, text),
        Ack(sender, instance, T_DIRECT, U64_MAX, U64_MAX),
        Ping(sender, instance, U64_MAX),
        Pong(sender, instance, U64_MAX),
    ]  # fmt: skip


def small_messages(sender: bytes, instance: int) -> list[Message]:
    """The smallest message of every type."""
    return [
        Beat(sender, instance, "a", "", 1, "online", "", (), 0, 1),
        Query(sender, instance, 1),
        Bye(sender, instance),
        Chat(sender, instance, 1, "a", "r", "x"),
        Notice(sender, instance, 1, "a", "x", 1),
        Direct(sender, instance, 1, "a", "x"),
        Ack(sender, instance, T_NOTICE, 1, 0),
        Ping(sender, instance, 0),
        Pong(sender, instance, 0),
    ]


def sealed(msg: Message, sealer: Sealer) -> bytes:
    return seal(encode(msg), sealer)


def counter_of(data: bytes) -> int:
    return int.from_bytes(data[22:SEALED_HEADER], "big")


def sealed_at(sealer: Sealer, msg: Message, counter: int) -> bytes:
    """Seal `msg` with exactly this counter (the sealer continues from there)."""
    sealer.counter = counter - 1
    data = sealed(msg, sealer)
    assert counter_of(data) == counter
    return data


def drops(core: NodeCore) -> dict[str, int]:
    """The non-zero drop counters of a core."""
    return {name: getattr(core.stats, name) for name in DROP_FIELDS if getattr(core.stats, name)}


def drain_events(core: NodeCore) -> list[ev.Event]:
    out = []
    while (event := core.next_event()) is not None:
        out.append(event)
    return out


def run_timers(
    core: NodeCore, until: float, sent: list[bytes] | None = None
) -> list[tuple[float, ev.Event]]:
    """Fire every timer due up to `until`; the events, each with the time it came out.

    What the core sends is appended to `sent`, if given.
    """
    log: list[tuple[float, ev.Event]] = []
    for _ in range(100_000):
        when = core.get_timer()
        if when is None or when > until:
            return log
        core.handle_timer(when)
        sent_now = [d.data for d in core.datagrams_to_send()]
        if sent is not None:
            sent.extend(sent_now)
        log.extend((when, event) for event in drain_events(core))
    raise AssertionError("the timer never moved past `until`")


class Observer:
    """Bob: a started NodeCore (keyed by default) that already knows alice."""

    def __init__(self, keys: tuple[bytes, ...] = (K1,)) -> None:
        ring = KeyRing(keys) if keys else None
        self.core = NodeCore(
            NodeConfig(nick="bob", host="bob-pc"),
            Identity(BOB, BOB_INSTANCE),
            uport=40002,
            rng=random.Random(7),
            keys=ring,
        )
        self.core.start(NOW)
        self.alice = Sealer(ring, ALICE, ALICE_INSTANCE) if ring else None
        beat = Beat(ALICE, ALICE_INSTANCE, "alice", "alice-pc", 40001, "online", "", ("lobby",),
                    0, 1000)  # fmt: skip
        self.feed(sealed(beat, self.alice) if self.alice else encode(beat))
        assert [p.nick for p in self.core.peers()] == ["alice"]
        self.settle()

    def feed(self, data: bytes, source: tuple[str, int] = ALICE_ADDR) -> None:
        self.core.receive_datagram(data, source, NOW)

    def settle(self) -> None:
        """Forget what is queued so far, and the stats: later checks see only what follows."""
        self.core.datagrams_to_send()
        drain_events(self.core)
        self.core.stats = type(self.core.stats)()
        self.table = self.core.peers()

    def unchanged(self) -> bool:
        """Nothing happened: same peer table, no event, nothing to send."""
        return (
            self.core.peers() == self.table
            and self.core.next_event() is None
            and self.core.datagrams_to_send() == []
        )

    def chat_from_alice(self, text: str, seq: int = 1) -> bytes:
        assert self.alice is not None
        return sealed(Chat(ALICE, ALICE_INSTANCE, seq, "alice", "lobby", text), self.alice)


# ------------------------------------------------------------ layout and size


def test_sealed_layout_matches_protocol_section_9() -> None:
    """Rebuilt by hand from PROTOCOL.md 9.1-9.2: key id, header, HKDF subkey, nonce, AAD."""
    plain = encode(Chat(ALICE, ALICE_INSTANCE, 7, "alice", "lobby", "hi"))
    sealer = Sealer(KeyRing((K1,)), ALICE, ALICE_INSTANCE)
    first, second = seal(plain, sealer), seal(plain, sealer)
    info = b"lanchat v1 sender" + ALICE + ALICE_INSTANCE.to_bytes(8, "big")
    subkey = HKDF(hashes.SHA256(), 32, None, info).derive(K1)
    inner = msgpack.packb([T_CHAT, 7, "alice", "lobby", "hi"], use_bin_type=True)
    kid = hashlib.sha256(b"lanchat key id v1" + K1).digest()[:2]
    assert key_id(K1) == kid
    for counter, data in ((1, first), (2, second)):
        header = (
            b"LC\x01\x01" + kid + ALICE + ALICE_INSTANCE.to_bytes(8, "big")
            + counter.to_bytes(6, "big")
        )  # fmt: skip
        nonce = counter.to_bytes(12, "big")
        assert data == header + ChaCha20Poly1305(subkey).encrypt(nonce, inner, header)


@pytest.mark.parametrize("instance", INSTANCES)
@pytest.mark.parametrize("variant", [worst_messages, small_messages], ids=["worst", "small"])
def test_every_message_type_round_trips_sealed_within_the_reserve(
    variant: Any, instance: int
) -> None:
    ring = KeyRing((K1,))
    sealer, opener = Sealer(ring, ALICE, instance), Opener(ring)
    messages = variant(ALICE, instance)
    assert [type(m) for m in messages] == list(MESSAGE_TYPES)
    for msg in messages:
        plain = encode(msg)
        data = seal(plain, sealer)
        assert data[:4] == b"LC\x01\x01"
        assert decode(data, opener) == msg
        # 24 more header bytes and a 16-byte tag; sender (10) and instance leave the body.
        overhead = len(data) - len(plain)
        assert overhead == 24 + 16 - 10 - len(msgpack.packb(instance))
        assert 21 <= overhead <= 29 <= SEAL_RESERVE
        if instance >= 2**32:  # what every real node uses (start time in the high bits)
            assert overhead == 21
        assert len(data) <= MAX_DATAGRAM
        if isinstance(msg, Query):
            assert len(data) == codec.QUERY_SIZE + overhead


def test_worst_case_sealed_datagram_of_each_type_fits_1200_bytes() -> None:
    sizes: dict[str, int] = {}
    for instance in (0, U64_MAX):  # the smallest instance costs most overhead
        sealer = Sealer(KeyRing((K1,)), ALICE, instance)
        for msg in worst_messages(ALICE, instance):
            data = sealed(msg, sealer)
            sizes[type(msg).__name__] = max(sizes.get(type(msg).__name__, 0), len(data))
    assert max(sizes.values()) <= MAX_DATAGRAM, sizes
    assert sizes["Chat"] > 1000  # the worst cases really are large


# ------------------------------------------------------------- nonce reuse


def test_a_sealer_never_reuses_a_counter() -> None:
    sealer = Sealer(KeyRing((K1,)), ALICE, ALICE_INSTANCE)
    plain = encode(Ping(ALICE, ALICE_INSTANCE, 1))
    datagrams = [seal(plain, sealer) for _ in range(2000)]
    assert [counter_of(d) for d in datagrams] == list(range(1, 2001))
    assert len(set(datagrams)) == len(datagrams)  # the same body never seals the same


def test_a_keyed_core_seals_every_datagram_and_repeat_with_a_fresh_counter() -> None:
    core = NodeCore(
        NodeConfig(nick="alice", host="pc"),
        Identity(ALICE, ALICE_INSTANCE),
        uport=40001,
        rng=random.Random(1),
        keys=KeyRing((K1,)),
    )
    core.start(NOW)
    out = [d.data for d in core.datagrams_to_send()]
    core.notice("repeated four times", NOW)
    core.say("lobby", "hello", NOW)
    run_timers(core, NOW + 4, out)  # heartbeats, queries and the notice's repeats
    opener = Opener(KeyRing((K1,)))
    messages = [decode(data, opener) for data in out]  # each opens once: none is a replay
    assert sum(isinstance(m, Notice) for m in messages) == len(NOTICE_DELAYS)
    assert sum(isinstance(m, Beat) for m in messages) >= 5
    assert [counter_of(data) for data in out] == list(range(1, len(out) + 1))
    assert all(data[:6] == b"LC\x01\x01" + key_id(K1) for data in out)


@pytest.mark.parametrize(
    "other", [(BOB, ALICE_INSTANCE), (ALICE, ALICE_INSTANCE + 1), (BOB, BOB_INSTANCE)]
)
def test_each_sender_start_seals_with_its_own_subkey(other: tuple[bytes, int]) -> None:
    ring = KeyRing((K1,))
    body = msgpack.packb([codec.T_PING, 5])
    mine = Sealer(ring, ALICE, ALICE_INSTANCE).seal(body)
    again = Sealer(KeyRing((K1,)), ALICE, ALICE_INSTANCE).seal(body)
    theirs = Sealer(ring, *other).seal(body)
    assert counter_of(mine) == counter_of(theirs) == 1
    assert mine == again  # deterministic: only (sender, instance) tells the subkeys apart
    assert mine[SEALED_HEADER:] != theirs[SEALED_HEADER:]
    keystream_mine = bytes(a ^ b for a, b in zip(mine[SEALED_HEADER:], body, strict=False))
    keystream_theirs = bytes(a ^ b for a, b in zip(theirs[SEALED_HEADER:], body, strict=False))
    assert keystream_mine != keystream_theirs  # same nonce, different key stream


# ------------------------------------------------------------------ rejections


def test_the_right_key_opens_and_alice_is_heard() -> None:
    obs = Observer()
    obs.feed(obs.chat_from_alice("hi"))
    assert drain_events(obs.core) == [ev.ChatReceived(ALICE.hex(), "alice", "lobby", "hi", 1)]
    assert drops(obs.core) == {}


def test_another_key_is_unknown_key_and_changes_nothing() -> None:
    obs = Observer()
    foreign_alice = Sealer(KeyRing((K2,)), ALICE, ALICE_INSTANCE + 1)
    mallory = Sealer(KeyRing((K2, K1)), MALLORY, 5)  # K1 too, but seals with K2
    messages: list[tuple[Sealer, Message]] = [
        (foreign_alice, Beat(ALICE, ALICE_INSTANCE + 1, "evil", "h", 1, "online", "", (), 0, 1)),
        (foreign_alice, Chat(ALICE, ALICE_INSTANCE + 1, 1, "alice", "lobby", "forged")),
        (mallory, Beat(MALLORY, 5, "mallory", "h", 1, "online", "", (), 0, 1000)),
        (mallory, Direct(MALLORY, 5, 1, "mallory", "psst")),
    ]
    for sealer, msg in messages:
        obs.feed(sealed(msg, sealer), MALLORY_ADDR)
        assert obs.unchanged()
    assert drops(obs.core) == {"unknown_key": 4}


def test_same_key_id_but_other_key_bytes_is_forged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lanchat.seal, "key_id", lambda key: b"LC")  # every key collides
    obs = Observer()
    impostor = Sealer(KeyRing((K2,)), ALICE, ALICE_INSTANCE)
    data = sealed(Chat(ALICE, ALICE_INSTANCE, 1, "alice", "lobby", "forged"), impostor)
    assert data[4:6] == b"LC" == obs.core.keys.ids[0]  # type: ignore[union-attr]
    obs.feed(data)
    assert obs.unchanged()
    assert drops(obs.core) == {"forged": 1}


def test_header_rewritten_to_our_key_id_is_forged() -> None:
    obs = Observer()
    impostor = Sealer(KeyRing((K2,)), ALICE, ALICE_INSTANCE)
    data = sealed(Chat(ALICE, ALICE_INSTANCE, 1, "alice", "lobby", "forged"), impostor)
    obs.feed(data[:4] + key_id(K1) + data[6:])
    assert obs.unchanged()
    assert drops(obs.core) == {"forged": 1}


def test_colliding_key_ids_in_one_ring_still_open_by_tag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lanchat.seal, "key_id", lambda key: b"LC")
    opener = Opener(KeyRing((K1, K2)))
    body = msgpack.packb([codec.T_PING, 5])
    assert opener.open(Sealer(KeyRing((K2,)), ALICE, 9).seal(body))[2] == body
    assert opener.open(Sealer(KeyRing((K1,)), BOB, 9).seal(body))[2] == body
    with pytest.raises(OpenError, match="forged"):
        opener.open(Sealer(KeyRing((K3,)), MALLORY, 9).seal(body))


def _valid_sealed(obs: Observer) -> dict[str, bytes]:
    assert obs.alice is not None
    rooms = ("lobby",)
    return {
        "beat": sealed(
            Beat(ALICE, ALICE_INSTANCE, "alice", "pc", 40001, "away", "lunch", rooms, 3, 1000),
            obs.alice,
        ),
        "chat": obs.chat_from_alice("flip me"),
        "query": sealed(Query(ALICE, ALICE_INSTANCE, 40001), obs.alice),
    }


@pytest.mark.parametrize("kind", ["beat", "chat", "query"])
def test_every_single_bit_flip_is_rejected_and_counted_by_reason(kind: str) -> None:
    obs = Observer()
    obs.core.limits = Limits(burst=1e6)  # ~7000 datagrams from one source at one instant
    data = _valid_sealed(obs)[kind]
    for bit in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        obs.feed(bytes(flipped))
        assert obs.core.peers() == obs.table and obs.core.next_event() is None, bit
        assert obs.core.datagrams_to_send() == [], bit
    assert drops(obs.core) == {
        "foreign": 16,  # magic
        "wrong_version": 8,
        "unsealed": 1,  # the sealed flag itself: now a plain datagram
        "unknown_key": 16,  # key id
        "forged": 7 + 8 * (len(data) - 6),  # other flag bits, sender, instance, counter, body
    }
    assert obs.core.stats.received == len(data) * 8
    # No forgery moved the replay window: the untouched datagram still opens.
    before = drops(obs.core)
    obs.feed(data)
    assert drops(obs.core) == before


def test_every_truncation_is_rejected() -> None:
    obs = Observer()
    data = obs.chat_from_alice("cut me short")
    for cut in range(len(data)):
        obs.feed(data[:cut])
        assert obs.unchanged(), cut
    short = SEALED_HEADER + 16  # the header and a tag at least, else "short"
    assert drops(obs.core) == {"malformed": short, "forged": len(data) - short}
    obs.feed(data)
    assert [type(e) for e in drain_events(obs.core)] == [ev.ChatReceived]


def test_the_same_datagram_twice_is_replayed() -> None:
    obs = Observer()
    data = obs.chat_from_alice("once")
    obs.feed(data)
    assert len(drain_events(obs.core)) == 1
    table = obs.core.peers()
    obs.feed(data)
    assert obs.core.peers() == table and obs.core.next_event() is None
    assert drops(obs.core) == {"replayed": 1}  # the opener caught it, not chat dedup
    assert run_timers(obs.core, NOW + 0.01) == []  # and it is no key mismatch to report


def _pings_answered(obs: Observer, datagrams: list[bytes]) -> list[bool]:
    """Feed each datagram (a Ping); whether it was accepted (a Pong came out)."""
    answered = []
    for data in datagrams:
        obs.feed(data)
        answered.append(len(obs.core.datagrams_to_send()) == 1)
    return answered


def test_replay_window_accepts_late_counters_once_and_refuses_older_than_1024() -> None:
    obs = Observer()
    assert obs.alice is not None
    ping = Ping(ALICE, ALICE_INSTANCE, 1)
    order = [2000, 2000 - 1023, 2000 - 1024, 2000 - 1023, 1999, 1999, 1, 2001, 977]
    answered = _pings_answered(obs, [sealed_at(obs.alice, ping, c) for c in order])
    assert answered == [True, True, False, False, True, False, False, True, False]
    assert drops(obs.core) == {"replayed": 5}


def test_a_jump_past_the_window_forgets_it() -> None:
    obs = Observer()
    assert obs.alice is not None
    ping = Ping(ALICE, ALICE_INSTANCE, 1)
    order = [10, 9, 10 + 1024, 9, 11, 10 + 1024 + 1023]
    answered = _pings_answered(obs, [sealed_at(obs.alice, ping, c) for c in order])
    assert answered == [True, True, True, False, True, True]


def test_an_older_start_of_a_sender_is_replayed_and_a_newer_one_starts_over() -> None:
    obs = Observer()
    assert obs.alice is not None
    old = obs.alice
    new = Sealer(old.ring, ALICE, ALICE_INSTANCE + 1)
    old_pings = [sealed(Ping(ALICE, ALICE_INSTANCE, n), old) for n in range(1, 6)]
    assert _pings_answered(obs, old_pings[:3]) == [True] * 3
    # The restart: counter 1 again, lower than the old start's 3, and accepted.
    restarted = sealed(Ping(ALICE, ALICE_INSTANCE + 1, 1), new)
    assert counter_of(restarted) == 1
    assert _pings_answered(obs, [restarted]) == [True]
    # Old-start datagrams are refused now: those seen before and those never seen.
    assert _pings_answered(obs, [old_pings[0], old_pings[3], old_pings[4]]) == [False] * 3
    assert drops(obs.core) == {"replayed": 3}  # by the opener, before membership's "stale"
    assert _pings_answered(obs, [sealed(Ping(ALICE, ALICE_INSTANCE + 1, 2), new)]) == [True]


def test_a_restarted_peer_on_the_fake_lan_is_heard_and_its_old_start_is_not() -> None:
    lan = FakeLan(seed=4)
    a, b = lan.add_node("a", keys=[K1]), lan.add_node("b", keys=[K1])
    assert lan.run_until(lambda: a.knows(b) and b.knows(a), timeout=2)
    captured: list[bytes] = []
    original = b.core.receive_datagram

    def tap(data: bytes, source: tuple[str, int], now: float, **kw: Any) -> None:
        if source[0] == a.ips[0]:  # a's datagrams, not b's own looped back
            captured.append(data)
        original(data, source, now, **kw)

    b.core.receive_datagram = tap  # type: ignore[method-assign]
    lan.call(a, lambda core, now: core.say("lobby", "before", now))
    lan.run(0.1)
    old_chat = captured[-1]
    a2 = lan.restart(a)
    lan.call(a2, lambda core, now: core.say("lobby", "after", now))
    assert lan.run_until(lambda: b.knows(a2), timeout=2)
    lan.run(0.1)
    assert [e.text for e in b.of_type(ev.ChatReceived)] == ["before", "after"]
    replayed = b.core.stats.replayed
    b.core.receive_datagram(old_chat, (a.ips[0], 50000), lan.now)
    assert b.core.stats.replayed == replayed + 1
    assert [e.text for e in b.of_type(ev.ChatReceived)] == ["before", "after"]


def _plain_datagrams() -> list[bytes]:
    return [encode(m) for m in small_messages(MALLORY, 5)]


def test_plain_datagrams_to_a_keyed_node_are_unsealed() -> None:
    obs = Observer()
    for data in _plain_datagrams():
        obs.feed(data, MALLORY_ADDR)
        assert obs.unchanged()
    assert drops(obs.core) == {"unsealed": len(MESSAGE_TYPES)}


def test_sealed_datagrams_to_an_unkeyed_node_are_sealed() -> None:
    obs = Observer(keys=())
    mallory = Sealer(KeyRing((K1,)), MALLORY, 5)
    for msg in small_messages(MALLORY, 5):
        obs.feed(sealed(msg, mallory), MALLORY_ADDR)
        assert obs.unchanged()
    assert drops(obs.core) == {"sealed": len(MESSAGE_TYPES)}


# --------------------------------------------------- reporting key mismatches


def test_key_mismatch_is_reported_at_once_then_every_10_seconds() -> None:
    obs = Observer()
    plain = encode(Ping(MALLORY, 5, 1))
    log: list[tuple[float, ev.Event]] = []
    for step in range(51):  # one datagram every 0.5 s for 25 s
        now = NOW + step * 0.5
        log += run_timers(obs.core, now)
        obs.core.receive_datagram(plain, MALLORY_ADDR, now)
        log += run_timers(obs.core, now)
    log += run_timers(obs.core, NOW + 40)
    reports = [(t, e) for t, e in log if isinstance(e, ev.UnauthenticatedReceived)]
    assert [e.address for _, e in reports] == [MALLORY_ADDR[0]] * len(reports)
    assert {e.why for _, e in reports} == {WHY_UNSEALED}
    assert reports[0][0] == NOW and reports[0][1].count == 1  # the first one at once
    times = [t for t, _ in reports]
    assert all(later - earlier >= 10.0 for earlier, later in itertools.pairwise(times))
    assert len(reports) == 4  # t = 0, 10, 20, then the rest at 30
    assert sum(e.count for _, e in reports) == 51 == obs.core.stats.unsealed


def test_a_new_source_is_reported_at_once_even_right_after_another() -> None:
    obs = Observer()
    plain = encode(Ping(MALLORY, 5, 1))
    obs.core.receive_datagram(plain, ("10.0.0.5", 40005), NOW)
    first = run_timers(obs.core, NOW)
    assert [e.address for _, e in first if isinstance(e, ev.UnauthenticatedReceived)] == [
        "10.0.0.5"
    ]
    obs.core.receive_datagram(plain, ("10.0.0.6", 40006), NOW + 1)
    second = run_timers(obs.core, NOW + 1.5)
    assert [e.address for _, e in second if isinstance(e, ev.UnauthenticatedReceived)] == [
        "10.0.0.6"
    ]


def test_replays_and_garbage_are_not_reported_as_key_mismatch() -> None:
    obs = Observer()
    data = obs.chat_from_alice("x")
    obs.feed(data)
    obs.feed(data)  # replayed
    obs.feed(data[:20])  # short
    obs.feed(b"XX\x01\x01" + data[4:])  # foreign
    events = drain_events(obs.core) + [e for _, e in run_timers(obs.core, NOW + 20)]
    assert not [e for e in events if isinstance(e, ev.UnauthenticatedReceived)]


# -------------------------------------------------------------- fuzz invariant

_SEALED_FLAGS = st.integers(0, 255).map(lambda f: f | codec.FLAG_SEALED)
_MSGPACK_VALUES = st.one_of(
    st.integers(-(2**63), U64_MAX),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.none(),
    st.booleans(),
    st.lists(st.text(max_size=8), max_size=4),
)
_FUZZ_RING = KeyRing((K1, K2))


def _seal_inner(args: tuple[bytes, int, bytes]) -> bytes:
    sender, instance, inner = args
    return Sealer(_FUZZ_RING, sender, instance).seal(inner)


@settings(max_examples=400, deadline=None, database=None)
@given(
    data=st.one_of(
        # anything after a sealed header's first bytes
        st.tuples(_SEALED_FLAGS, st.binary(max_size=1300)).map(
            lambda t: b"LC\x01" + bytes([t[0]]) + t[1]
        ),
        # our key id: reaches the AEAD
        st.tuples(_SEALED_FLAGS, st.binary(max_size=1200)).map(
            lambda t: b"LC\x01" + bytes([t[0]]) + key_id(K1) + t[1]
        ),
        # authentic (sealed with our key) but arbitrary bytes inside
        st.tuples(
            st.binary(min_size=8, max_size=8), st.integers(0, U64_MAX), st.binary(max_size=1100)
        ).map(_seal_inner),
        # authentic arbitrary msgpack arrays that start like a message
        st.tuples(
            st.binary(min_size=8, max_size=8),
            st.integers(0, U64_MAX),
            st.tuples(st.integers(-1, 12), st.lists(_MSGPACK_VALUES, max_size=12)).map(
                lambda t: msgpack.packb([t[0], *t[1]], use_bin_type=True)
            ),
        ).map(_seal_inner),
    )
)
def test_sealed_bytes_decode_to_a_message_or_raise_decode_error_only(data: bytes) -> None:
    try:
        msg = decode(data, Opener(_FUZZ_RING))
    except DecodeError as exc:
        assert isinstance(exc.reason, str) and exc.reason
        return
    assert isinstance(msg, MESSAGE_TYPES)
    # What opens is bound to the header: its sender and instance are the header's.
    assert (msg.sender, msg.instance) == (data[6:14], int.from_bytes(data[14:22], "big"))


# ------------------------------------------------------------- on the fake LAN


def test_only_holders_of_the_same_key_see_and_hear_each_other() -> None:
    lan = FakeLan(seed=3)
    a, b = lan.add_node("a", keys=[K1]), lan.add_node("b", keys=[K1])
    c, d = lan.add_node("c"), lan.add_node("d", keys=[K2])
    assert lan.run_until(lambda: a.knows(b) and b.knows(a), timeout=2)
    lan.run(3)
    for node in (a, b, c, d):

        def say(core: NodeCore, now: float, name: str = node.name) -> int:
            return core.say("lobby", f"from {name}", now)

        lan.call(node, say)
    lan.run(1)
    heard = {n.name: sorted(e.text for e in n.of_type(ev.ChatReceived)) for n in (a, b, c, d)}
    assert heard == {"a": ["from b"], "b": ["from a"], "c": [], "d": []}
    assert {n.name: [p.nick for p in n.core.peers()] for n in (a, b, c, d)} == {
        "a": ["b"],
        "b": ["a"],
        "c": [],
        "d": [],
    }
    for outsider in (c, d):
        assert not [e for e in outsider.events if not isinstance(e, ev.UnauthenticatedReceived)]

    def reported(node: FakeNode) -> dict[tuple[str, str], int]:
        counts: dict[tuple[str, str], int] = {}
        for e in node.of_type(ev.UnauthenticatedReceived):
            counts[e.address, e.why] = counts.get((e.address, e.why), 0) + e.count
        return counts

    # Every source is reported at once, then at most every 10 s.
    lan.run(10.5)
    ip = {n.name: n.ips[0] for n in (a, b, c, d)}
    for member in (a, b):
        counts = reported(member)
        assert set(counts) == {(ip["c"], WHY_UNSEALED), (ip["d"], WHY_UNKNOWN_KEY)}
        assert 0 < counts[ip["c"], WHY_UNSEALED] <= member.core.stats.unsealed
        assert 0 < counts[ip["d"], WHY_UNKNOWN_KEY] <= member.core.stats.unknown_key
    assert set(reported(c)) == {(ip[n], WHY_SEALED) for n in "abd"}
    assert set(reported(d)) == {
        (ip["a"], WHY_UNKNOWN_KEY),
        (ip["b"], WHY_UNKNOWN_KEY),
        (ip["c"], WHY_UNSEALED),
    }
    # In ~15 s: per source, one report at its first mismatch and one 10 s later at most;
    # never one per datagram.
    for node in (a, b, c, d):
        sources = len(reported(node))
        assert len(node.of_type(ev.UnauthenticatedReceived)) <= 2 * sources
    # Still nobody crossed over.
    assert [p.nick for p in c.core.peers()] == [p.nick for p in d.core.peers()] == []


class Rotation:
    """Three chatting nodes on a loss-free fake LAN whose keys get swapped one node at a time."""

    TICK = 0.1  # every node says a line every 100 ms of virtual time

    def __init__(self, names: str, keys: list[bytes]) -> None:
        self.lan = FakeLan(seed=11)
        self.live = {name: self.lan.add_node(name, keys=keys) for name in names}
        self.incarnations = {name: [node] for name, node in self.live.items()}
        self.said: list[tuple[str, str, frozenset[str]]] = []  # speaker, text, who must hear
        nodes = list(self.live.values())
        assert self.lan.run_until(
            lambda: all(x.knows(y) for x in nodes for y in nodes if x is not y), timeout=2
        )

    def chat(self, ticks: int) -> None:
        for _ in range(ticks):
            for name, node in self.live.items():
                text = f"{name} line {len(self.said)}"

                def say(core: NodeCore, now: float, text: str = text) -> int:
                    return core.say("lobby", text, now)

                self.lan.call(node, say)
                self.said.append((name, text, frozenset(self.live) - {name}))
            self.lan.run(self.TICK)  # every datagram lands within 2 ms: none in flight now

    def restart(self, name: str, keys: list[bytes]) -> None:
        node = self.lan.restart(self.live[name], keys=keys)
        self.live[name] = node
        self.incarnations[name].append(node)

    def nodes(self) -> Iterator[FakeNode]:
        for incarnations in self.incarnations.values():
            yield from incarnations

    def lost(self) -> list[tuple[str, str, str]]:
        """(speaker, text, listener) for every line a listener alive at the time missed."""
        heard = {
            name: {e.text for n in nodes for e in n.of_type(ev.ChatReceived)}
            for name, nodes in self.incarnations.items()
        }
        return [
            (speaker, text, listener)
            for speaker, text, listeners in self.said
            for listener in sorted(listeners)
            if text not in heard[listener]
        ]


def test_key_rotation_loses_no_message() -> None:
    """Rotate three nodes from K1 to K2, one restart at a time, while all of them chat.

    The procedure of the README (and PROTOCOL.md 9.4); a node seals with its first key
    and opens with all of them:
    1. one node at a time restarts with [K1, K2]: it still seals with K1, now also opens K2;
    2. once all hold both, one at a time restarts with [K2, K1]: it seals with K2, which
       every node already opens;
    3. once all seal with K2, one at a time restarts with [K2] alone.
    Each node says a chat line every 100 ms (virtual) throughout, and every line must
    reach every other node alive when it was said; no node may report a key mismatch.
    """
    rotation = Rotation("xyz", [K1])
    rotation.chat(5)
    for keys in ([K1, K2], [K2, K1], [K2]):
        for name in "xyz":
            rotation.restart(name, keys)
            rotation.chat(5)
    assert len(rotation.said) == 3 * 5 * 10
    assert rotation.lost() == []
    for node in rotation.nodes():
        assert node.of_type(ev.UnauthenticatedReceived) == []
        assert node.core.stats.unknown_key == node.core.stats.forged == 0
    assert all(node.core.keys.keys == (K2,) for node in rotation.live.values())  # type: ignore[union-attr]
    assert len(list(rotation.nodes())) == 3 * 4  # each node restarted three times


def test_key_rotation_without_the_overlap_step_loses_messages() -> None:
    """The control: swapping one node straight from [K1] to [K2] cuts it off both ways."""
    rotation = Rotation("xyz", [K1])
    rotation.chat(2)
    rotation.restart("x", [K2])
    rotation.chat(3)
    lost = rotation.lost()
    assert {(speaker, listener) for speaker, _, listener in lost} == {
        ("x", "y"), ("x", "z"), ("y", "x"), ("z", "x"),
    }  # fmt: skip
    assert len(lost) == 4 * 3
    assert rotation.live["y"].of_type(ev.UnauthenticatedReceived)


# ------------------------------------------------------------------- key files


def test_new_key_text_parses_back_to_32_random_bytes() -> None:
    first, second = new_key_text(), new_key_text()
    assert first.startswith(KEY_FILE_HEADER + " ") and first.endswith("\n")
    key = parse_key_text(first, "k")
    assert len(key) == 32 and key != parse_key_text(second, "k")
    assert parse_key_text(f"  {KEY_FILE_HEADER}\t{key.hex().upper()}\r\n", "k") == key


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "not a lanchat key file"),
        (KEY_FILE_HEADER, "not a lanchat key file"),
        (K1.hex(), "not a lanchat key file"),
        (f"lanchat-key-v2 {K1.hex()}", "not a lanchat key file"),
        (f"{KEY_FILE_HEADER} {K1.hex()} extra", "not a lanchat key file"),
        (f"{KEY_FILE_HEADER} {'zz' * 32}", "not hexadecimal"),
        (f"{KEY_FILE_HEADER} {K1.hex()[:-1]}", "not hexadecimal"),  # odd length
        (f"{KEY_FILE_HEADER} {K1.hex()[:-2]}", "must be 32 bytes"),
        (f"{KEY_FILE_HEADER} {K1.hex()}00", "must be 32 bytes"),
        (f"{KEY_FILE_HEADER} ", "not a lanchat key file"),
    ],
)
def test_key_file_parse_errors_are_config_errors(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_key_text(text, "team.key")


def test_unreadable_key_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read key file"):
        read_key_file(tmp_path / "missing.key")
    with pytest.raises(ConfigError, match="cannot read key file"):
        read_key_file(tmp_path)  # a directory
    good = tmp_path / "good.key"
    good.write_text(new_key_text())
    assert len(read_key_file(good)) == 32


def test_binary_key_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "binary.key"
    path.write_bytes(b"\xff\xfe" + K1)
    with pytest.raises(ConfigError):
        read_key_file(path)


def test_binary_key_file_on_the_command_line_is_one_error_line(
    tmp_path: Path, lo_port: int
) -> None:
    path = tmp_path / "binary.key"
    path.write_bytes(b"\xff\xfe" + K1)
    argv = ["peers", "--wait", "0.1", "--interface", "lo", "--port", str(lo_port)]
    result = CliRunner().invoke(cli, [*argv, "--key-file", str(path)])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert result.stderr.startswith("lanchat: ") and result.stderr.count("\n") == 1


def test_keygen_writes_a_private_key_file_and_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "team.key"
    runner = CliRunner()
    old_umask = os.umask(0)  # even with a permissive umask the file is private
    try:
        result = runner.invoke(cli, ["keygen", str(path)])
    finally:
        os.umask(old_umask)
    assert result.exit_code == 0, result.output
    assert str(path) in result.stdout
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = read_key_file(path)

    again = runner.invoke(cli, ["keygen", str(path)])
    assert again.exit_code == 1
    assert "exists" in again.stderr and "--force" in again.stderr
    assert read_key_file(path) == key  # untouched

    path.chmod(0o644)
    forced = runner.invoke(cli, ["keygen", "--force", str(path)])
    assert forced.exit_code == 0, forced.output
    assert read_key_file(path) != key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_passphrase_key_is_the_scrypt_of_protocol_9_1_and_its_cost_is_printed() -> None:
    passphrase = "correct horse battery"
    started = time.perf_counter()
    key = key_from_passphrase(passphrase, DEFAULT_GROUP, DEFAULT_PORT)
    elapsed = time.perf_counter() - started
    print(f"scrypt N=2**17 r=8 p=1 key derivation: {elapsed:.3f} s")
    salt = f"lanchat v1 group {DEFAULT_GROUP}:{DEFAULT_PORT}".encode()
    expected = hashlib.scrypt(
        passphrase.encode(), salt=salt, n=2**17, r=8, p=1, maxmem=256 * 2**20, dklen=32
    )
    assert key == expected


def test_passphrase_gives_one_key_per_group_and_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lanchat.seal, "SCRYPT_N", 2**10)  # same construction, cheaper
    phrase = "correct horse battery"
    key = key_from_passphrase(phrase, DEFAULT_GROUP, DEFAULT_PORT)
    assert len(key) == 32
    assert key_from_passphrase(phrase, DEFAULT_GROUP, DEFAULT_PORT) == key
    assert key_from_passphrase(phrase, DEFAULT_GROUP, DEFAULT_PORT + 1) != key
    assert key_from_passphrase(phrase, "239.255.76.68", DEFAULT_PORT) != key
    assert key_from_passphrase(phrase + "!", DEFAULT_GROUP, DEFAULT_PORT) != key
    assert len(key_from_passphrase("8 chars.", DEFAULT_GROUP, DEFAULT_PORT)) == 32


@pytest.mark.parametrize("phrase", ["", "short", "7 chars"])
def test_too_short_passphrase_is_a_config_error(phrase: str) -> None:
    with pytest.raises(ConfigError, match="too short"):
        key_from_passphrase(phrase, DEFAULT_GROUP, DEFAULT_PORT)


@pytest.mark.parametrize("keys", [(), (K1[:31],), (K1, K2 + b"\x00")])
def test_key_ring_refuses_no_key_and_wrong_lengths(keys: tuple[bytes, ...]) -> None:
    with pytest.raises(ConfigError):
        KeyRing(keys)


# ------------------------------------------------------------------------ CLI

_WARNING = "a passphrase on the command line is visible"


def _peers_argv(port: int) -> list[str]:
    return ["peers", "--wait", "0.1", "--interface", "lo", "--port", str(port)]


def test_passphrase_on_the_command_line_warns_on_stderr(
    lo_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lanchat.seal, "SCRYPT_N", 2**10)
    monkeypatch.delenv("LANCHAT_KEY", raising=False)
    result = CliRunner().invoke(cli, [*_peers_argv(lo_port), "--key", "correct horse battery"])
    assert result.exit_code == 0, result.output
    assert result.stderr.count(_WARNING) == 1
    assert _WARNING not in result.stdout


def test_passphrase_from_the_environment_does_not_warn(
    lo_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lanchat.seal, "SCRYPT_N", 2**10)
    result = CliRunner().invoke(
        cli, _peers_argv(lo_port), env={"LANCHAT_KEY": "correct horse battery"}
    )
    assert result.exit_code == 0, result.output
    assert _WARNING not in result.output
    assert "no peers found" in result.stderr  # it did run


def test_too_short_passphrase_on_the_cli_is_one_error_line(
    lo_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = CliRunner().invoke(cli, _peers_argv(lo_port), env={"LANCHAT_KEY": "short"})
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "lanchat: passphrase is too short (at least 8 characters)"
    ]
