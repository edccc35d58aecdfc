"""Wire codec: datagram bytes <-> message dataclasses (protocol version 1).

The format is specified in PROTOCOL.md beside this file. Invariant: for any
bytes, `decode()` returns a message or raises `DecodeError`, nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import msgpack

from lanchat.errors import ConfigError
from lanchat.seal import SEALED_HEADER, TAG_BYTES, Opener, OpenError, Sealer

MAGIC: Final = b"LC"
VERSION: Final = 1
FLAG_SEALED: Final = 0x01  # keyed groups (lanchat.seal); a node without the key drops it
HEADER: Final = MAGIC + bytes([VERSION, 0])

# Sizes. 1200 bytes stays under every real LAN's MTU (IPv6 minimum 1280) with
# room for IP/UDP headers; 32 bytes are kept back for an AEAD seal later.
MAX_DATAGRAM: Final = 1200
SEAL_RESERVE: Final = 32
MAX_PLAIN: Final = MAX_DATAGRAM - SEAL_RESERVE
MAX_NICK_BYTES: Final = 32  # fits a terminal column and a heartbeat
MAX_ROOM_BYTES: Final = 32
MAX_ROOMS: Final = 16  # 16 x 34 bytes keeps a heartbeat under QUERY_SIZE
MAX_HOST_BYTES: Final = 64  # longer host names are truncated by the sender
MAX_STATUS_BYTES: Final = 64
MAX_TEXT_BYTES: Final = 1000  # worst-case chat datagram is ~1110 bytes < MAX_PLAIN
# A query is padded to this size so that the unicast heartbeat sent in answer
# (at most ~800 bytes) is never larger: no amplification (cf. QUIC's padded
# Initial, RFC 9000 section 8.1).
QUERY_SIZE: Final = 840
MAX_INTERVAL_MS: Final = 3_600_000
ID_BYTES: Final = 8
# Known-answer list of a Query: 4-byte id prefixes (a false match among 150
# peers has odds ~150/2^32), at most 150 of them (600 bytes within QUERY_SIZE).
KNOWN_PREFIX: Final = 4
MAX_KNOWN: Final = 150
KNOWN_BYTES: Final = KNOWN_PREFIX * MAX_KNOWN

STATUS_ONLINE: Final = "online"
STATUS_AWAY: Final = "away"
_STATUSES: Final = (STATUS_ONLINE, STATUS_AWAY)

T_BEAT, T_QUERY, T_BYE, T_CHAT, T_NOTICE, T_DIRECT, T_ACK, T_PING, T_PONG = range(1, 10)
T_NACK, T_GONE = 10, 11
# Random pairing (PROTOCOL.md section 12): 12 and 13 are reserved for catch-up.
T_SEEK, T_PAIR, T_UNPAIR = 14, 15, 16
# Steps of a Pair handshake: the proposer sends PROPOSE, CONFIRM and WITHDRAW,
# the proposed-to peer ACCEPT and DECLINE.
PAIR_PROPOSE, PAIR_ACCEPT, PAIR_CONFIRM, PAIR_DECLINE, PAIR_WITHDRAW = range(5)
# Kinds of Unpair: the pair is over; that answers an Unpair; the accepting side
# gave up before the Confirm came (the proposer may think itself paired).
UNPAIR_END, UNPAIR_ACK, UNPAIR_ABORT = range(3)
# A Nack asks for at most 16 ranges of seqs (351 bytes at worst): enough for
# the holes one receiver has in one sender's stream between two repair rounds.
MAX_NACK_RANGES: Final = 16

Ranges = tuple[tuple[int, int], ...]


# Messages are plain slotted dataclasses, not frozen ones: one is built per
# datagram on the receive path, and a frozen one costs 4x as much to construct
# (1.0 vs 0.23 us here). Treat them as values all the same.


class DecodeError(Exception):
    """A datagram is not a valid lanchat v1 message (internal to the receive path)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class Beat:
    """Announcement and heartbeat: who the sender is and how to reach it."""

    sender: bytes
    instance: int
    nick: str
    host: str
    uport: int
    status: str
    status_text: str
    rooms: tuple[str, ...]
    last_seq: int
    interval_ms: int


