"""The wire codec: golden bytes, round trips, the fuzz invariant and every rejection.

Invariant (PROTOCOL.md section 4): for any bytes, `decode()` returns a message
or raises `DecodeError`, nothing else; what it accepts re-encodes to itself.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lanchat.codec
from lanchat.codec import (
    HEADER,
    KNOWN_BYTES,
    KNOWN_PREFIX,
    MAX_DATAGRAM,
    MAX_INTERVAL_MS,
    MAX_KNOWN,
    MAX_PLAIN,
    PAIR_ACCEPT,
    PAIR_CONFIRM,
    PAIR_PROPOSE,
    PAIR_WITHDRAW,
    QUERY_SIZE,
    T_DIRECT,
    T_NOTICE,
    UNPAIR_ABORT,
    UNPAIR_END,
    Ack,
    Beat,
    Bye,
    Chat,
    DecodeError,
    Direct,
    Message,
    Notice,
    Pair,
    Ping,
    Pong,
    Query,
    Seek,
    Unpair,
    check_nick,
    check_room,
    check_status_text,
    check_text,
    decode,
    encode,
    truncate_utf8,
)
from lanchat.errors import ConfigError, LanchatError

ALICE = bytes.fromhex("a11ce0000000a11c")
ALICE_INSTANCE = 0x019B76DAA8004C43
BOB = bytes.fromhex("b0b0000000000b0b")
BOB_INSTANCE = 0x019B76DAACD20042
CAROL = bytes.fromhex("ca401000000ca401")
U64_MAX = 2**64 - 1

MESSAGE_TYPES = (Beat, Query, Bye, Chat, Notice, Direct, Ack, Ping, Pong, Seek, Pair, Unpair)
# Every reason decode() may give; "short query" is an unpadded (amplifying) Query.
REASONS = {
    "oversized", "short", "foreign", "version", "sealed", "malformed", "not a message",
    "missing fields", "bad integer", "bad peer id", "bad string", "bad status",
    "bad rooms", "bad ack kind", "unknown type", "short query", "bad interval",
    "bad known list", "short recall",
}  # fmt: skip

# The examples of PROTOCOL.md section 3; each Query is followed by zero padding
# up to QUERY_SIZE, the second one listing the id prefixes of bob and carol.
QUERY_PREFIX = bytes.fromhex("4c4301009602c408a11ce0000000a11ccf019b76daa8004c43cd9c41c400c50327")
QUERY_KNOWN_PREFIX = bytes.fromhex(
    "4c4301009602c408a11ce0000000a11ccf019b76daa8004c43cd9c41c408b0b00000ca401000c5031f"
)
GOLDEN: list[tuple[Message, bytes]] = [
    (
        Beat(
            ALICE, ALICE_INSTANCE, "alice", "lab-pc", 40001, "online", "", ("lobby", "dev"), 7, 1000
        ),
        bytes.fromhex(
            "4c4301009b01c408a11ce0000000a11ccf019b76daa8004c43a5616c696365a66c61622d7063"
            "cd9c4100a092a56c6f626279a364657607cd03e8"
        ),
    ),
    (Query(ALICE, ALICE_INSTANCE, 40001), QUERY_PREFIX + bytes(0x0327)),
    (
        Query(ALICE, ALICE_INSTANCE, 40001, (BOB[:4], CAROL[:4])),
        QUERY_KNOWN_PREFIX + bytes(0x031F),
    ),
    (
        Bye(ALICE, ALICE_INSTANCE),
        bytes.fromhex("4c4301009303c408a11ce0000000a11ccf019b76daa8004c43"),
    ),
    (
        Chat(ALICE, ALICE_INSTANCE, 8, "alice", "lobby", "héllo"),
        bytes.fromhex(
            "4c4301009704c408a11ce0000000a11ccf019b76daa8004c4308a5616c696365a56c6f626279"
            "a668c3a96c6c6f"
        ),
    ),
    (
        Notice(ALICE, ALICE_INSTANCE, 9, "alice", "reboot at 18:00", 40001),
        bytes.fromhex(
            "4c4301009705c408a11ce0000000a11ccf019b76daa8004c4309a5616c696365af7265626f6f"
            "742061742031383a3030cd9c41"
        ),
    ),
    (
        Direct(ALICE, ALICE_INSTANCE, 1, "alice", "lunch?"),
        bytes.fromhex(
            "4c4301009606c408a11ce0000000a11ccf019b76daa8004c4301a5616c696365a66c756e63683f"
        ),
    ),
    (
        Ack(BOB, BOB_INSTANCE, T_DIRECT, 1, ALICE_INSTANCE),
        bytes.fromhex("4c4301009607c408b0b0000000000b0bcf019b76daacd200420601cf019b76daa8004c43"),
    ),
    (
        Ping(ALICE, ALICE_INSTANCE, 3),
        bytes.fromhex("4c4301009408c408a11ce0000000a11ccf019b76daa8004c4303"),
    ),
    (
        Pong(BOB, BOB_INSTANCE, 3),
        bytes.fromhex("4c4301009409c408b0b0000000000b0bcf019b76daacd2004203"),
    ),
    # Random pairing (PROTOCOL.md section 12).
    (
        Seek(ALICE, ALICE_INSTANCE, 1),
        bytes.fromhex("4c430100940ec408a11ce0000000a11ccf019b76daa8004c4301"),
    ),
    (
        Pair(ALICE, ALICE_INSTANCE, PAIR_PROPOSE, 1, 1),
        bytes.fromhex("4c430100960fc408a11ce0000000a11ccf019b76daa8004c43000101"),
    ),
    (
        Unpair(BOB, BOB_INSTANCE, ALICE, 1, UNPAIR_END),
        bytes.fromhex("4c4301009610c408b0b0000000000b0bcf019b76daacd20042c408a11ce0000000a11c0100"),
    ),
]
GOLDEN_IDS = [
    type(msg).__name__ + ("-known" if getattr(msg, "known", ()) else "") for msg, _ in GOLDEN
]
GOLDEN_DATA = [data for _, data in GOLDEN]


def dgram(*body: Any, header: bytes = HEADER) -> bytes:
    """A datagram with `body` packed as the msgpack array."""
    return header + bytes(msgpack.packb(list(body), use_bin_type=True))


def _prefixes(count: int) -> tuple[bytes, ...]:
    """`count` distinct known-list entries."""
    return tuple(i.to_bytes(KNOWN_PREFIX, "big") for i in range(count))


M = TypeVar("M", Beat, Query, Bye, Chat, Notice, Direct, Ack, Ping, Pong, Seek, Pair, Unpair)


def decode_as(kind: type[M], data: bytes) -> M:
    msg = decode(data)
    assert isinstance(msg, kind)
    return msg


def reason_of(data: bytes) -> str:
    with pytest.raises(DecodeError) as info:
        decode(data)
    return info.value.reason


def check_invariant(data: bytes) -> Message | None:
    """decode() gives a message that re-encodes to itself, or DecodeError with a known reason."""
    try:
        msg = decode(data)
    except DecodeError as exc:
        assert exc.reason in REASONS
        return None
    assert type(msg) in MESSAGE_TYPES
    assert decode(encode(msg)) == msg
    return msg


# ------------------------------------------------------------------ golden bytes


@pytest.mark.parametrize(("msg", "data"), GOLDEN, ids=GOLDEN_IDS)
def test_golden_bytes(msg: Message, data: bytes) -> None:
    assert encode(msg) == data
    assert decode(data) == msg


def test_golden_cover_every_type() -> None:
    assert {type(msg) for msg, _ in GOLDEN} == set(MESSAGE_TYPES)
    assert len(set(GOLDEN_IDS)) == len(GOLDEN)
    queries = [data for msg, data in GOLDEN if isinstance(msg, Query)]
    assert [len(data) for data in queries] == [QUERY_SIZE, QUERY_SIZE]


@pytest.mark.parametrize(("msg", "data"), GOLDEN, ids=GOLDEN_IDS)
def test_protocol_md_shows_the_golden_bytes(msg: Message, data: bytes) -> None:
    text = (Path(lanchat.codec.__file__).parent / "PROTOCOL.md").read_text("utf-8")
    joined = "".join(line.strip() for line in text.splitlines())  # unwrap hex lines
    if isinstance(msg, Query):
        prefix = data.rstrip(b"\x00")  # ends with the padding's length, never 0
        pad = len(data) - len(prefix)
        assert f"{prefix.hex()}followed by {pad} (0x{pad:04x}) zero bytes" in joined
    else:
        assert re.search(data.hex() + "=", joined)


# ---------------------------------------------------------------- valid messages

_ids = st.binary(min_size=8, max_size=8)
_u64 = st.integers(0, U64_MAX)
_counters = st.integers(1, U64_MAX)
_ports = st.integers(1, 65535)
_name_chars = st.characters(blacklist_categories=("C", "Z"))
_names = st.text(_name_chars, min_size=1, max_size=32).map(lambda s: truncate_utf8(s, 32))
_text_chars = st.characters(blacklist_categories=["Cs"])
_known = st.lists(st.binary(min_size=KNOWN_PREFIX, max_size=KNOWN_PREFIX), max_size=MAX_KNOWN)


def _texts(max_bytes: int) -> st.SearchStrategy[str]:
    return st.text(_text_chars, max_size=max_bytes).map(lambda s: truncate_utf8(s, max_bytes))


messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(
        Beat, _ids, _u64, _names, _texts(64), _ports, st.sampled_from(["online", "away"]),
        _texts(64), st.lists(_names, max_size=16).map(tuple), _u64, st.integers(1, MAX_INTERVAL_MS),
    ),
    st.builds(Query, _ids, _u64, _ports, _known.map(tuple)),
    st.builds(Bye, _ids, _u64),
    st.builds(Chat, _ids, _u64, _counters, _names, _names, _texts(1000)),
    st.builds(Notice, _ids, _u64, _counters, _names, _texts(1000), _ports),
    st.builds(Direct, _ids, _u64, _counters, _names, _texts(1000)),
    st.builds(Ack, _ids, _u64, st.sampled_from([T_NOTICE, T_DIRECT]), _counters, _u64),
    st.builds(Ping, _ids, _u64, _u64),
    st.builds(Pong, _ids, _u64, _u64),
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(messages)
def test_round_trip(msg: Message) -> None:
    data = encode(msg)
    assert decode(data) == msg
    assert len(data) <= MAX_PLAIN
    if isinstance(msg, Query):
        assert len(data) == QUERY_SIZE or _no_exact_padding(msg)


@settings(max_examples=100, deadline=None)
@given(messages, st.lists(st.one_of(st.integers(0, 9), st.text(max_size=8)), min_size=1))
def test_extra_trailing_fields_are_ignored(msg: Message, extra: list[object]) -> None:
    body = msgpack.unpackb(encode(msg)[4:])
    assert decode(dgram(*body, *extra)) == msg


# ---------------------------------------------------------------- fuzz invariant

_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), U64_MAX),
    st.floats(),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=12)),
)
_objects = st.recursive(
    _leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(st.one_of(st.text(max_size=6), st.integers(0, 9)), children, max_size=4),
    ),
    max_leaves=30,
)
# Arrays that look like messages, so the per-field checks are reached.
_fields = st.one_of(_leaves, _names, st.integers(0, 70000), st.lists(_names, max_size=18))
_shaped = st.tuples(
    st.integers(0, 10), st.one_of(_ids, _leaves), st.one_of(_u64, _leaves), st.lists(_fields)
).map(lambda t: [t[0], t[1], t[2], *t[3]])


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=MAX_DATAGRAM + 100))
def test_fuzz_any_bytes(data: bytes) -> None:
    check_invariant(data)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=MAX_DATAGRAM))
def test_fuzz_any_bytes_behind_header(data: bytes) -> None:
    check_invariant(HEADER + data)


@settings(max_examples=500, deadline=None)
@given(st.one_of(_objects, _shaped))
def test_fuzz_any_msgpack_behind_header(obj: object) -> None:
    check_invariant(HEADER + msgpack.packb(obj, use_bin_type=True))


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(GOLDEN_DATA),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_fuzz_mutated_golden(data: bytes, edits: list[tuple[int, int]]) -> None:
    mutated = bytearray(data)
    for position, value in edits:
        mutated[position % len(mutated)] = value
    check_invariant(bytes(mutated))


@pytest.mark.parametrize(("msg", "data"), GOLDEN, ids=GOLDEN_IDS)
def test_every_truncation_is_rejected(msg: Message, data: bytes) -> None:
    for length in range(len(data)):
        assert reason_of(data[:length]) == ("short" if length < 5 else "malformed")


def test_every_single_byte_flip() -> None:
    accepted = 0
    for data in GOLDEN_DATA:
        # Beyond a Query's prefix there are only padding bytes: flip two of them.
        size = len(data.rstrip(b"\x00")) + 2 if len(data) == QUERY_SIZE else len(data)
        for position in range(size):
            for xor in range(1, 256):
                mutated = bytearray(data)
                mutated[position] ^= xor
                accepted += check_invariant(bytes(mutated)) is not None
    assert accepted > 0  # some flips (ids, integers, letters) still make valid messages


# ------------------------------------------------------------------- rejections

_BEAT = [1, ALICE, 1, "alice", "host", 40001, 0, "", ["lobby"], 0, 1000]
_CHAT = [4, ALICE, 1, 1, "alice", "lobby", "hi"]


def _beat(index: int, value: object) -> bytes:
    body = list(_BEAT)
    body[index] = value
    return dgram(*body)


def _chat(index: int, value: object) -> bytes:
    body = list(_CHAT)
    body[index] = value
    return dgram(*body)


def _query(known: object = b"", uport: object = 40001) -> bytes:
    """A Query datagram with these fields, padded to QUERY_SIZE (or one byte more)."""
    body = [2, ALICE, 1, uport, known]
    return dgram(*body, bytes(max(0, QUERY_SIZE - len(dgram(*body, b"")))))


def test_fixtures_are_valid() -> None:
    assert isinstance(decode(dgram(*_BEAT)), Beat)
    assert isinstance(decode(dgram(*_CHAT)), Chat)
    assert decode(_query()) == Query(ALICE, 1, 40001)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(b"XX\x01\x00" + dgram(*_CHAT)[4:], "foreign", id="bad-magic"),
        pytest.param(b"lc\x01\x00" + dgram(*_CHAT)[4:], "foreign", id="lowercase-magic"),
        pytest.param(dgram(*_CHAT, header=b"LC\x02\x00"), "version", id="version-2"),
        pytest.param(dgram(*_CHAT, header=b"LC\x00\x00"), "version", id="version-0"),
        pytest.param(dgram(*_CHAT, header=b"LC\x01\x01"), "sealed", id="sealed"),
        pytest.param(dgram(*_CHAT, header=b"LC\x01\xff"), "sealed", id="sealed-all-flags"),
        pytest.param(b"", "short", id="empty"),
        pytest.param(HEADER, "short", id="header-only"),
        pytest.param(dgram(*_CHAT) + b"\x00", "malformed", id="trailing-bytes"),
        pytest.param(HEADER + b"\xc1", "malformed", id="never-used-byte"),
        pytest.param(HEADER + b"\x97\x04\xc4\x08", "malformed", id="truncated-msgpack"),
        pytest.param(HEADER + msgpack.packb({"type": 4}), "not a message", id="map-body"),
        pytest.param(HEADER + msgpack.packb(4), "not a message", id="int-body"),
        pytest.param(dgram(3, ALICE), "not a message", id="two-elements"),
        pytest.param(dgram(*_BEAT[:10]), "missing fields", id="beat-10-fields"),
        pytest.param(dgram(*_CHAT[:6]), "missing fields", id="chat-6-fields"),
        pytest.param(dgram(8, ALICE, 1), "missing fields", id="ping-no-token"),
        pytest.param(dgram(5, ALICE, 1, 1, "a", "t"), "missing fields", id="notice-no-uport"),
        # The Query of lanchat 0.1 had no known list: [2, sender, instance, uport, pad].
        pytest.param(
            dgram(2, ALICE, 1, 40001, bytes(QUERY_SIZE)), "missing fields", id="query-no-known"
        ),
    ],
)
def test_rejected_framing(data: bytes, reason: str) -> None:
    assert reason_of(data) == reason


def test_reserved_flag_bits_are_ignored() -> None:
    assert decode(dgram(*_CHAT, header=b"LC\x01\xfe")) == decode(dgram(*_CHAT))


def test_size_limit() -> None:
    pong = [9, ALICE, 1, 3]
    base = len(dgram(*pong, b""))  # a trailing bin field pads to any size (bin16 above 255)
    exact = dgram(*pong, bytes(MAX_DATAGRAM - base - 1))
    assert len(exact) == MAX_DATAGRAM
    assert decode(exact) == Pong(ALICE, 1, 3)
    assert reason_of(exact + b"\x00") == "oversized"
    assert reason_of(dgram(*pong, bytes(MAX_DATAGRAM - base))) == "oversized"
    assert reason_of(bytes(100_000)) == "oversized"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(_chat(3, "1"), "bad integer", id="str-for-int"),
        pytest.param(_chat(3, 1.0), "bad integer", id="float-for-int"),
        pytest.param(_chat(3, True), "bad integer", id="bool-for-int"),
        pytest.param(_chat(3, None), "bad integer", id="nil-for-int"),
        pytest.param(_chat(3, b"\x01"), "bad integer", id="bin-for-int"),
        pytest.param(_chat(3, -1), "bad integer", id="negative-seq"),
        pytest.param(_chat(2, -1), "bad integer", id="negative-instance"),
        pytest.param(_chat(2, -(2**63)), "bad integer", id="int64-min-instance"),
        pytest.param(_chat(3, 0), "bad integer", id="seq-0"),
        pytest.param(_beat(5, 0), "bad integer", id="beat-port-0"),
        pytest.param(_beat(5, 65536), "bad integer", id="beat-port-65536"),
        pytest.param(_query(uport=0), "bad integer", id="query-port-0"),
        pytest.param(dgram(5, ALICE, 1, 1, "a", "t", 0), "bad integer", id="notice-port-0"),
        pytest.param(_beat(10, 0), "bad integer", id="interval-0"),
        pytest.param(_beat(10, 2**32), "bad integer", id="interval-2**32"),
        pytest.param(_beat(10, MAX_INTERVAL_MS + 1), "bad interval", id="interval-over-an-hour"),
        pytest.param(_beat(10, 2**32 - 1), "bad interval", id="interval-u32-max"),
        pytest.param(_beat(6, 2), "bad status", id="status-2"),
        pytest.param(_beat(6, 256), "bad integer", id="status-256"),
        pytest.param(_chat(1, ALICE[:7]), "bad peer id", id="id-7-bytes"),
        pytest.param(_chat(1, ALICE + b"\x00"), "bad peer id", id="id-9-bytes"),
        pytest.param(_chat(1, "a11ce000"), "bad peer id", id="id-as-str"),
        pytest.param(_chat(4, "al ice"), "bad string", id="nick-space"),
        pytest.param(_chat(4, "al\tice"), "bad string", id="nick-tab"),
        pytest.param(_chat(4, "alice\x00"), "bad string", id="nick-nul"),
        pytest.param(_chat(4, "al\x1bice"), "bad string", id="nick-escape"),
        pytest.param(_chat(4, "al\u200bice"), "bad string", id="nick-zero-width"),
        pytest.param(_chat(4, "al\u00a0ice"), "bad string", id="nick-nbsp"),
        pytest.param(_chat(4, "\u2028"), "bad string", id="nick-line-separator"),
        pytest.param(_chat(4, "\ue000"), "bad string", id="nick-private-use"),
        pytest.param(_chat(4, "al\u00adice"), "bad string", id="nick-soft-hyphen"),
        pytest.param(_chat(4, "\u0378"), "bad string", id="nick-unassigned"),
        pytest.param(_chat(4, "al\u3000ice"), "bad string", id="nick-ideographic-space"),
        pytest.param(_chat(4, ""), "bad string", id="nick-empty"),
        pytest.param(_chat(4, "n" * 33), "bad string", id="nick-33-bytes"),
        pytest.param(_chat(4, "é" * 17), "bad string", id="nick-34-bytes-17-chars"),
        pytest.param(_chat(4, b"alice"), "bad string", id="nick-as-bin"),
        pytest.param(_chat(5, "r" * 33), "bad string", id="room-33-bytes"),
        pytest.param(_chat(6, "x" * 1001), "bad string", id="text-1001-bytes"),
        pytest.param(_beat(4, "h" * 65), "bad string", id="host-65-bytes"),
        pytest.param(_beat(7, "s" * 65), "bad string", id="status-text-65-bytes"),
        pytest.param(_beat(8, ["r"] * 17), "bad rooms", id="17-rooms"),
        pytest.param(_beat(8, "lobby"), "bad rooms", id="rooms-as-str"),
        pytest.param(_beat(8, ["lob by"]), "bad string", id="room-with-space"),
        pytest.param(_beat(8, [1]), "bad string", id="room-as-int"),
        pytest.param(dgram(0, ALICE, 1), "unknown type", id="type-0"),
        pytest.param(dgram(99, ALICE, 1, 1), "unknown type", id="type-99"),
        pytest.param(dgram(255, ALICE, 1, 1, 1, 1), "unknown type", id="type-255"),
        pytest.param(dgram("chat", ALICE, 1, 1), "unknown type", id="type-str"),
        pytest.param(dgram(7, ALICE, 1, 4, 1, 1), "bad ack kind", id="ack-kind-4"),
        pytest.param(dgram(7, ALICE, 1, 7, 1, 1), "bad ack kind", id="ack-kind-ack"),
        pytest.param(dgram(7, ALICE, 1, 256, 1, 1), "bad integer", id="ack-kind-256"),
        pytest.param(dgram(7, ALICE, 1, 6, 0, 1), "bad integer", id="ack-ref-0"),
    ],
)
def test_rejected_fields(data: bytes, reason: str) -> None:
    assert reason_of(data) == reason


@pytest.mark.parametrize(
    "known",
    [
        pytest.param("abcd", id="str"),
        pytest.param(0, id="int"),
        pytest.param(None, id="nil"),
        pytest.param([b"abcd"], id="array-of-bin"),
        pytest.param(b"abc", id="3-bytes"),
        pytest.param(b"abcde", id="5-bytes"),
        pytest.param(bytes(KNOWN_BYTES - 1), id="599-bytes"),
        pytest.param(bytes(KNOWN_BYTES + KNOWN_PREFIX), id="604-bytes-151-prefixes"),
    ],
)
def test_rejected_known_lists(known: object) -> None:
    data = _query(known)
    assert len(data) >= QUERY_SIZE
    assert reason_of(data) == "bad known list"


def test_known_list_limits_are_inclusive() -> None:
    prefixes = _prefixes(MAX_KNOWN)
    assert decode(_query(b"".join(prefixes))) == Query(ALICE, 1, 40001, prefixes)
    assert decode(_query(b"")) == Query(ALICE, 1, 40001, ())
    assert decode_as(Query, _query(BOB[:4])).known == (BOB[:4],)


def test_encode_cuts_known_ids_to_prefixes() -> None:
    """The node passes whole peer ids; only their prefixes go on the wire."""
    query = decode_as(Query, encode(Query(ALICE, 1, 40001, (BOB, CAROL))))
    assert query.known == (BOB[:KNOWN_PREFIX], CAROL[:KNOWN_PREFIX])
    many = tuple(i.to_bytes(8, "big") for i in range(MAX_KNOWN + 10))
    assert len(decode_as(Query, encode(Query(ALICE, 1, 40001, many))).known) == MAX_KNOWN


def _raw_chat(text_field: bytes) -> bytes:
    """A Chat whose text is the raw msgpack `text_field` (to carry invalid UTF-8)."""
    head = bytes(msgpack.packb(_CHAT[:6], use_bin_type=True))
    return HEADER + bytes([head[0] + 1]) + head[1:] + text_field


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"\xa2\xc3\x28", id="invalid-continuation"),
        pytest.param(b"\xa1\xff", id="byte-ff"),
        pytest.param(b"\xa3\xed\xa0\x80", id="surrogate"),
        pytest.param(b"\xa2\xc0\xaf", id="overlong"),
        pytest.param(b"\xa2\xe2\x82", id="cut-character"),
    ],
)
def test_bad_utf8_is_rejected(raw: bytes) -> None:
    assert decode_as(Chat, _raw_chat(b"\xa2hi")).text == "hi"
    assert reason_of(_raw_chat(raw)) == "malformed"


def test_integer_limits_are_inclusive() -> None:
    beat = decode(dgram(1, ALICE, U64_MAX, *_BEAT[3:9], U64_MAX, MAX_INTERVAL_MS))
    assert isinstance(beat, Beat)
    assert (beat.instance, beat.last_seq, beat.interval_ms) == (U64_MAX, U64_MAX, MAX_INTERVAL_MS)
    assert decode_as(Beat, _beat(5, 65535)).uport == 65535
    assert decode_as(Beat, _beat(5, 1)).uport == 1
    # Non-minimal integer forms are accepted: uint64 and int8 for the token 5.
    assert decode(HEADER + b"\x94\x08\xc4\x08" + ALICE + b"\x01\xcf" + (5).to_bytes(8, "big")) == (
        Ping(ALICE, 1, 5)
    )
    assert decode(HEADER + b"\x94\x08\xc4\x08" + ALICE + b"\x01\xd0\x05") == Ping(ALICE, 1, 5)


def test_limits_are_inclusive_for_strings_and_rooms() -> None:
    rooms = [f"room{i:02}" + "r" * 26 for i in range(16)]
    beat = decode(dgram(1, ALICE, 1, "n" * 32, "h" * 64, 1, 1, "s" * 64, rooms, 0, 1))
    assert isinstance(beat, Beat)
    assert beat.rooms == tuple(rooms)
    assert beat.status == "away"
    assert decode_as(Chat, _chat(4, "é" * 16)).nick == "é" * 16
    assert decode_as(Chat, _chat(6, "é" * 500)).text == "é" * 500


def test_text_fields_accept_what_names_refuse() -> None:
    # Empty and control characters are legal in texts; the display must escape them.
    assert decode_as(Chat, _chat(6, "")).text == ""
    assert decode_as(Chat, _chat(6, "a b\n\x1b[2J")).text == "a b\n\x1b[2J"
    assert decode_as(Beat, _beat(4, "")).host == ""


def test_deep_nesting() -> None:
    assert reason_of(HEADER + b"\x91" * 10_000 + b"\x90") == "oversized"
    assert reason_of(HEADER + b"\x91" * 1_190 + b"\x90") == "malformed"
    pong = HEADER + b"\x95\x09\xc4\x08" + ALICE + b"\x01\x03"
    assert reason_of(pong + b"\x91" * 1_100 + b"\x90") == "malformed"  # msgpack's depth limit
    assert decode(pong + b"\x91" * 100 + b"\x90") == Pong(ALICE, 1, 3)  # an ignored extra field


@pytest.mark.parametrize(
    ("ext", "accepted"),
    [
        pytest.param(b"\xd4\x05\x00", True, id="ext-5"),
        pytest.param(b"\xd6\xff\x00\x00\x00\x01", True, id="timestamp-32"),
        pytest.param(b"\xd4\xff\x00", False, id="timestamp-bad-length-1"),
        pytest.param(b"\xc7\x00\xff", False, id="timestamp-bad-length-0"),
    ],
)
def test_extension_types_in_an_extra_field(ext: bytes, accepted: bool) -> None:
    pong = HEADER + b"\x95\x09\xc4\x08" + ALICE + b"\x01\x03" + ext
    if accepted:
        assert decode(pong) == Pong(ALICE, 1, 3)
    else:
        assert reason_of(pong) == "malformed"


def test_maps_need_string_keys() -> None:
    assert decode(dgram(9, ALICE, 1, 3, {"k": 1})) == Pong(ALICE, 1, 3)
    assert reason_of(dgram(9, ALICE, 1, 3, {1: 1})) == "malformed"


# ------------------------------------------------------------------ protocol rules


def test_query_shorter_than_query_size_is_rejected() -> None:
    """No amplification needs the receiver to check the padding (PROTOCOL.md 3.2).

    A short query would be answered with a Beat of up to 756 bytes.
    """
    padded = encode(Query(ALICE, 1, 40001))
    assert decode(padded) == Query(ALICE, 1, 40001)
    assert decode(dgram(2, ALICE, 1, 40001, b"", bytes(QUERY_SIZE))) == Query(ALICE, 1, 40001)
    base = len(dgram(2, ALICE, 1, 40001, b"", b""))
    one_short = dgram(2, ALICE, 1, 40001, b"", bytes(QUERY_SIZE - base - 2))  # bin16: +1
    assert len(one_short) == QUERY_SIZE - 1
    assert reason_of(one_short) == "short query"
    assert reason_of(dgram(2, ALICE, 1, 40001, b"", b"")) == "short query"
    assert reason_of(dgram(2, ALICE, 1, 40001)) == "short query"  # checked before the fields
    known = BOB[:4] * MAX_KNOWN  # a long known list still needs the padding
    assert reason_of(dgram(2, ALICE, 1, 40001, known, b"")) == "short query"


def test_type_number_must_be_an_integer() -> None:
    """Like every other integer field, the type is a msgpack int, not a float or bool."""
    assert reason_of(dgram(2.0, ALICE, 1, 40001, b"", bytes(QUERY_SIZE))) == "unknown type"
    assert reason_of(dgram(True, *_BEAT[1:])) == "unknown type"


# ------------------------------------------------------------------ sizes, budget


def _worst_cases() -> list[Message]:
    peer, big = b"\xff" * 8, U64_MAX
    nick, text = "n" * 32, "x" * 1000
    rooms = tuple(f"r{i:02}" + "r" * 29 for i in range(16))
    known = _prefixes(MAX_KNOWN)
    return [
        Beat(peer, big, nick, "h" * 64, 65535, "away", "s" * 64, rooms, big, MAX_INTERVAL_MS),
        Query(peer, big, 65535, known),
        Bye(peer, big),
        Chat(peer, big, big, nick, "r" * 32, text),
        Notice(peer, big, big, nick, text, 65535),
        Direct(peer, big, big, nick, text),
        Ack(peer, big, T_DIRECT, big, big),
        Ping(peer, big, big),
        Pong(peer, big, big),
    ]


# The table of PROTOCOL.md section 7.
WORST_SIZES = {
    Beat: 756, Query: 840, Bye: 25, Chat: 1105, Notice: 1074,
    Direct: 1071, Ack: 44, Ping: 34, Pong: 34,
}  # fmt: skip


@pytest.mark.parametrize("msg", _worst_cases(), ids=lambda msg: type(msg).__name__)
def test_worst_case_sizes(msg: Message) -> None:
    data = encode(msg)
    assert decode(data) == msg
    assert len(data) == WORST_SIZES[type(msg)]
    assert len(data) <= MAX_PLAIN
    if isinstance(msg, Beat):
        assert len(data) <= QUERY_SIZE  # an answer is never larger than its query


def test_four_byte_characters_cost_the_same() -> None:
    worst = _worst_cases()[0]
    assert isinstance(worst, Beat)
    emoji = Beat(
        worst.sender, worst.instance, "\U0001f600" * 8, "\U0001f600" * 16, 65535, "away",
        "\U0001f600" * 16, tuple("\U0001f600" * 8 for _ in range(16)), U64_MAX, MAX_INTERVAL_MS,
    )  # fmt: skip
    assert len(encode(emoji)) == WORST_SIZES[Beat]


def _no_exact_padding(msg: Query) -> bool:
    """True if no padding field can make this Query exactly QUERY_SIZE bytes.

    With 582 bytes before the padding field, a bin8 pad reaches 839 bytes at most
    and a bin16 pad 841 at least; encode() then sends 841 bytes (receivers accept
    it). It takes a uport in 128..255 (or an instance in 128..255 and a uport below
    128) and 138..140 known prefixes: a real node's 64-bit instance and ephemeral
    port never hit it.
    """
    known = b"".join(msg.known)
    return len(dgram(2, msg.sender, msg.instance, msg.uport, known)) == QUERY_SIZE - 258


# Every msgpack width of instance and uport; known-list lengths around the bin8/bin16
# switch of the list (63/64 prefixes) and of the padding (137..141 prefixes).
_KNOWN_COUNTS = [0, 1, 2, 63, 64, 100, *range(137, 142), MAX_KNOWN]


@pytest.mark.parametrize("instance", [0, 1, 127, 128, 2**16, 2**32, U64_MAX])
@pytest.mark.parametrize("uport", [1, 127, 128, 255, 256, 65535])
def test_query_is_exactly_query_size(instance: int, uport: int) -> None:
    for count in _KNOWN_COUNTS:
        msg = Query(ALICE, instance, uport, _prefixes(count))
        data = encode(msg)
        assert len(data) == QUERY_SIZE, count
        if not _no_exact_padding(msg):  # see test_query_size_corner_case
            assert decode(data) == msg


def test_real_queries_are_exactly_query_size() -> None:
    # A node's instance is (unix_ms mod 2**48) << 16 | random: a uint64 in msgpack.
    for count in range(MAX_KNOWN + 1):
        msg = Query(ALICE, ALICE_INSTANCE, 40001, _prefixes(count))
        assert not _no_exact_padding(msg)
        assert len(encode(msg)) == QUERY_SIZE


@pytest.mark.parametrize(
    ("instance", "uport", "count"),
    [(0, 128, 140), (128, 1, 140), (2**16, 255, 139), (2**32 - 1, 128, 139), (U64_MAX, 200, 138)],
)
def test_query_size_corner_case(instance: int, uport: int, count: int) -> None:
    # Here a pad of 257 bytes would be needed, which msgpack cannot write (bin8
    # holds 255, bin16 adds a header byte): one known prefix is left out instead.
    msg = Query(ALICE, instance, uport, _prefixes(count))
    assert _no_exact_padding(msg)
    data = encode(msg)
    assert len(data) == QUERY_SIZE
    assert decode(data) == Query(ALICE, instance, uport, _prefixes(count - 1))


def test_chat_with_longest_text_fits() -> None:
    data = encode(Chat(ALICE, 1, 1, "alice", "lobby", check_text("x" * 1000)))
    assert len(data) < MAX_PLAIN
    with pytest.raises(ConfigError, match="too large"):
        encode(Chat(ALICE, 1, 1, "alice", "lobby", "x" * MAX_PLAIN))


# ------------------------------------------------------------- local validation


@pytest.mark.parametrize(
    "nick",
    [
        "", "a b", "tab\t", "new\nline", "nul\x00", "zw\u200bsp", "n" * 33, "é" * 17,
        "nb\u00a0sp", "soft\u00adhyphen", "\u0378", "\ue000", "\u3000", "\u2029",
    ],
)  # fmt: skip
def test_check_nick_refuses(nick: str) -> None:
    with pytest.raises(ConfigError):
        check_nick(nick)


@settings(max_examples=300, deadline=None)
@given(st.characters())
def test_names_refuse_exactly_categories_c_and_z(char: str) -> None:
    """isprintable() and "no ASCII space" is the category rule of PROTOCOL.md section 2."""
    refused = unicodedata.category(char)[0] in "CZ"
    try:
        check_nick("a" + char)
    except ConfigError:
        assert refused
    else:
        assert not refused


def test_names_category_rule_holds_for_every_code_point() -> None:
    for code in range(0x110000):
        char = chr(code)
        printable = char.isprintable() and char != " "
        assert printable == (unicodedata.category(char)[0] not in "CZ"), hex(code)


@pytest.mark.parametrize("check", [check_nick, check_room, check_text, check_status_text])
def test_lone_surrogates_are_refused(check: Callable[[str], str]) -> None:
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        check("ab\ud800")


@pytest.mark.parametrize("nick", ["alice", "n" * 32, "é" * 16, "Zoë_2", "\U0001f600" * 8])
def test_check_nick_accepts(nick: str) -> None:
    assert check_nick(nick) == nick


def test_check_room() -> None:
    assert check_room("#dev") == "dev"
    assert check_room("dev") == "dev"
    assert check_room("##dev") == "#dev"  # only one '#' is dropped
    assert check_room("#" + "r" * 32) == "r" * 32
    for bad in ["#", "", "a b", "#a b", "r" * 33, "tab\t"]:
        with pytest.raises(ConfigError):
            check_room(bad)


def test_check_text() -> None:
    assert check_text("x" * 1000) == "x" * 1000
    assert check_text("two\nlines") == "two\nlines"
    for bad in ["", "   ", "\n", "x" * 1001, "é" * 501]:
        with pytest.raises(ConfigError):
            check_text(bad)


def test_config_error_is_the_lanchat_root_and_a_value_error() -> None:
    with pytest.raises(ConfigError) as info:
        check_nick("a b")
    assert isinstance(info.value, LanchatError)
    assert isinstance(info.value, ValueError)
    assert "spaces or control characters" in str(info.value)


def test_truncate_utf8_keeps_whole_characters() -> None:
    assert truncate_utf8("é" * 40, 63) == "é" * 31
    assert truncate_utf8("host", 64) == "host"
    assert len(truncate_utf8("\U0001f600" * 20, 64).encode()) == 64


# ------------------------------------------------------- random pairing (14-16)

# The other handshake steps of PROTOCOL.md section 12.2.
PAIR_STEPS_GOLDEN = [
    (
        Pair(BOB, BOB_INSTANCE, PAIR_ACCEPT, 1, 2),
        bytes.fromhex("4c430100960fc408b0b0000000000b0bcf019b76daacd20042010102"),
    ),
    (
        Pair(ALICE, ALICE_INSTANCE, PAIR_CONFIRM, 1, 1),
        bytes.fromhex("4c430100960fc408a11ce0000000a11ccf019b76daa8004c43020101"),
    ),
]


@pytest.mark.parametrize(("msg", "data"), PAIR_STEPS_GOLDEN, ids=["accept", "confirm"])
def test_pair_steps_golden_bytes(msg: Pair, data: bytes) -> None:
    assert encode(msg) == data
    assert decode(data) == msg
    text = (Path(lanchat.codec.__file__).parent / "PROTOCOL.md").read_text("utf-8")
    assert data.hex() + "=" in "".join(line.strip() for line in text.splitlines())


@pytest.mark.parametrize(
    "body",
    [
        [14, ALICE, 1, 0],  # seek_id starts at 1
        [14, ALICE, 1],  # no seek_id
        [15, ALICE, 1, PAIR_WITHDRAW + 1, 1, 1],  # no such step
        [15, ALICE, 1, -1, 1, 1],
        [15, ALICE, 1, PAIR_PROPOSE, 0, 1],  # pair_id starts at 1
        [15, ALICE, 1, PAIR_PROPOSE, 1, 0],
        [15, ALICE, 1, PAIR_PROPOSE, 1],
        [16, BOB, 1, ALICE, 1, UNPAIR_ABORT + 1],  # no such kind
        [16, BOB, 1, ALICE, 1, True],  # a bool is not a u8
        [16, BOB, 1, ALICE[:7], 1, UNPAIR_END],  # proposer is an 8-byte id
        [16, BOB, 1, ALICE, 0, UNPAIR_END],
        [16, BOB, 1, ALICE, 1],
    ],
)
def test_pairing_messages_reject_bad_fields(body: list[Any]) -> None:
    assert reason_of(dgram(*body)) in REASONS


def test_pairing_messages_accept_extra_fields() -> None:
    """A later minor revision may append fields: they are ignored."""
    assert decode(dgram(14, ALICE, 1, 3, "future")) == Seek(ALICE, 1, 3)
    assert decode(dgram(16, BOB, 1, ALICE, 2, UNPAIR_ABORT, 0)) == Unpair(
        BOB, 1, ALICE, 2, UNPAIR_ABORT
    )


# ------------------------------------------- catch-up: Recall (12), Recount (13)

import itertools  # noqa: E402  (the catch-up section, kept apart)

from lanchat.codec import (  # noqa: E402
    MAX_RECOUNT_ENTRIES,
    RECALL_SIZE,
    Recall,
    Recount,
    RecountEntry,
    split_recount,
)

CAROL_INSTANCE = 0x019B76DAB0000001
NONCE = 0x5EED5EED5EED5EED
# The examples of PROTOCOL.md section 11: carol asks for #lobby's last hour (50
# lines at most); bob answers with a line of alice's and one of his own.
RECALL_PREFIX = bytes.fromhex(
    "4c430100980cc408ca401000000ca401cf019b76dab0000001a56c6f626279ce0036ee8032"
    "cf5eed5eed5eed5eedc50317"
)
CATCH_UP_GOLDEN: list[tuple[Recall | Recount, bytes]] = [
    (Recall(CAROL, CAROL_INSTANCE, "lobby", 3_600_000, 50, NONCE), RECALL_PREFIX + bytes(0x0317)),
    (
        Recount(
            BOB,
            BOB_INSTANCE,
            NONCE,
            "lobby",
            (
                RecountEntry(ALICE, ALICE_INSTANCE, 8, "alice", 61_000, "héllo"),
                RecountEntry(BOB, BOB_INSTANCE, 3, "bob", 2_500, "hi"),
            ),
        ),
        bytes.fromhex(
            "4c430100960dc408b0b0000000000b0bcf019b76daacd20042cf5eed5eed5eed5eeda56c6f62"
            "62799296c408a11ce0000000a11ccf019b76daa8004c4308a5616c696365cdee48a668c3a96c"
            "6c6f96c408b0b0000000000b0bcf019b76daacd2004203a3626f62cd09c4a26869"
        ),
    ),
]


@pytest.mark.parametrize(("msg", "data"), CATCH_UP_GOLDEN, ids=["Recall", "Recount"])
def test_catch_up_golden_bytes(msg: Message, data: bytes) -> None:
    assert encode(msg) == data
    assert decode(data) == msg
    text = (Path(lanchat.codec.__file__).parent / "PROTOCOL.md").read_text("utf-8")
    joined = "".join(line.strip() for line in text.splitlines())
    if isinstance(msg, Recall):
        assert len(data) == RECALL_SIZE == QUERY_SIZE
        pad = len(data) - len(RECALL_PREFIX)
        assert f"{RECALL_PREFIX.hex()}followed by {pad} (0x{pad:04x}) zero bytes" in joined
    else:
        assert re.search(data.hex() + "=", joined)


_entries = st.builds(
    RecountEntry, _ids, _u64, _counters, _names, st.integers(0, 2**32 - 1), _texts(100)
)
catch_up_messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Recall, _ids, _u64, _names, st.integers(1, 2**32 - 1), st.integers(1, 255), _u64),
    st.builds(
        Recount, _ids, _u64, _u64, _names, st.lists(_entries, min_size=1, max_size=8).map(tuple)
    ),
)


@settings(max_examples=300, deadline=None)
@given(catch_up_messages, st.lists(st.integers(0, 9), max_size=2))
def test_catch_up_round_trip_and_extra_fields(msg: Message, extra: list[object]) -> None:
    data = encode(msg)
    assert decode(data) == msg
    assert len(data) == RECALL_SIZE if isinstance(msg, Recall) else len(data) <= MAX_PLAIN
    body = msgpack.unpackb(data[4:])
    assert decode(dgram(*body, *extra)) == msg


@pytest.mark.parametrize("instance", [0, 127, 2**16, U64_MAX])
@pytest.mark.parametrize("nonce", [0, 255, U64_MAX])
def test_recall_is_always_recall_size(instance: int, nonce: int) -> None:
    for room, age, count in [("r", 1, 1), ("r" * 32, 2**32 - 1, 255), ("é" * 16, 128, 128)]:
        msg = Recall(ALICE, instance, room, age, count, nonce)
        data = encode(msg)
        assert len(data) == RECALL_SIZE
        assert decode(data) == msg


def test_unpadded_recall_is_rejected() -> None:
    # A Recall shorter than RECALL_SIZE could draw answers larger than itself.
    body = [12, CAROL, CAROL_INSTANCE, "lobby", 3_600_000, 50, NONCE]
    assert reason_of(dgram(*body, b"")) == "short recall"
    padded = dgram(*body, bytes(RECALL_SIZE - len(dgram(*body, b"")) - 1))
    assert len(padded) == RECALL_SIZE and isinstance(decode(padded), Recall)
    assert reason_of(padded[:-1]) in {"short recall", "malformed"}


ENTRY: list[Any] = [ALICE, ALICE_INSTANCE, 8, "alice", 61_000, "hi"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ([12, CAROL, 1, "lo bby", 1, 1, 0, bytes(RECALL_SIZE)], "bad string"),
        ([12, CAROL, 1, "lobby", 0, 1, 0, bytes(RECALL_SIZE)], "bad integer"),  # age 0
        ([12, CAROL, 1, "lobby", 2**32, 1, 0, bytes(RECALL_SIZE)], "bad integer"),
        ([12, CAROL, 1, "lobby", 1, 0, 0, bytes(RECALL_SIZE)], "bad integer"),  # count 0
        ([12, CAROL, 1, "lobby", 1, 256, 0, bytes(RECALL_SIZE)], "bad integer"),
        ([12, CAROL, 1, "lobby", 1, 1, bytes(RECALL_SIZE)], "missing fields"),
        ([13, BOB, 1, NONCE, "lobby", []], "malformed"),  # no entries
        ([13, BOB, 1, NONCE, "lobby", [[ALICE, 1, 1, "a", 0, ""]] * 51], "malformed"),
        ([13, BOB, 1, NONCE, "lobby", ENTRY], "malformed"),  # not nested
        ([13, BOB, 1, NONCE, "lobby", [ENTRY[:5]]], "malformed"),
        ([13, BOB, 1, NONCE, "lobby", [[ALICE[:7], *ENTRY[1:]]]], "bad peer id"),
        ([13, BOB, 1, NONCE, "lobby", [[*ENTRY[:2], 0, *ENTRY[3:]]]], "bad integer"),  # seq 0
        ([13, BOB, 1, NONCE, "lobby", [[*ENTRY[:4], 2**32, ENTRY[5]]]], "bad integer"),
        ([13, BOB, 1, NONCE, "lobby", [[*ENTRY[:5], "x" * 1001]]], "bad string"),
        ([13, BOB, 1, NONCE, "lobby", [[*ENTRY[:3], "a b", *ENTRY[4:]]]], "bad string"),
        ([13, BOB, 1, NONCE, "", [ENTRY]], "bad string"),
        ([13, BOB, 1, NONCE, "lobby"], "missing fields"),
    ],
)
def test_catch_up_rejections(body: list[Any], reason: str) -> None:
    assert reason_of(dgram(*body)) == reason


def test_recount_entry_limits_are_inclusive() -> None:
    small = [[ALICE, 1, i + 1, "a", 0, ""] for i in range(MAX_RECOUNT_ENTRIES)]
    msg = decode(dgram(13, BOB, 1, NONCE, "lobby", small))
    assert isinstance(msg, Recount) and len(msg.entries) == MAX_RECOUNT_ENTRIES
    extra = [[*ENTRY, "appended later"]]  # entries may grow fields too
    assert decode(dgram(13, BOB, 1, NONCE, "lobby", extra)) == Recount(
        BOB, 1, NONCE, "lobby", (RecountEntry(*ENTRY),)
    )
    with pytest.raises(ConfigError):
        encode(Recount(BOB, 1, NONCE, "lobby", ()))
    with pytest.raises(ConfigError):
        encode(Recall(CAROL, 1, "lobby", 0, 1, NONCE))


def _worst_entry(seq: int = U64_MAX) -> RecountEntry:
    return RecountEntry(b"\xff" * 8, U64_MAX, seq, "n" * 32, 2**32 - 1, "x" * 1000)


def test_catch_up_worst_case_sizes() -> None:
    # The table of PROTOCOL.md section 7 (Recall) and 11 (Recount with one worst entry).
    worst_recall = Recall(b"\xff" * 8, U64_MAX, "r" * 32, 2**32 - 1, 255, U64_MAX)
    assert len(encode(worst_recall)) == RECALL_SIZE == 840
    one = Recount(b"\xff" * 8, U64_MAX, U64_MAX, "r" * 32, (_worst_entry(),))
    assert len(encode(one)) == 1140 <= MAX_PLAIN


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 1000), min_size=1, max_size=60))
def test_split_recount_keeps_order_and_size(text_sizes: list[int]) -> None:
    entries = tuple(
        RecountEntry(ALICE, ALICE_INSTANCE, i + 1, "alice", i, "é" * (n // 2))
        for i, n in enumerate(text_sizes)
    )
    parts = split_recount(BOB, U64_MAX, U64_MAX, "r" * 32, entries)
    assert tuple(e for part in parts for e in part.entries) == entries
    for part in parts:
        data = encode(part)  # raises if over MAX_PLAIN
        assert decode(data) == part and len(data) <= MAX_PLAIN
    assert len(parts) <= len(entries)
    for first, second in itertools.pairwise(parts):  # greedy: no two parts could be one
        bodies = [
            list(msgpack.unpackb(encode(first)[4:])[5]),
            msgpack.unpackb(encode(second)[4:])[5][0],
        ]
        joined = dgram(13, BOB, U64_MAX, U64_MAX, "r" * 32, [*bodies[0], bodies[1]])
        assert len(first.entries) == MAX_RECOUNT_ENTRIES or len(joined) > MAX_PLAIN - 2