@dataclass(slots=True)
class Query:
    """Who is there? Members answer with a unicast Beat to (source ip, uport).

    `known` lists 4-byte id prefixes of peers the sender already knows; they do
    not answer (known-answer suppression, RFC 6762 section 7.1).
    """

    sender: bytes
    instance: int
    uport: int
    known: tuple[bytes, ...] = ()


@dataclass(slots=True)
class Bye:
    """Graceful leave."""

    sender: bytes
    instance: int


@dataclass(slots=True)
class Chat:
    """A room message, multicast; seq is the sender's multicast stream counter."""

    sender: bytes
    instance: int
    seq: int
    nick: str
    room: str
    text: str


@dataclass(slots=True)
class Notice:
    """A message to every peer, multicast and repeated; acknowledged by unicast."""

    sender: bytes
    instance: int
    seq: int
    nick: str
    text: str
    uport: int


@dataclass(slots=True)
class Direct:
    """A direct message, unicast, acknowledged and retried."""

    sender: bytes
    instance: int
    msg_id: int
    nick: str
    text: str


@dataclass(slots=True)
class Ack:
    """Acknowledges a Notice (kind T_NOTICE, ref=seq) or Direct (kind T_DIRECT, ref=msg_id)."""

    sender: bytes
    instance: int
    kind: int
    ref: int
    ref_instance: int


@dataclass(slots=True)
class Ping:
    """Unicast liveness check of a silent peer."""

    sender: bytes
    instance: int
    token: int


@dataclass(slots=True)
class Pong:
    """Answer to a Ping, echoing its token."""

    sender: bytes
    instance: int
    token: int


@dataclass(slots=True)
class Nack:
    """Asks `target_sender` to repair seqs of its multicast stream (PROTOCOL.md section 10).

    `ranges` are (first, last) pairs, inclusive, ascending and disjoint. Sent to
    the group, so other receivers missing the same seqs hold back their own.
    """

    sender: bytes
    instance: int
    target_sender: bytes
    target_instance: int
    ranges: Ranges


@dataclass(slots=True)
class Gone:
    """The stream's sender cannot repair these seqs any more (out of its repair window)."""

    sender: bytes
    instance: int
    ranges: Ranges


@dataclass(slots=True)
class Seek:
    """The sender wants a random one-to-one partner (multicast, repeated while it seeks).

    `seek_id` numbers the sender's searches: a partner seen seeking anew has left the pair.
    """

    sender: bytes
    instance: int
    seek_id: int


@dataclass(slots=True)
class Pair:
    """One step of the pairing handshake (unicast), for the pair (proposer, pair_id).

    The proposer is the sender for PAIR_PROPOSE, PAIR_CONFIRM and PAIR_WITHDRAW,
    the receiver for PAIR_ACCEPT and PAIR_DECLINE. `seek_id` is the sender's own.
    """

    sender: bytes
    instance: int
    step: int
    pair_id: int
    seek_id: int


@dataclass(slots=True)
class Unpair:
    """Ends the pair (proposer, pair_id) (unicast, retried until answered by kind UNPAIR_ACK)."""

    sender: bytes
    instance: int
    proposer: bytes
    pair_id: int
    kind: int


# Message (every type) is defined at the end of the file, after Recall and Recount.


# ---------------------------------------------------------------- validation


def _text_ok(value: str, max_bytes: int, what: str, *, words: bool) -> str | None:
    """Return why `value` is not an acceptable name/text, or None."""
    try:
        size = len(value) if value.isascii() else len(value.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates
        return f"{what} is not valid UTF-8"
    if words and size == 0:
        return f"{what} is empty"
    if size > max_bytes:
        return f"{what} is {size} bytes, at most {max_bytes}"
    # isprintable() is False exactly for Unicode categories C* and Z* other than
    # the ASCII space, which a name may not contain either.
    if words and (not value.isprintable() or " " in value):
        return f"{what} may not contain spaces or control characters"
    return None


def check_nick(nick: str) -> str:
    """Validate a nickname (local use): raise ConfigError when unusable."""
    why = _text_ok(nick, MAX_NICK_BYTES, "nickname", words=True)
    if why:
        raise ConfigError(why)
    return nick


def check_room(room: str) -> str:
    """Validate a room name (local use); a leading '#' is dropped."""
    room = room.removeprefix("#")
    why = _text_ok(room, MAX_ROOM_BYTES, "room name", words=True)
    if why:
        raise ConfigError(why)
    return room


def check_text(text: str) -> str:
    """Validate a chat/notice/direct text (local use)."""
    if not text.strip():
        raise ConfigError("message is empty")
    why = _text_ok(text, MAX_TEXT_BYTES, "message", words=False)
    if why:
        raise ConfigError(why)
    return text


def check_status_text(text: str) -> str:
    """Validate an away message (local use)."""
    why = _text_ok(text, MAX_STATUS_BYTES, "status text", words=False)
    if why:
        raise ConfigError(why)
    return text


def check_ranges(ranges: Ranges) -> Ranges:
    """Validate the ranges of a Nack or Gone (local use): ConfigError when unusable."""
    if not 1 <= len(ranges) <= MAX_NACK_RANGES:
        raise ConfigError(f"1 to {MAX_NACK_RANGES} seq ranges, not {len(ranges)}")
    previous = 0
    for first, last in ranges:
        if not previous < first <= last < 2**64:
            raise ConfigError(f"seq ranges must be ascending and disjoint: {ranges!r}")
        previous = last
    return ranges


def truncate_utf8(value: str, max_bytes: int) -> str:
    """Cut a string to at most max_bytes of UTF-8 without splitting a character."""
    return value.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")


# ------------------------------------------------------------------ encoding


def encode(msg: Message) -> bytes:
    """Encode a message; raises ConfigError if it would exceed the size budget."""
    body: list[Any]
    match msg:
        case Beat():
            body = [
                T_BEAT, msg.sender, msg.instance, msg.nick, msg.host, msg.uport,
                _STATUSES.index(msg.status), msg.status_text, list(msg.rooms),
                msg.last_seq, msg.interval_ms,
            ]  # fmt: skip
        case Query():
            body = _padded_query(msg)
        case Bye():
            body = [T_BYE, msg.sender, msg.instance]
        case Chat():
            body = [T_CHAT, msg.sender, msg.instance, msg.seq, msg.nick, msg.room, msg.text]
        case Notice():
            body = [T_NOTICE, msg.sender, msg.instance, msg.seq, msg.nick, msg.text, msg.uport]
        case Direct():
            body = [T_DIRECT, msg.sender, msg.instance, msg.msg_id, msg.nick, msg.text]
        case Ack():
            body = [T_ACK, msg.sender, msg.instance, msg.kind, msg.ref, msg.ref_instance]
        case Ping():
            body = [T_PING, msg.sender, msg.instance, msg.token]
        case Pong():
            body = [T_PONG, msg.sender, msg.instance, msg.token]
        case Nack():
            ranges = [list(r) for r in check_ranges(msg.ranges)]
            body = [T_NACK, msg.sender, msg.instance, msg.target_sender, msg.target_instance]
            body.append(ranges)
        case Gone():
            body = [T_GONE, msg.sender, msg.instance, [list(r) for r in check_ranges(msg.ranges)]]
        case Recall():
            body = _padded_recall(msg)
        case Recount():
            body = _recount_body(msg)
        case Seek():
            body = [T_SEEK, msg.sender, msg.instance, msg.seek_id]
        case Pair():
            body = [T_PAIR, msg.sender, msg.instance, msg.step, msg.pair_id, msg.seek_id]
        case Unpair():
            body = [T_UNPAIR, msg.sender, msg.instance, msg.proposer, msg.pair_id, msg.kind]
    data: bytes = HEADER + msgpack.packb(body, use_bin_type=True)
    if len(data) > MAX_PLAIN:
        raise ConfigError(f"message too large: {len(data)} bytes, at most {MAX_PLAIN}")
    return data


def _padded_query(msg: Query) -> list[Any]:
    """The Query body padded to exactly QUERY_SIZE bytes."""
    count = min(len(msg.known), MAX_KNOWN)
    while True:
        known = b"".join(k[:KNOWN_PREFIX] for k in msg.known[:count])
        pad = b""
        body: list[Any] = [T_QUERY, msg.sender, msg.instance, msg.uport, known, pad]
        for _ in range(3):  # the pad's own length header may grow by a byte
            size = len(HEADER) + len(msgpack.packb(body, use_bin_type=True))
            pad = body[5] = bytes(max(0, len(pad) + QUERY_SIZE - size))
        if len(HEADER) + len(msgpack.packb(body, use_bin_type=True)) == QUERY_SIZE or not count:
            return body
        # A 257-byte pad cannot be written (bin8 holds 255, bin16 adds a byte):
        # list one peer fewer instead; it will simply answer.
        count -= 1


# ------------------------------------------------------------------ decoding


def _bad(reason: str) -> DecodeError:
    return DecodeError(reason)


def _uint(value: object, bits: int = 64, low: int = 0) -> int:
    """An int in [low, 2**bits), or DecodeError."""
    if type(value) is not int or not low <= value < 2**bits:
        raise _bad("bad integer")
    return value


def _peer_id(value: object) -> bytes:
    """An 8-byte peer id, or DecodeError."""
    if type(value) is not bytes or len(value) != ID_BYTES:
        raise _bad("bad peer id")
    return value


def _text_field(value: object, max_bytes: int, *, words: bool) -> str:
    """A str within max_bytes that passes the text checks (words: a name), or DecodeError."""
    if type(value) is not str or _text_ok(value, max_bytes, "field", words=words):
        raise _bad("bad string")
    return value


def _interval(value: object) -> int:
    # An hour at most (NodeConfig's own limit): timeouts scale with it, so a larger
    # value would let one datagram keep a ghost listed for months.
    interval = _uint(value, 32, low=1)
    if interval > MAX_INTERVAL_MS:
        raise _bad("bad interval")
    return interval


def _ranges(value: object) -> Ranges:
    # Reasons reuse "malformed" and "bad integer": a receiver counts both as malformed.
    if type(value) is not list or not 1 <= len(value) <= MAX_NACK_RANGES:
        raise _bad("malformed")
    out: list[tuple[int, int]] = []
    previous = 0
    for pair in value:
        if type(pair) is not list or len(pair) != 2:
            raise _bad("malformed")
        first, last = _uint(pair[0], low=1), _uint(pair[1], low=1)
        if not previous < first <= last:
            raise _bad("malformed")  # ascending and disjoint, or a peer could make us loop
        previous = last
        out.append((first, last))
    return tuple(out)


def _port(value: object) -> int:
    return _uint(value, 16, low=1)


def _unpack(payload: bytes) -> Any:
    try:
        return msgpack.unpackb(payload, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # msgpack raises several types; one place catches them all
        raise _bad("malformed") from exc


def _body(data: bytes, opener: Opener | None) -> list[Any]:
    if len(data) > MAX_DATAGRAM:
        raise _bad("oversized")
    if len(data) < len(HEADER) + 1:
        raise _bad("short")
    if data[:2] != MAGIC:
        raise _bad("foreign")
    if data[2] != VERSION:
        raise _bad("version")
    if data[3] & FLAG_SEALED:
        if opener is None:
            raise _bad("sealed")  # a keyed group's traffic; we hold no key
        try:
            sender, instance, inner = opener.open(data)
        except OpenError as exc:
            raise _bad(exc.reason) from None
        body = _unpack(inner)
        if type(body) is not list or not body:
            raise _bad("not a message")
        body[1:1] = [sender, instance]
        return body
    if opener is not None:
        raise _bad("unsealed")  # a keyed node accepts nothing without the key
    body = _unpack(data[len(HEADER) :])
    if type(body) is not list or len(body) < 3:
        raise _bad("not a message")
    return body


# Sealing moves sender (10 bytes as msgpack) and instance out of the body into
# a 28-byte header and adds a 16-byte tag: a keyed node's datagram grows by
# SEAL_GROWTH minus its instance's msgpack size (21 bytes for a real node).
SEAL_GROWTH: Final = SEALED_HEADER + TAG_BYTES - len(HEADER) - 2 - ID_BYTES
# Where a plain datagram made by `encode` holds its sender id: header (4),
# array header, type, then bin8 of length 8. A sealed one holds it at 6..14.
_PLAIN_ID_TAG: Final = b"\xc4\x08"


def seal_growth(instance: int) -> int:
    """How many bytes sealing adds to each datagram of this node instance."""
    return SEAL_GROWTH - len(msgpack.packb(instance))


def peek_sender(data: bytes) -> bytes | None:
    """The sender id of a datagram, read without decoding (None if not where encode puts it)."""
    if len(data) < 16 or data[:2] != MAGIC:
        return None
    if data[3] & FLAG_SEALED:
        return data[6:14]
    return data[8:16] if data[6:8] == _PLAIN_ID_TAG else None


def seal(data: bytes, sealer: Sealer) -> bytes:
    """Seal a plain datagram made by `encode` (its sender and instance move to the header)."""
    body = msgpack.unpackb(data[len(HEADER) :], raw=False)
    return sealer.seal(msgpack.packb([body[0], *body[3:]], use_bin_type=True))


def _require_fields(body: list[Any], count: int) -> None:
    """DecodeError unless the body has at least `count` fields."""
    # Later minor revisions may append fields: accept and ignore extras.
    if len(body) < count:
        raise _bad("missing fields")


def decode(data: bytes, opener: Opener | None = None) -> Message:
    """Decode one datagram; raise DecodeError for anything that is not a valid message.

    With an opener (a keyed node) only sealed datagrams that open are accepted.
    """
    body = _body(data, opener)
    kind = body[0]
    if type(kind) is not int:
        raise _bad("unknown type")
    sender = _peer_id(body[1])
    instance = _uint(body[2])
    if kind == T_BEAT:
        _require_fields(body, 11)
        status = _uint(body[6], 8)
        if status >= len(_STATUSES):
            raise _bad("bad status")
        rooms = body[8]
        if type(rooms) is not list or len(rooms) > MAX_ROOMS:
            raise _bad("bad rooms")
        return Beat(
            sender,
            instance,
            _text_field(body[3], MAX_NICK_BYTES, words=True),
            _text_field(body[4], MAX_HOST_BYTES, words=False),
            _port(body[5]),
            _STATUSES[status],
            _text_field(body[7], MAX_STATUS_BYTES, words=False),
            tuple(_text_field(r, MAX_ROOM_BYTES, words=True) for r in rooms),
            _uint(body[9]),
            _interval(body[10]),
        )
    if kind == T_QUERY:
        if len(data) < QUERY_SIZE:
            raise _bad("short query")  # unpadded: answering it would amplify
        _require_fields(body, 6)
        known = body[4]
        if type(known) is not bytes or len(known) % KNOWN_PREFIX or len(known) > KNOWN_BYTES:
            raise _bad("bad known list")
        ids = tuple(known[i : i + KNOWN_PREFIX] for i in range(0, len(known), KNOWN_PREFIX))
        return Query(sender, instance, _port(body[3]), ids)
    if kind == T_BYE:
        return Bye(sender, instance)
    if kind == T_CHAT:
        _require_fields(body, 7)
        return Chat(
            sender,
            instance,
            _uint(body[3], low=1),
            _text_field(body[4], MAX_NICK_BYTES, words=True),
            _text_field(body[5], MAX_ROOM_BYTES, words=True),
            _text_field(body[6], MAX_TEXT_BYTES, words=False),
        )
    if kind == T_NOTICE:
        _require_fields(body, 7)
        return Notice(
            sender,
            instance,
            _uint(body[3], low=1),
            _text_field(body[4], MAX_NICK_BYTES, words=True),
            _text_field(body[5], MAX_TEXT_BYTES, words=False),
            _port(body[6]),
        )
    if kind == T_DIRECT:
        _require_fields(body, 6)
        return Direct(
            sender,
            instance,
            _uint(body[3], low=1),
            _text_field(body[4], MAX_NICK_BYTES, words=True),
            _text_field(body[5], MAX_TEXT_BYTES, words=False),
        )
    if kind == T_ACK:
        _require_fields(body, 6)
        ack_kind = _uint(body[3], 8)
        if ack_kind not in (T_NOTICE, T_DIRECT):
            raise _bad("bad ack kind")
        return Ack(sender, instance, ack_kind, _uint(body[4], low=1), _uint(body[5]))
    if kind == T_PING:
        _require_fields(body, 4)
        return Ping(sender, instance, _uint(body[3]))
    if kind == T_PONG:
        _require_fields(body, 4)
        return Pong(sender, instance, _uint(body[3]))
    if kind == T_NACK:
        _require_fields(body, 6)
        return Nack(sender, instance, _peer_id(body[3]), _uint(body[4]), _ranges(body[5]))
    if kind == T_GONE:
        _require_fields(body, 4)
        return Gone(sender, instance, _ranges(body[3]))
    if kind == T_RECALL:
        return _decode_recall(data, body, sender, instance)
    if kind == T_RECOUNT:
        return _decode_recount(body, sender, instance)
    if kind == T_SEEK:
        _require_fields(body, 4)
        return Seek(sender, instance, _uint(body[3], low=1))
    if kind == T_PAIR:
        _require_fields(body, 6)
        step = _uint(body[3], 8)
        if step > PAIR_WITHDRAW:
            raise _bad("malformed")
        return Pair(sender, instance, step, _uint(body[4], low=1), _uint(body[5], low=1))
    if kind == T_UNPAIR:
        _require_fields(body, 6)
        unpair_kind = _uint(body[5], 8)
        if unpair_kind > UNPAIR_ABORT:
            raise _bad("malformed")
        return Unpair(sender, instance, _peer_id(body[3]), _uint(body[4], low=1), unpair_kind)
    raise _bad("unknown type")


# ------------------------------------------------ catch-up (PROTOCOL.md section 11)

T_RECALL, T_RECOUNT = 12, 13
# A Recall is padded to the Query's size: a flooder pays 840 bytes for each
# request, about one answer datagram's worth; the rest is rate-limited (11.3).
RECALL_SIZE: Final = QUERY_SIZE
# Entries of one Recount at most: the count a node keeps per room, and more
# than fit in 1168 bytes anyway (an entry takes 17 bytes at least).
MAX_RECOUNT_ENTRIES: Final = 50


@dataclass(slots=True)
class Recall:
    """Asks the room's members for its recent chat: at most max_count lines, max_age_ms old."""

    sender: bytes
    instance: int
    room: str
    max_age_ms: int
    max_count: int
    nonce: int


@dataclass(frozen=True, slots=True)
class RecountEntry:
    """One recalled chat line, as its original sender sent it; age_ms is how old it is now."""

    sender: bytes
    instance: int
    seq: int
    nick: str
    age_ms: int
    text: str


@dataclass(slots=True)
class Recount:
    """Answers the Recall `nonce` with chat lines of `room` (multicast, so others hold back)."""

    sender: bytes
    instance: int
    nonce: int
    room: str
    entries: tuple[RecountEntry, ...]


def _padded_recall(msg: Recall) -> list[Any]:
    """The Recall body padded to exactly RECALL_SIZE bytes (the pad is always a bin16)."""
    if not 1 <= msg.max_count < 2**8 or not 1 <= msg.max_age_ms < 2**32:
        raise ConfigError("recall count must be 1..255 and age 1..2**32-1 ms")
    body: list[Any] = [
        T_RECALL, msg.sender, msg.instance, msg.room, msg.max_age_ms, msg.max_count, msg.nonce, b"",
    ]  # fmt: skip
    size = len(HEADER) + len(msgpack.packb(body, use_bin_type=True))
    body[7] = bytes(RECALL_SIZE - size - 1)  # bin16 takes one header byte more than b""
    return body


def _entry_body(entry: RecountEntry) -> list[Any]:
    return [entry.sender, entry.instance, entry.seq, entry.nick, entry.age_ms, entry.text]


def _recount_body(msg: Recount) -> list[Any]:
    if not 1 <= len(msg.entries) <= MAX_RECOUNT_ENTRIES:
        raise ConfigError(f"a Recount holds 1 to {MAX_RECOUNT_ENTRIES} entries")
    entries = [_entry_body(e) for e in msg.entries]
    return [T_RECOUNT, msg.sender, msg.instance, msg.nonce, msg.room, entries]


def split_recount(
    sender: bytes, instance: int, nonce: int, room: str, entries: tuple[RecountEntry, ...]
) -> list[Recount]:
    """Entries (oldest first) packed into as few Recounts of at most MAX_PLAIN bytes as fit.

    Order is kept: each Recount holds a run of consecutive entries.
    """
    head = len(HEADER) + len(msgpack.packb([T_RECOUNT, sender, instance, nonce, room, []]))
    head += 2  # the entries array header grows from 1 to 3 bytes past 15 entries
    out: list[Recount] = []
    run: list[RecountEntry] = []
    size = head
    for entry in entries:
        cost = len(msgpack.packb(_entry_body(entry), use_bin_type=True))
        if run and (size + cost > MAX_PLAIN or len(run) == MAX_RECOUNT_ENTRIES):
            out.append(Recount(sender, instance, nonce, room, tuple(run)))
            run, size = [], head
        run.append(entry)
        size += cost
    if run:
        out.append(Recount(sender, instance, nonce, room, tuple(run)))
    return out


def _decode_recall(data: bytes, body: list[Any], sender: bytes, instance: int) -> Recall:
    if len(data) < RECALL_SIZE:
        raise _bad("short recall")  # unpadded: answering it would amplify
    _require_fields(body, 8)
    return Recall(
        sender,
        instance,
        _text_field(body[3], MAX_ROOM_BYTES, words=True),
        _uint(body[4], 32, low=1),
        _uint(body[5], 8, low=1),
        _uint(body[6]),
    )


def _decode_recount(body: list[Any], sender: bytes, instance: int) -> Recount:
    _require_fields(body, 6)
    raw = body[5]
    if type(raw) is not list or not 1 <= len(raw) <= MAX_RECOUNT_ENTRIES:
        raise _bad("malformed")
    entries: list[RecountEntry] = []
    for item in raw:
        if type(item) is not list or len(item) < 6:
            raise _bad("malformed")
        entries.append(
            RecountEntry(
                _peer_id(item[0]),
                _uint(item[1]),
                _uint(item[2], low=1),
                _text_field(item[3], MAX_NICK_BYTES, words=True),
                _uint(item[4], 32),
                _text_field(item[5], MAX_TEXT_BYTES, words=False),
            )
        )
    room = _text_field(body[4], MAX_ROOM_BYTES, words=True)
    return Recount(sender, instance, _uint(body[3]), room, tuple(entries))


Message = (
    Beat | Query | Bye | Chat | Notice | Direct | Ack | Ping | Pong | Nack | Gone | Recall | Recount
    | Seek | Pair | Unpair
)  # fmt: skip
