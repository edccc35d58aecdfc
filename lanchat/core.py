"""The sans-I/O protocol core: bytes and time in; datagrams, a timer and events out.

Shape (after aioquic's QuicConnection): feed `receive_datagram(data, source, now)`,
call `handle_timer(now)` when `get_timer()` is due, send what
`datagrams_to_send()` returns, and read `next_event()` until it returns None.
Nothing here reads a clock, a socket or global randomness: `now` is passed in
and jitter comes from the `random.Random` handed to the constructor.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Final

import msgpack

from lanchat import codec, ratelimit
from lanchat import config as cfg
from lanchat import events as ev
from lanchat.codec import DecodeError
from lanchat.config import NodeConfig
from lanchat.errors import ClosedError, ConfigError, PeerError
from lanchat.membership import Membership, PeerRecord, Timeouts
from lanchat.pairing import PAIRED, Pairing
from lanchat.seal import SEALED_HEADER, TAG_BYTES, KeyRing, Opener, Sealer

Address = tuple[str, int]

# Duplicates are recognised within the last 1024 sequence numbers of a sender
# (the replay window size DTLS/IPsec allow at most 64; we keep more because
# notices repeat and two NICs double every datagram).
_DEDUP_WINDOW: Final = 1024
_WINDOW_MASK: Final = (1 << _DEDUP_WINDOW) - 1
# Senders whose sequence windows are remembered; a window is ~150 bytes, and
# a LAN rarely has more than a few hundred senders. Oldest forgotten first.
_MAX_SENDERS: Final = 4096
# Why a datagram was dropped -> the Stats counter it goes to.
_DROP_COUNTERS: Final = {
    "foreign": "foreign",
    "version": "wrong_version",
    "sealed": "sealed",
    "unknown key": "unknown_key",
    "forged": "forged",
    "replayed": "replayed",
    "unsealed": "unsealed",
}
# Drops that mean "someone here uses another key (or none)": reported to the user.
_UNAUTHENTICATED: Final = {
    "sealed": "sealed with a key this node does not have",
    "unknown key": "sealed with an unknown key",
    "forged": "failing authentication with our key",
    "unsealed": "without a key (this node requires one)",
}
# Sources tracked between reports; a flood of spoofed sources cannot grow it.
_MAX_UNAUTH_SOURCES: Final = 256
# Report key mismatches at once, then at most every 10 s: enough to notice, not spam.
_UNAUTH_REPORT_EVERY: Final = 10.0
# Queriers remembered for the answer rate limit (one entry per ip:port).
_MAX_QUERIERS: Final = 1024
# Answers waiting for their random delay; a flood of queries can queue no more.
_MAX_PENDING_ANSWERS: Final = 256
# Direct messages and notices in flight from this node (local use): a bound
# keeps a runaway script from growing memory without limit.
_MAX_IN_FLIGHT: Final = 1024
# Loss repair (PROTOCOL.md section 10). Own stream datagrams kept for repair:
# the receivers' dedup window, beyond which a repair would be dropped anyway
# (at most ~1.1 MB of worst-case chat). Their age bound is cfg.REPAIR_KEEP.
_REPAIR_WINDOW: Final = _DEDUP_WINDOW
# Streams whose holes are tracked: one per known sender, like the seq windows.
_MAX_STREAMS: Final = _MAX_SENDERS
# Streams tracked per sender (one per start): a peer restarts rarely, and made-up
# instances must not let one Beat end thousands of streams at once (scripts/fuzz).
_MAX_INSTANCES: Final = 4
# Separate holes tracked per stream; past it the oldest is reported lost at
# once (at 20 % loss a stream needs ~200 messages in one repair round to get there).
_MAX_HOLES: Final = 32
# One Nack makes us repair at most 4 seqs (12 datagrams with their repeats, about
# 14 KB at worst, and only for a known peer): a burst lost by one receiver is back
# in a few rounds, and a buggy or hostile Nack cannot make a node spray its window.
_MAX_REPAIRS_PER_NACK: Final = 4
# Repairs per requester: a bucket of 32 refilled at 32/s; and for all of them
# together 256 at 256/s (~280 KB/s at worst). Chat is typed by hand: a real
# gap needs far less, a flood of Nacks gets no more.
_REPAIR_BURST_PER_PEER: Final = 32.0
_REPAIR_RATE_PER_PEER: Final = 32.0
_REPAIR_BURST: Final = 256.0
_REPAIR_RATE: Final = 256.0
# Requesters remembered for the per-peer bucket (one small entry per peer id).
_MAX_REQUESTERS: Final = 1024
# Sealing moves sender (10 bytes as msgpack) and instance out of the body into
# a 28-byte header and adds a 16-byte tag: a keyed node's answer is charged
# _SEAL_GROWTH minus its instance's msgpack size more (21 bytes for a real node).
_SEAL_GROWTH: Final = SEALED_HEADER + TAG_BYTES - len(codec.HEADER) - 2 - codec.ID_BYTES
# Where a plain datagram made by codec.encode holds its sender id: header (4),
# array header, type, then bin8 of length 8. A sealed one holds it at 6..14.
_PLAIN_ID_TAG: Final = b"\xc4\x08"
# Catch-up (PROTOCOL.md section 11). Each room's last 50 chat lines of the last
# hour are kept to answer late joiners: a screenful and a meeting's worth, and at
# most ~55 KB per room of worst-case lines.
RECALL_KEEP_LINES: Final = codec.MAX_RECOUNT_ENTRIES
RECALL_KEEP: Final = 3600.0  # older chat is history, for the local store, not for peers
# Rooms with a kept ring: our own (at most 16) and, for a node showing every
# room, the most recently active others; least recently used forgotten first.
_MAX_RING_ROOMS: Final = 32
# Holders answer a Recall after a random delay in [0, 50 ms] (a holder that
# heard the whole window) or [50, 100 ms] (one that joined later): 25 LAN
# one-way delays, so the first answer usually reaches the others in time and
# they stay quiet (NORM's feedback suppression, RFC 5740 section 5.3).
RECALL_BACKOFF: Final = 0.05
# Having heard a Recount for a pending answer, a holder waits 10 ms more: the
# other datagrams of that answer were sent in the same instant and are ~1 ms behind.
RECALL_SETTLE: Final = 0.01
# The joiner waits 250 ms for answers (at most 110 ms of back-off and settle,
# plus room for a busy host), and asks again if none came: three tries, so at
# 20 % loss the request or every answer misses all of them < 1 % of the time.
RECALL_WAIT: Final = 0.25
RECALL_TRIES: Final = 3
# What one Recall may cost a holder: 8 KB of answer (50 ordinary lines take ~4 KB);
# per requesting address 16 KB, refilled at 16 KB a minute (a joiner's few rooms);
# for all requesters together 32 KB, refilled at 32 KB a minute (~0.5 KB/s): with
# suppression spreading the answers, 20 people joining 3 rooms each in a minute
# cost each of 10 holders ~24 KB. A flood of spoofed Recalls gets no more.
_RECALL_ANSWER_BYTES: Final = 8192
_RECALL_BYTES_PER_SOURCE: Final = 16384.0
_RECALL_BYTES: Final = 32768.0
_RECALL_REFILL_PERIOD: Final = 60.0
# Requesting addresses remembered for the per-source bucket.
_MAX_RECALL_SOURCES: Final = 1024
# Answers waiting for their back-off; a flood of Recalls queues no more.
_MAX_PENDING_RECALL_ANSWERS: Final = 64
# Recent (requester, nonce) pairs: a Recall heard twice (two NICs) is answered once.
_MAX_RECALL_NONCES: Final = 1024
# Own catch-ups in progress: one per room (local use; a room has at most one).
_MAX_OWN_RECALLS: Final = codec.MAX_ROOMS
# A recalled line may be this much older than asked: its holder measured its age
# up to 110 ms (back-off and settle) after the request, or for a repeated request.
_RECALL_AGE_SLACK: Final = 2 * RECALL_BACKOFF + RECALL_SETTLE + RECALL_WAIT


@dataclass(frozen=True, slots=True)
class Identity:
    """Who this node is: a stable 8-byte peer id and a per-start instance number."""

    peer_id: bytes
    instance: int

    def __post_init__(self) -> None:
        if len(self.peer_id) != codec.ID_BYTES:
            raise ConfigError("peer id must be 8 bytes")
        if not 0 <= self.instance < 2**64:
            raise ConfigError("instance must fit in 64 bits")


@dataclass(frozen=True, slots=True)
class Datagram:
    """One datagram to send: to a unicast address, or (to=None) to the group on every interface."""

    data: bytes
    to: Address | None


@dataclass(slots=True)
class Stats:
    """Counters of what the core received, dropped and sent."""

    received: int = 0
    sent: int = 0
    foreign: int = 0  # not lanchat at all (bad magic)
    wrong_version: int = 0
    sealed: int = 0  # keyed-group datagrams, and this node holds no key
    unknown_key: int = 0  # sealed with a key this node does not hold
    forged: int = 0  # our key id but the tag does not verify
    replayed: int = 0  # authentic but seen before (or from an older start)
    unsealed: int = 0  # plain datagrams reaching a keyed node
    malformed: int = 0  # lanchat magic but not a valid message
    own: int = 0  # our own multicast looped back
    duplicates: int = 0
    stale: int = 0  # from an older instance of a known peer
    unexpected: int = 0  # valid but not for us (e.g. an ack we never asked for)
    rate_limited: int = 0  # queries not answered: the querier was answered < 20 ms ago
    flooded: int = 0  # dropped undecoded: the source IP was over its rate (section 13)
    overloaded: int = 0  # dropped undecoded: a stranger while the total rate was exceeded
    refused: int = 0  # Beats of new peers past the new-peer rate (section 13)
    off_link: int = 0  # dropped: the source is not on a subnet of ours (and the TTL is 1)
    withheld: int = 0  # answers and pings not sent: more bytes than their destination sent us
    nacks_sent: int = 0  # repair requests this node multicast
    nacks_suppressed: int = 0  # holes not asked for: another receiver's Nack did
    nacks_received: int = 0  # repair requests for our own stream
    nacks_overheard: int = 0  # repair requests for other peers' streams
    repairs_sent: int = 0  # own stream datagrams sent again on request
    repairs_held: int = 0  # requested again within REPAIR_HOLDOFF: not resent
    gone_sent: int = 0  # answers that requested seqs are out of the repair window
    lost: int = 0  # seqs of other peers' streams reported in MessagesLost
    recalls_sent: int = 0  # catch-up requests this node multicast
    recounts_sent: int = 0  # answer datagrams to others' catch-up requests
    recount_bytes: int = 0  # their bytes
    recalls_suppressed: int = 0  # answers not sent: another holder's covered them


def _peek_sender(data: bytes) -> bytes | None:
    """The sender id of a datagram, read without decoding (None if not where encode puts it)."""
    if len(data) < 16 or data[:2] != codec.MAGIC:
        return None
    if data[3] & codec.FLAG_SEALED:
        return data[6:14]
    return data[8:16] if data[6:8] == _PLAIN_ID_TAG else None


class SeqWindow:
    """Which sequence numbers of one sender were seen (sliding window bitmap)."""

    __slots__ = ("highest", "mask")

    def __init__(self) -> None:
        self.highest = 0
        self.mask = 0  # bit i set: highest - i was seen

    def accept(self, seq: int) -> bool:
        """Record seq; False if it was seen already or is too old to tell."""
        if seq > self.highest:
            shift = seq - self.highest
            # A jump past the window forgets it all (and must not build a 2**64-bit int).
            self.mask = 1 if shift >= _DEDUP_WINDOW else ((self.mask << shift) | 1) & _WINDOW_MASK
            self.highest = seq
            return True
        offset = self.highest - seq
        if offset >= _DEDUP_WINDOW or self.mask >> offset & 1:
            return False
        self.mask |= 1 << offset
        return True


@dataclass(slots=True)
class _PendingDirect:
    peer: bytes
    datagram: bytes
    destinations: list[Address]
    sent_at: float
    attempts: int = 0
    heard_since: bool = False


@dataclass(slots=True)
class _PendingNotice:
    datagram: bytes
    acked: set[bytes] = field(default_factory=set)


@dataclass(slots=True)
class _Kept:
    """One of our own stream datagrams (plain; sealed anew when sent), kept for repair."""

    data: bytes
    sent_at: float
    repaired_at: float = float("-inf")


@dataclass(slots=True)
class _Hole:
    """Seqs first..last missing from a stream, and how far their repair got."""

    first: int
    last: int
    due: float  # when to ask for them (or give up), if still missing
    tries: int = 0  # repair rounds asked for them so far, by us or by others
    quiet_until: float = float("-inf")  # Nacks heard before this belong to the last round
    since: float = float("-inf")  # this round began: the hole opened, or was asked for
    deferred: int = 0  # times this round's Nack was put off: we heard nothing


@dataclass(slots=True)
class _Stream:
    """Receiver side of one (sender, instance) multicast stream: what is missing."""

    nick: str
    top: int  # the highest seq known to exist (received, or a Beat's last_seq)
    token: int  # names the stream in the timer heap
    holes: list[_Hole] = field(default_factory=list)  # ascending, disjoint
    booked: float = float("inf")  # the earliest timer booked for it


@dataclass(slots=True)
class _RingLine:
    """A chat line kept to answer catch-up requests; `at` is when we sent or received it."""

    sender: bytes
    instance: int
    seq: int
    nick: str
    text: str
    at: float


@dataclass(slots=True)
class _Ring:
    """One room's recent chat; `since` is when this node began hearing all of it."""

    since: float
    lines: deque[_RingLine] = field(default_factory=lambda: deque(maxlen=RECALL_KEEP_LINES))


@dataclass(slots=True)
class _RecallAnswer:
    """A Recall we will answer after the back-off: the keys of the lines chosen for it."""

    source: str
    room: str
    keys: set[tuple[bytes, int, int]]
    due: float
    heard: bool = False  # another holder answered the same Recall


@dataclass(slots=True)
class _OwnRecall:
    """A catch-up this node asked for, collecting answers until it ends."""

    room: str
    max_age: float
    max_count: int
    have: frozenset[tuple[bytes, int, int]]
    token: int
    nonces: list[int] = field(default_factory=list)
    answers: int = 0  # Recount datagrams received
    lines: dict[tuple[bytes, int, int], tuple[codec.RecountEntry, float]] = field(
        default_factory=dict
    )  # key -> (entry, when it was sent, core time)


class _Bucket:
    """A token bucket (repairs allowed), refilled in virtual time."""

    __slots__ = ("stamp", "tokens")

    def __init__(self, size: float, now: float) -> None:
        self.tokens = size
        self.stamp = now

    def refill(self, size: float, rate: float, now: float) -> float:
        self.tokens = min(size, self.tokens + max(0.0, now - self.stamp) * rate)
        self.stamp = now
        return self.tokens


class NodeCore:
    """One lanchat node's protocol state."""

    def __init__(
        self,
        config: NodeConfig,
        identity: Identity,
        *,
        uport: int,
        rng: random.Random,
        keys: KeyRing | None = None,
    ) -> None:
        self.config = config
        self.identity = identity
        self.uport = cfg.check_port(uport)
        self.stats = Stats()
        self._rng = rng
        interval = config.heartbeat_interval
        self.members = Membership(
            Timeouts(
                heartbeat_interval=interval,
                probe_after=cfg.PROBE_AFTER_INTERVALS * interval,
                ping_interval=cfg.PING_EVERY_INTERVALS * interval,
                unreachable_after=config.unreachable_after,
                remove_after=config.remove_after,
            )
        )
        self._out: list[Datagram] = []
        self._events: deque[ev.Event] = deque()
        self._timers: list[tuple[float, int, str, int]] = []
        self._timer_counter = 0
        # Heartbeat schedule (RFC 3550 section 6.3; PROTOCOL.md section 3.1):
        # the next Beat, whether it is a regular one (reconsidered when due) or
        # an announcement/tail Beat (sent as booked), when the last one went
        # out (tp), the group size when it was booked (pmembers), and the mean
        # Beat size on the wire (avg_rtcp_size).
        self._next_beat = float("inf")
        self._beat_regular = False
        self._last_beat = float("-inf")
        self._booked_members = 1
        self._beat_size = 0.0  # set below, once a Beat can be encoded
        self._announce_left: list[float] = []
        self._next_sweep = float("inf")
        self._seq = 0  # multicast stream: chat and notices
        self._msg_id = 0  # direct messages
        self._ping_token = 0
        self._stream_windows: OrderedDict[tuple[bytes, int], SeqWindow] = OrderedDict()
        self._direct_windows: OrderedDict[tuple[bytes, int], SeqWindow] = OrderedDict()
        self._answered: OrderedDict[str, float] = OrderedDict()
        self.limits = ratelimit.Limits()
        self._answers: dict[int, Address] = {}
        self._directs: dict[int, _PendingDirect] = {}
        self._notices: dict[int, _PendingNotice] = {}
        self._byes_left = 0
        self.keys = keys
        self._sealer = Sealer(keys, identity.peer_id, identity.instance) if keys else None
        # What sealing adds to each of our datagrams: answers are charged with it.
        self._growth = _SEAL_GROWTH - len(msgpack.packb(identity.instance)) if keys else 0
        self._opener = Opener(keys) if keys else None
        self._unauth: dict[tuple[str, str], list[float]] = {}
        # Loss repair: our kept datagrams (kept[0] has seq _kept_first), what we
        # miss of others' streams, and the repair rate limits.
        self._kept: deque[_Kept] = deque()
        self._kept_first = 1
        self._streams: OrderedDict[tuple[bytes, int], _Stream] = OrderedDict()
        self._stream_tokens: dict[int, tuple[bytes, int]] = {}
        self._stream_instances: dict[bytes, set[int]] = {}  # sender -> tracked instances
        self._requesters: OrderedDict[bytes, _Bucket] = OrderedDict()
        self._repair_bucket = _Bucket(_REPAIR_BURST, 0.0)
        self._answer_bucket = _Bucket(cfg.QUERY_ANSWER_START, 0.0)
        # When we last heard the group's multicast, and when a silence long enough
        # to be deaf (_deaf_after) last ended: a Nack or repair may have passed us by.
        self._heard_at = self._deaf_end = float("-inf")
        self._tail_left: list[float] = []
        # Catch-up: kept rooms, answers due, our own requests, and the answer budgets.
        self._rings: OrderedDict[str, _Ring] = OrderedDict()
        self._recall_answers: dict[int, _RecallAnswer] = {}  # by the Recall's nonce
        self._recall_seen: OrderedDict[tuple[bytes, int], None] = OrderedDict()
        self._recall_sources: OrderedDict[str, _Bucket] = OrderedDict()
        self._recall_bucket = _Bucket(_RECALL_BYTES, 0.0)
        self._own_recalls: dict[str, _OwnRecall] = {}
        self._own_nonces: dict[int, str] = {}  # nonce -> room of our request
        self._pairing = Pairing(identity.peer_id, identity.instance, self.members, rng)
        self.started = False
        self.closed = False
        self._beat_size = float(len(self._beat()) + cfg.HEADER_BYTES)

    # ------------------------------------------------------------ public API

    @property
    def nick(self) -> str:
        return self.config.nick

    def start(self, now: float) -> None:
        """Announce this node (if a member) and ask who is there."""
        if self.started:
            return
        self.started = True
        self._answer_bucket.stamp = now  # it holds QUERY_ANSWER_START, not a refill since 0
        for room in self.config.rooms:
            self._ring(room, now)  # from now on we hear all of its chat
        self._discover(now)

    def network_changed(self, now: float) -> None:
        """The adapter joined or left interfaces: announce again and ask who is there."""
        if self.started and not (self.closed or self._byes_left):
            self._discover(now)

    def leave(self, now: float) -> None:
        """Say goodbye (several times); `closed` turns True once the last one is out."""
        if self.closed or self._byes_left:
            return
        self._next_beat = float("inf")
        self._pairing.stop(now)  # a partner hears "left" now, not at our Bye
        self._drain_pairing()
        if not (self.config.member and self.started):
            self.closed = True
            return
        self._byes_left = len(cfg.BYE_DELAYS)
        for delay in cfg.BYE_DELAYS:
            self._at(now + delay, "bye", 0)

    def say(self, room: str, text: str, now: float) -> int:
        """Send a chat message to a room; returns its sequence number."""
        self._check_open()
        room = codec.check_room(room)
        codec.check_text(text)
        self._seq += 1
        data = codec.encode(codec.Chat(self._id, self._inst, self._seq, self.nick, room, text))
        self._keep(data, now)
        self._keep_line(room, self._id, self._inst, self._seq, self.nick, text, now)
        self._multicast(data)
        if self.config.member and self._next_beat != float("inf"):
            # Tail heartbeats tell receivers our last_seq soon (cfg.TAIL_BEAT_DELAYS).
            delays = cfg.TAIL_BEAT_DELAYS
            self._tail_left = [b - a for a, b in itertools.pairwise(delays)]
            if now + delays[0] < self._next_beat:
                self._next_beat, self._beat_regular = now + delays[0], False
        return self._seq

    def notice(self, text: str, now: float) -> int:
        """Send a notice to every peer (repeated); returns its sequence number."""
        self._check_open()
        codec.check_text(text)
        self._bound_in_flight(self._notices)
        self._seq += 1
        data = codec.encode(
            codec.Notice(self._id, self._inst, self._seq, self.nick, text, self.uport)
        )
        self._notices[self._seq] = _PendingNotice(data)
        self._keep(data, now)
        for delay in cfg.NOTICE_DELAYS:
            self._at(now + delay, "notice", self._seq)
        self._at(now + cfg.NOTICE_DELAYS[-1] + cfg.NOTICE_ACK_WINDOW, "notice_done", self._seq)
        return self._seq

    def send_direct(self, peer_id: str, text: str, now: float) -> int:
        """Send a direct message to a known peer; returns its message id."""
        self._check_open()
        codec.check_text(text)
        try:
            rec = self.members.get(bytes.fromhex(peer_id))
        except ValueError:
            rec = None
        if rec is None:
            raise PeerError(f"unknown peer {peer_id}")
        self._bound_in_flight(self._directs)
        self._msg_id += 1
        data = codec.encode(codec.Direct(self._id, self._inst, self._msg_id, self.nick, text))
        self._directs[self._msg_id] = _PendingDirect(rec.peer_id, data, rec.destinations(), now)
        for delay in cfg.DIRECT_DELAYS:
            self._at(now + delay, "direct", self._msg_id)
        self._at(now + cfg.DIRECT_GIVE_UP, "direct_done", self._msg_id)
        return self._msg_id

    def set_nick(self, nick: str, now: float) -> None:
        """Change nickname; peers see it at once."""
        self._reconfigure(now, nick=codec.check_nick(nick))

    def set_away(self, text: str | None, now: float) -> None:
        """Mark away with an optional text (None: back online)."""
        if text is None:
            self._reconfigure(now, status=codec.STATUS_ONLINE, status_text="")
        else:
            self._reconfigure(now, status=codec.STATUS_AWAY, status_text=text)

    def join_room(self, room: str, now: float) -> None:
        """Join a room (receive its chat; peers see the membership)."""
        room = codec.check_room(room)
        if room not in self.config.rooms:
            self._reconfigure(now, rooms=(*self.config.rooms, room))
            if self.started:
                self._ring(room, now)

    def leave_room(self, room: str, now: float) -> None:
        """Leave a room."""
        room = codec.check_room(room)
        if room in self.config.rooms:
            self._reconfigure(now, rooms=tuple(r for r in self.config.rooms if r != room))
            if not self.config.all_rooms:
                self._rings.pop(room, None)  # we stop hearing it: the ring would have a gap
            self._end_own_recall(room)

    def seek_partner(self, now: float) -> bool:
        """Look for a random one-to-one partner (PROTOCOL.md section 12).

        False if this node is looking already or is paired. `Paired` follows when
        another seeker agrees, `PairSearchExpired` if none does in time.
        """
        self._check_open()
        if not self.config.member:
            raise ConfigError("only a member node can pair")
        started = self._pairing.seek(now)
        self._drain_pairing()
        return started

    def end_pair(self, now: float) -> bool:
        """Stop looking for a partner, or end the pair (the partner is told); False if neither."""
        ended = self._pairing.stop(now)
        self._drain_pairing()
        return ended

    @property
    def pair_state(self) -> str:
        """ "idle", "seeking" (a handshake in progress counts as seeking) or "paired"."""
        state = self._pairing.state
        return state if state in ("idle", PAIRED) else "seeking"

    @property
    def partner(self) -> ev.PeerInfo | None:
        """The partner while paired (None when the partner is no longer in the peer table)."""
        peer_id = self._pairing.partner
        rec = self.members.get(peer_id) if peer_id is not None else None
        return rec.info() if rec is not None else None

    def query(self, now: float) -> None:
        """Ask the group who is there now."""
        self._at(now, "query", 0)

    def heartbeat_interval(self) -> float:
        """The mean interval between our heartbeats now (RFC 3550 section 6.2's Td).

        max(minimum, n / datagram budget, n x mean Beat size / byte budget),
        n = known members + ourselves: the group's heartbeats stay within budget.
        """
        n = len(self.members) + 1
        return max(
            self.config.heartbeat_interval,
            n / cfg.HEARTBEAT_RATE_BUDGET,
            n * self._beat_size / cfg.HEARTBEAT_BYTE_BUDGET,
        )

    def recall(
        self,
        room: str,
        now: float,
        *,
        max_age: float = RECALL_KEEP,
        max_count: int = RECALL_KEEP_LINES,
        have: Iterable[tuple[str, int, int]] = (),
    ) -> None:
        """Ask the room's members for its recent chat (PROTOCOL.md section 11).

        HistoryRecalled, then one ChatRecalled per line (oldest first), follow within
        a second. Lines this node already showed are left out: those of its live
        stream, and `have`, (peer id, instance, seq) of lines shown from elsewhere
        (the local history). A new recall of a room replaces one in progress.
        """
        self._check_open()
        if not self.config.member:
            raise ConfigError("only a member (a node others see) can catch up on a room")
        room = codec.check_room(room)
        if not 0 < max_age <= RECALL_KEEP:
            raise ConfigError(f"catch-up age must be in (0, {RECALL_KEEP:.0f}] seconds")
        if not 1 <= max_count <= RECALL_KEEP_LINES:
            raise ConfigError(f"catch-up count must be 1..{RECALL_KEEP_LINES}")
        known: set[tuple[bytes, int, int]] = set()
        for peer_id, instance, seq in have:
            try:
                known.add((bytes.fromhex(peer_id), instance, seq))
            except ValueError:
                raise ConfigError(f"bad peer id {peer_id!r}") from None
        self._end_own_recall(room)
        if len(self._own_recalls) >= _MAX_OWN_RECALLS:
            raise ConfigError(f"at most {_MAX_OWN_RECALLS} catch-ups at a time")
        self._timer_counter += 1
        own = _OwnRecall(room, max_age, max_count, frozenset(known), self._timer_counter)
        self._own_recalls[room] = own
        self._send_recall(own, now)

    def peers(self) -> list[ev.PeerInfo]:
        """Every known peer, by nickname."""
        return sorted((rec.info() for rec in self.members), key=lambda p: (p.nick, p.peer_id))

    def find_peer(self, name: str) -> ev.PeerInfo:
        """A peer by exact nickname, or by peer id prefix; PeerError if none or several."""
        peers = self.peers()
        matches = [p for p in peers if p.nick == name]
        if not matches:
            matches = [p for p in peers if p.nick.casefold() == name.casefold()]
        if not matches and len(name) >= 2:
            matches = [p for p in peers if p.peer_id.startswith(name.lower())]
        if not matches:
            raise PeerError(f"no peer named {name!r}")
        if len(matches) > 1:
            names = ", ".join(f"{p.nick} ({p.short_id} on {p.host})" for p in matches)
            raise PeerError(f"{name!r} is ambiguous: {names}; use a peer id prefix")
        return matches[0]

    # ------------------------------------------------------ sans-I/O driving

    def datagrams_to_send(self) -> list[Datagram]:
        """Take the datagrams queued for sending."""
        out, self._out = self._out, []
        self.stats.sent += len(out)
        if self._sealer is not None:
            sealer = self._sealer  # sealed now, so every repeat gets a fresh counter
            out = [Datagram(codec.seal(d.data, sealer), d.to) for d in out]
        return out

    def next_event(self) -> ev.Event | None:
        """The next event, or None."""
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """When handle_timer should next be called, or None."""
        when = min(self._next_beat, self._next_sweep)
        if self._timers:
            when = min(when, self._timers[0][0])
        return None if when == float("inf") else when

    def handle_timer(self, now: float) -> None:
        """Do everything that is due at `now`."""
        while self._timers and self._timers[0][0] <= now and not self.closed:
            _, _, kind, key = heapq.heappop(self._timers)
            self._fire(kind, key, now)
        if self.closed:  # goodbye said: no retries, repeats or pings any more
            self._timers.clear()
            self._next_beat = self._next_sweep = float("inf")
            return
        if self._next_beat <= now:
            self._beat_due(now)
        if self._next_sweep <= now:
            self.members.group_interval = self.heartbeat_interval()
            events, to_ping, self._next_sweep = self.members.sweep(now)
            self._emit(events)
            for rec in to_ping:
                self._ping(rec)
            self._reconsider_down(now)

    def receive_datagram(
        self, data: bytes, source: Address, now: float, *, on_link: bool = True
    ) -> None:
        """Handle one datagram from `source` (ip, port). Never raises on remote input.

        `on_link`: False if the source is on none of the node's subnets and the node
        keeps to its link (TTL 1): then it is dropped, and nothing ever answers it.
        """
        self.stats.received += 1
        if self.closed:
            return  # a node that said goodbye answers nothing (not even pings)
        if not on_link:
            self.stats.off_link += 1
            return
        # Before decoding (section 13): our own multicast looped back, then the limits.
        sender = _peek_sender(data)
        if sender == self._id:
            self.stats.own += 1
            return
        verdict = self.limits.admit(
            source[0],
            len(data),
            now,
            known=sender is not None and self.members.get(sender) is not None,
        )
        if verdict:
            if verdict == ratelimit.FLOODED:
                self.stats.flooded += 1
            else:
                self.stats.overloaded += 1
            return
        try:
            msg = codec.decode(data, self._opener)
        except DecodeError as exc:
            self._count_drop(exc.reason, source, now)
            return
        if msg.sender == self._id:
            self.stats.own += 1
            return
        if self.members.is_stale(msg.sender, msg.instance):
            self.stats.stale += 1
            return
        ip = source[0]
        for pending in self._directs.values():
            if pending.peer == msg.sender:
                pending.heard_since = True
        if isinstance(msg, codec.Beat):
            if self.members.get(msg.sender) is None and not self.limits.admit_peer(ip, now):
                self.stats.refused += 1  # a new peer past the new-peer rate (section 13)
                return
            self._beat_size += (len(data) + cfg.HEADER_BYTES - self._beat_size) / 16
            self._emit(self.members.on_beat(msg, ip, now))
            self.members.group_interval = self.heartbeat_interval()
            rec = self.members.get(msg.sender)
            if rec is not None:
                self._next_sweep = min(self._next_sweep, self.members.next_deadline_for(rec))
                if rec.instance == msg.instance:
                    self._advertised(msg, now)
            return
        self._emit(self.members.on_heard(msg.sender, msg.instance, ip, now))
        match msg:
            case codec.Query():
                self._on_query(msg, ip, now)
            case codec.Bye():
                self._emit(self.members.on_bye(msg.sender, msg.instance))
                self._reconsider_down(now)
            case codec.Chat():
                late = self._stream_arrival(msg.sender, msg.instance, msg.seq, msg.nick, now)
                if late is not None:
                    self._on_chat(msg, late, now)
            case codec.Notice():
                self._on_notice(msg, ip, now)
            case codec.Direct():
                self._on_direct(msg, source)
            case codec.Ack():
                self._on_ack(msg)
            case codec.Ping():
                self._answer(codec.Pong(self._id, self._inst, msg.token), source)
            case codec.Pong():
                pass  # a sign of life, already counted above
            case codec.Nack():
                self._on_nack(msg, now)
            case codec.Gone():
                self._on_gone(msg)
            case codec.Recall():
                self._on_recall(msg, ip, now)
            case codec.Recount():
                self._on_recount(msg, now)
            case codec.Seek():
                self._pairing.on_seek(msg, now)
                self._drain_pairing()
            case codec.Pair():
                self._pairing.on_pair(msg, source, now)
                self._drain_pairing()
            case codec.Unpair():
                self._pairing.on_unpair(msg, source, now)
                self._drain_pairing()

    # ------------------------------------------------------------- internals

    @property
    def _id(self) -> bytes:
        return self.identity.peer_id

    @property
    def _inst(self) -> int:
        return self.identity.instance

    def _check_open(self) -> None:
        if self.closed or self._byes_left:
            raise ClosedError("the node is closed")

    def _bound_in_flight(self, table: dict[int, Any]) -> None:
        if len(table) >= _MAX_IN_FLIGHT:
            raise ConfigError(f"more than {_MAX_IN_FLIGHT} messages awaiting acknowledgement")

    def _at(self, when: float, kind: str, key: int) -> None:
        self._timer_counter += 1
        heapq.heappush(self._timers, (when, self._timer_counter, kind, key))

    def _emit(self, events: list[ev.Event]) -> None:
        """Queue membership events; a peer that left or restarted ends its streams' repair."""
        for event in events:
            self._events.append(event)
            match event:
                case ev.PeerLeft(peer=peer, reason=reason):
                    self._end_streams(peer, left=True, bye=reason == "bye")
                case ev.PeerJoined(peer=peer) | ev.PeerRestarted(peer=peer):
                    self._end_streams(peer, left=False, bye=False)
            if isinstance(event, ev.PeerLeft | ev.PeerRestarted):
                self._pairing.peer_gone(event.peer)
                self._drain_pairing()

    def _multicast(self, data: bytes) -> None:
        self._out.append(Datagram(data, None))

    def _answer(self, msg: codec.Message, to: Address) -> None:
        """Unicast an answer, if the destination IP has sent us at least as many bytes."""
        self._unicast_charged(codec.encode(msg), to)

    def _unicast_charged(self, data: bytes, to: Address) -> None:
        """Unicast `data`, charged to the IP's answer credit (PROTOCOL.md 13.3), or withhold it."""
        if self.limits.spend(to[0], len(data) + self._growth):
            self._out.append(Datagram(data, to))
        else:
            self.stats.withheld += 1

    def _drain_pairing(self) -> None:
        """Send, book and emit what the pairing logic queued (PROTOCOL.md section 12)."""
        pairing = self._pairing
        for msg, to, via in pairing.take_out():
            data = codec.encode(msg)
            if to is None:
                self._multicast(data)
                continue
            rec = self.members.get(to)
            dests = rec.destinations() if rec is not None else [via] if via else []
            for dest in dests:  # unicast answers a remote peer's datagram: charged (13.3)
                self._unicast_charged(data, dest)
        for when, token in pairing.take_timers():
            self._at(when, "pair", token)
        self._events.extend(pairing.take_events())

    def _count_drop(self, reason: str, source: Address, now: float) -> None:
        counter = _DROP_COUNTERS.get(reason, "malformed")
        setattr(self.stats, counter, getattr(self.stats, counter) + 1)
        if reason in _UNAUTHENTICATED:
            self._note_unauthenticated(source[0], _UNAUTHENTICATED[reason], now)

    def _note_unauthenticated(self, ip: str, why: str, now: float) -> None:
        """Count datagrams a key mismatch kept out: reported per source at once, then every 10 s."""
        key = (ip, why)
        entry = self._unauth.get(key)
        if entry is None:
            if len(self._unauth) >= _MAX_UNAUTH_SOURCES:
                return
            entry = self._unauth[key] = [0, now]  # [count since last report, next report]
        entry[0] += 1
        if entry[0] == 1:
            self._at(max(now, entry[1]), "unauth_report", 0)

    def _report_unauthenticated(self, now: float) -> None:
        for (ip, why), entry in sorted(self._unauth.items()):
            count, due = entry
            if count and due <= now:
                self._events.append(ev.UnauthenticatedReceived(ip, int(count), why))
                entry[:] = [0, now + _UNAUTH_REPORT_EVERY]
        # Forget quiet sources whose holdback has passed: the table stays small.
        for key in [k for k, (count, due) in self._unauth.items() if not count and due <= now]:
            del self._unauth[key]

    def _reconfigure(self, now: float, **changes: object) -> None:
        self._check_open()
        self.config = replace(self.config, **changes)  # type: ignore[arg-type]
        if self.config.member and self.started:
            self._announce(now)

    def _discover(self, now: float) -> None:
        """Queries with back-off and, for a member, announcements: what a start sends.

        The repeats (key 1) are skipped once the group is big (cfg.SMALL_GROUP).
        """
        delays = cfg.QUERY_DELAYS if self.config.member else cfg.QUERY_DELAYS_ONESHOT
        for i, delay in enumerate(delays):
            self._at(now + delay, "query", int(i > 0))
        if self.config.member:
            self._announce(now)

    def _announce(self, now: float) -> None:
        """Send a heartbeat now and a few more with back-off (while the group is small)."""
        delays = list(cfg.ANNOUNCE_DELAYS)
        self._next_beat, self._beat_regular = now + delays.pop(0), False
        self._announce_left = [b - a for a, b in zip(cfg.ANNOUNCE_DELAYS, delays, strict=False)]

    def _draw_interval(self) -> float:
        """A randomised interval: uniform in [0.5, 1.5] x Td / (e - 3/2) (RFC 3550 6.3.1)."""
        return self.heartbeat_interval() * self._rng.uniform(0.5, 1.5) / cfg.RECONSIDERATION_FACTOR

    def _beat_due(self, now: float) -> None:
        """The beat timer fired: send (or, for a regular Beat, reconsider) and book the next."""
        n = len(self.members) + 1
        if self._beat_regular:
            # Timer reconsideration (RFC 3550 section 6.3.6): redraw with the group
            # as it is now; if it grew, the Beat waits, so a mass join is no flood.
            due = self._last_beat + self._draw_interval()
            if due > now:
                self._next_beat, self._booked_members = due, n
                return
        self._send_beat(None)
        self._last_beat, self._booked_members = now, n
        self._prune_kept(now)
        if self._announce_left and n >= cfg.SMALL_GROUP:
            self._announce_left = []  # a big group: the regular Beats suffice
        if self._announce_left:
            self._next_beat, self._beat_regular = now + self._announce_left.pop(0), False
        elif self._tail_left:
            self._next_beat, self._beat_regular = now + self._tail_left.pop(0), False
        else:
            self._next_beat, self._beat_regular = now + self._draw_interval(), True

    def _reconsider_down(self, now: float) -> None:
        """Reverse reconsideration (RFC 3550 section 6.3.4): peers left, beat sooner.

        The next Beat and the last one's time move toward now by n / pmembers,
        so the group's rate does not dip while every member still counts the
        departed peers in its old, longer interval.
        """
        n = len(self.members) + 1
        if n >= self._booked_members or not self._beat_regular:
            self._booked_members = max(self._booked_members, n) if self._beat_regular else n
            return
        ratio = n / self._booked_members
        if self._next_beat != float("inf"):
            self._next_beat = now + ratio * (self._next_beat - now)
        self._last_beat = now - ratio * (now - self._last_beat)
        self._booked_members = n

    def _beat(self) -> bytes:
        c = self.config
        return codec.encode(
            codec.Beat(
                self._id,
                self._inst,
                c.nick,
                codec.truncate_utf8(c.host, codec.MAX_HOST_BYTES),
                self.uport,
                c.status,
                c.status_text,
                c.rooms,
                self._seq,
                round(self.heartbeat_interval() * 1000),
            )
        )

    def _send_beat(self, to: Address | None) -> None:
        data = self._beat()
        self._beat_size += (len(data) + cfg.HEADER_BYTES - self._beat_size) / 16
        self._out.append(Datagram(data, to))

    def _answer_beat(self, to: Address) -> None:
        """A query's answer: our Beat, unicast, charged to the querier's credit."""
        self._unicast_charged(self._beat(), to)

    def _ping(self, rec: PeerRecord) -> None:
        """Ping a silent peer at each of its addresses that has sent us a Ping's worth.

        Charged like an answer: a Beat with a forged source address buys a few
        pings of that address, never more bytes than the Beat itself.
        """
        self._ping_token += 1
        data = codec.encode(codec.Ping(self._id, self._inst, self._ping_token))
        for dest in rec.destinations():
            self._unicast_charged(data, dest)

    def _fire(self, kind: str, key: int, now: float) -> None:
        if kind == "query":
            repeat, big = key == 1, len(self.members) + 1 >= cfg.SMALL_GROUP
            if not self.closed and not (repeat and big):
                self._multicast(codec.encode(self._query()))
        elif kind == "answer":
            dest = self._answers.pop(key, None)
            if dest is not None and not self.closed and not self._byes_left:
                self._answer_beat(dest)
        elif kind == "bye":
            self._multicast(codec.encode(codec.Bye(self._id, self._inst)))
            self._byes_left -= 1
            if self._byes_left == 0:
                self.closed = True
        elif kind == "notice":
            notice = self._notices.get(key)
            if notice is not None:
                self._multicast(notice.datagram)
        elif kind == "notice_done":
            self._notices.pop(key, None)
        elif kind == "direct":
            pending = self._directs.get(key)
            if pending is not None:
                pending.attempts += 1
                rec = self.members.get(pending.peer)
                if rec is not None:
                    pending.destinations = rec.destinations()
                for dest in pending.destinations:
                    self._out.append(Datagram(pending.datagram, dest))
        elif kind == "unauth_report":
            self._report_unauthenticated(now)
        elif kind == "holes":
            self._service_stream(key, now)
        elif kind == "repeat":
            self._repeat_repair(key, now)
        elif kind == "recall_answer":
            self._answer_recall(key, now)
        elif kind == "recall":
            self._recall_due(key, now)
        elif kind == "pair":
            self._pairing.on_timer(key, now)
            self._drain_pairing()
        elif kind == "direct_done":
            pending = self._directs.pop(key, None)
            if pending is not None:
                self._events.append(
                    ev.DirectFailed(key, pending.peer.hex(), pending.attempts, pending.heard_since)
                )

    def _fresh(
        self,
        table: OrderedDict[tuple[bytes, int], SeqWindow],
        sender: bytes,
        instance: int,
        seq: int,
    ) -> bool:
        key = (sender, instance)
        window = table.get(key)
        if window is None:
            window = table[key] = SeqWindow()
            if len(table) > _MAX_SENDERS:
                table.popitem(last=False)
        else:
            table.move_to_end(key)
        if window.accept(seq):
            return True
        self.stats.duplicates += 1
        return False

    def _query(self) -> codec.Query:
        """A query listing the peers already known (most recently heard first)."""
        recent = sorted(self.members, key=lambda rec: rec.last_heard, reverse=True)
        known = tuple(rec.peer_id for rec in recent[: codec.MAX_KNOWN])
        return codec.Query(self._id, self._inst, self.uport, known)

    def _on_query(self, msg: codec.Query, ip: str, now: float) -> None:
        if not (self.config.member and self.started) or self._byes_left:
            return
        if self._id[: codec.KNOWN_PREFIX] in msg.known:
            return  # the querier knows us already
        dest = (ip, msg.uport)
        last = self._answered.get(ip)  # per address: a querier cannot vary uport for more
        if last is not None and now - last < cfg.QUERY_ANSWER_GAP:
            self.stats.rate_limited += 1
            return
        if len(self._answers) >= _MAX_PENDING_ANSWERS:
            self.stats.rate_limited += 1
            return
        n = len(self.members) + 1
        if n > cfg.QUERY_ANSWERS and self._rng.random() * n >= cfg.QUERY_ANSWERS:
            return  # a big group: ~QUERY_ANSWERS members answer, the rest beat soon
        # Our share of the group's heartbeat budget, without the minimum interval:
        # the whole group answers ~50 queriers' worth of Beats a second at most,
        # however big, and a small group keeps up with a newcomer every 0.2 s.
        rate = 1.0 / max(
            n / cfg.HEARTBEAT_RATE_BUDGET, n * self._beat_size / cfg.HEARTBEAT_BYTE_BUDGET
        )
        burst = min(cfg.QUERY_ANSWER_BURST_MAX, cfg.QUERY_ANSWER_GROUP_BURST / n)
        if self._answer_bucket.refill(max(cfg.QUERY_ANSWER_BURST, burst), rate, now) < 1:
            self.stats.rate_limited += 1
            return
        self._answer_bucket.tokens -= 1
        self._answered[ip] = now
        self._answered.move_to_end(ip)
        if len(self._answered) > _MAX_QUERIERS:
            self._answered.popitem(last=False)
        spread = cfg.QUERY_SPREAD_PER_PEER * min(n, cfg.QUERY_ANSWERS)
        spread = min(cfg.QUERY_SPREAD_MAX, max(cfg.QUERY_SPREAD_MIN, spread))
        self._timer_counter += 1
        key = self._timer_counter
        self._answers[key] = dest
        self._at(now + self._rng.uniform(0, spread), "answer", key)

    def _on_chat(self, msg: codec.Chat, late: bool, now: float) -> None:
        c = self.config
        if c.member and (c.all_rooms or msg.room in c.rooms):
            self._events.append(
                ev.ChatReceived(
                    msg.sender.hex(), msg.nick, msg.room, msg.text, msg.seq, late, msg.instance
                )
            )
            self._keep_line(msg.room, msg.sender, msg.instance, msg.seq, msg.nick, msg.text, now)

    def _on_notice(self, msg: codec.Notice, ip: str, now: float) -> None:
        if not self.config.member:
            return
        # Every copy is acknowledged: the sender repeats because acks get lost too.
        ack = codec.Ack(self._id, self._inst, codec.T_NOTICE, msg.seq, msg.instance)
        self._answer(ack, (ip, msg.uport))
        late = self._stream_arrival(msg.sender, msg.instance, msg.seq, msg.nick, now)
        if late is not None:
            self._events.append(
                ev.NoticeReceived(msg.sender.hex(), msg.nick, msg.text, msg.seq, late)
            )

    def _on_direct(self, msg: codec.Direct, source: Address) -> None:
        if not self.config.member:
            self.stats.unexpected += 1
            return
        ack = codec.Ack(self._id, self._inst, codec.T_DIRECT, msg.msg_id, msg.instance)
        self._answer(ack, source)
        if self._fresh(self._direct_windows, msg.sender, msg.instance, msg.msg_id):
            self._events.append(ev.DirectReceived(msg.sender.hex(), msg.nick, msg.text, msg.msg_id))

    def _on_ack(self, msg: codec.Ack) -> None:
        if msg.ref_instance != self._inst:
            self.stats.unexpected += 1
            return
        if msg.kind == codec.T_DIRECT:
            pending = self._directs.get(msg.ref)
            if pending is None or pending.peer != msg.sender:
                self.stats.duplicates += 1
                return
            del self._directs[msg.ref]
            self._events.append(ev.DirectDelivered(msg.ref, msg.sender.hex(), pending.attempts))
        else:
            notice = self._notices.get(msg.ref)
            if notice is None or msg.sender in notice.acked:
                self.stats.duplicates += 1
                return
            notice.acked.add(msg.sender)
            self._events.append(ev.NoticeAcknowledged(msg.ref, msg.sender.hex()))

    # ------------------------------------------- loss repair (PROTOCOL.md 10)

    # Sender side: keep our stream datagrams, repair them on request.

    def _keep(self, data: bytes, now: float) -> None:
        """Keep the datagram of seq self._seq for repair (plain bytes: sealed when sent)."""
        if not self._kept:
            self._kept_first = self._seq
        self._kept.append(_Kept(data, now))
        if len(self._kept) > _REPAIR_WINDOW:
            self._kept.popleft()
            self._kept_first += 1

    def _prune_kept(self, now: float) -> None:
        """Forget kept datagrams older than cfg.REPAIR_KEEP (called with every heartbeat)."""
        while self._kept and self._kept[0].sent_at < now - cfg.REPAIR_KEEP:
            self._kept.popleft()
            self._kept_first += 1

    def _on_nack(self, msg: codec.Nack, now: float) -> None:
        self._heard(now)
        if (msg.target_sender, msg.target_instance) == (self._id, self._inst):
            self.stats.nacks_received += 1
            self._repair(msg, now)
        else:
            self.stats.nacks_overheard += 1
            self._overheard(msg, now)

    def _repair(self, msg: codec.Nack, now: float) -> None:
        """Multicast the requested seqs again: only for a known peer, and within budget."""
        rec = self.members.get(msg.sender)
        if rec is None or rec.instance != msg.instance:
            self.stats.unexpected += 1  # a stranger's Nack never makes us send anything
            return
        bucket = self._requesters.get(msg.sender)
        if bucket is None:
            bucket = self._requesters[msg.sender] = _Bucket(_REPAIR_BURST_PER_PEER, now)
            if len(self._requesters) > _MAX_REQUESTERS:
                self._requesters.popitem(last=False)
        self._requesters.move_to_end(msg.sender)
        allowance = min(
            _MAX_REPAIRS_PER_NACK,
            bucket.refill(_REPAIR_BURST_PER_PEER, _REPAIR_RATE_PER_PEER, now),
            self._repair_bucket.refill(_REPAIR_BURST, _REPAIR_RATE, now),
        )
        if allowance < 1:
            self.stats.rate_limited += 1
            return
        self._prune_kept(now)
        gone: list[tuple[int, int]] = []
        sent = 0
        for first, last in msg.ranges:
            last = min(last, self._seq)  # never sent: nothing to say
            if first < self._kept_first and first <= last:
                gone.append((first, min(last, self._kept_first - 1)))
                first = self._kept_first
            for seq in range(first, last + 1):
                if sent >= allowance:
                    break
                kept = self._kept[seq - self._kept_first]
                if now - kept.repaired_at < cfg.REPAIR_HOLDOFF:
                    self.stats.repairs_held += 1
                    continue
                kept.repaired_at = now
                self._multicast(kept.data)
                for delay in cfg.REPAIR_REPEATS:
                    self._at(now + delay, "repeat", seq)
                sent += 1
        if gone:  # smaller than the Nack: its ranges, cut, without the target fields
            self._multicast(codec.encode(codec.Gone(self._id, self._inst, tuple(gone))))
            self.stats.gone_sent += 1
        charge = sent + bool(gone)
        bucket.tokens -= charge
        self._repair_bucket.tokens -= charge
        self.stats.repairs_sent += sent

    def _repeat_repair(self, seq: int, now: float) -> None:
        """A further copy of a repair (cfg.REPAIR_REPEATS), if seq is still kept."""
        if self._kept_first <= seq < self._kept_first + len(self._kept):
            kept = self._kept[seq - self._kept_first]
            kept.repaired_at = now
            self._multicast(kept.data)
            self.stats.repairs_sent += 1

    # Receiver side: find the holes in others' streams, ask, give up and report.

    def _stream(self, sender: bytes, instance: int, nick: str, seq: int) -> _Stream | None:
        """The stream's hole tracker, or None if untracked or new.

        A new tracker starts at seq: what came before we heard of the stream is history.
        """
        if not self.config.member:
            return None  # one-shot tools show no chat: nothing to repair
        key = (sender, instance)
        stream = self._streams.get(key)
        if stream is not None:
            self._streams.move_to_end(key)
            stream.nick = nick
            return stream
        self._timer_counter += 1
        stream = self._streams[key] = _Stream(nick, seq, self._timer_counter)
        self._stream_tokens[stream.token] = key
        instances = self._stream_instances.setdefault(sender, set())
        instances.add(instance)
        if len(instances) > _MAX_INSTANCES:
            oldest = (sender, min(instances))
            self._drop_stream(oldest, self._streams[oldest])
        if len(self._streams) > _MAX_STREAMS:
            self._drop_stream(*next(iter(self._streams.items())))
        return None

    def _drop_stream(self, key: tuple[bytes, int], stream: _Stream) -> None:
        """Stop tracking a stream; what it still misses is reported lost."""
        self._lose(key, stream, stream.holes)
        del self._streams[key]
        del self._stream_tokens[stream.token]
        instances = self._stream_instances[key[0]]
        instances.discard(key[1])
        if not instances:
            del self._stream_instances[key[0]]

    def _stream_arrival(
        self, sender: bytes, instance: int, seq: int, nick: str, now: float
    ) -> bool | None:
        """A Chat or Notice arrived: None if a duplicate, else whether it is late."""
        self._heard(now)
        window = self._stream_windows.get((sender, instance))
        late = window is not None and seq < window.highest
        fresh = self._fresh(self._stream_windows, sender, instance, seq)
        stream = self._stream(sender, instance, nick, seq)
        if stream is not None:
            if seq > stream.top:
                self._raise_top((sender, instance), stream, seq, now, arrived=True)
            else:
                self._fill(stream, seq)
        return late if fresh else None

    def _advertised(self, beat: codec.Beat, now: float) -> None:
        """A Beat tells the sender's last_seq: seqs above what we have are missing."""
        self._heard(now)
        stream = self._stream(beat.sender, beat.instance, beat.nick, beat.last_seq)
        if stream is not None and beat.last_seq > stream.top:
            key = (beat.sender, beat.instance)
            self._raise_top(key, stream, beat.last_seq, now, arrived=False)

    def _raise_top(
        self, key: tuple[bytes, int], stream: _Stream, top: int, now: float, *, arrived: bool
    ) -> None:
        """Seq `top` exists (it arrived, or a Beat said so): what lies between is missing."""
        first, last = stream.top + 1, top - 1 if arrived else top
        stream.top = top
        if first > last:
            return
        # The dedup window drops anything 1024 below the highest seq: unrepairable.
        floor = max(1, top - _DEDUP_WINDOW + 1)
        self._lose(key, stream, self._cut(stream, 1, floor - 1))
        if first < floor:
            self._lose(key, stream, [_Hole(first, floor - 1, now)])
            first = floor
        prev = stream.holes[-1] if stream.holes else None
        if prev is not None and prev.last + 1 == first and prev.tries == 0:
            prev.last = last  # still waiting for its first Nack: ask for both at once
        else:
            due = now + self._backoff()
            stream.holes.append(_Hole(first, last, due, since=now))
            self._book(stream, due)
        self._bound_holes(key, stream)

    def _fill(self, stream: _Stream, seq: int) -> None:
        """seq arrived: it is no longer missing."""
        self._cut(stream, seq, seq)

    def _cut(self, stream: _Stream, low: int, high: int) -> list[_Hole]:
        """Take seqs low..high out of the stream's holes; returns the parts taken out."""
        taken: list[_Hole] = []
        kept: list[_Hole] = []
        if low > high:
            return taken
        for hole in stream.holes:
            if hole.last < low or hole.first > high:
                kept.append(hole)
                continue
            if hole.first < low:
                kept.append(replace(hole, last=low - 1))
            taken.append(replace(hole, first=max(hole.first, low), last=min(hole.last, high)))
            if hole.last > high:
                kept.append(replace(hole, first=high + 1))
        stream.holes = kept
        return taken

    def _bound_holes(self, key: tuple[bytes, int], stream: _Stream) -> None:
        while len(stream.holes) > _MAX_HOLES:
            self._lose(key, stream, [stream.holes.pop(0)])

    def _lose(self, key: tuple[bytes, int], stream: _Stream, holes: list[_Hole]) -> None:
        """Report seqs that will not be repaired (never dropped silently)."""
        for hole in holes:
            count = hole.last - hole.first + 1
            self.stats.lost += count
            self._events.append(
                ev.MessagesLost(key[0].hex(), stream.nick, count, hole.first, hole.last)
            )

    def _book(self, stream: _Stream, when: float) -> None:
        if when < stream.booked:
            stream.booked = when
            self._at(when, "holes", stream.token)

    def _service_stream(self, token: int, now: float) -> None:
        """A stream's timer: ask for the holes that are due, or give them up."""
        key = self._stream_tokens.get(token)
        stream = self._streams.get(key) if key is not None else None
        if key is None or stream is None or stream.booked > now:
            return  # forgotten, or superseded by an earlier booking
        stream.booked = float("inf")
        if self._byes_left:
            return  # leaving: no more questions
        asked: list[_Hole] = []
        for hole in list(stream.holes):
            if hole.due > now:
                continue
            if hole.tries >= len(cfg.REPAIR_WAITS):
                stream.holes.remove(hole)
                self._lose(key, stream, [hole])
            elif hole.deferred < cfg.NACK_DEFERRALS and self._deaf_since(hole.since, now):
                hole.deferred += 1
                hole.since = now
                hole.due = now + self._backoff()
            elif len(asked) < codec.MAX_NACK_RANGES:
                asked.append(hole)
            else:
                hole.due = now + self._backoff()
        if asked:
            ranges = tuple((h.first, h.last) for h in asked)
            nack = codec.Nack(self._id, self._inst, key[0], key[1], ranges)
            self._multicast(codec.encode(nack))
            self.stats.nacks_sent += 1
            for hole in asked:
                self._asked(hole, now)
        if stream.holes:
            self._book(stream, min(h.due for h in stream.holes))

    def _backoff(self) -> float:
        """A random Nack delay in cfg.NACK_BACKOFF, truncated-exponentially distributed.

        The density grows as e^(lambda t / span) with lambda = ln(group size) + 1
        (RFC 5740 section 5.3; Nonnenmacher and Biersack): of the receivers that
        miss one seq, about one fires early and the rest late, once its Nack or
        the repair it caused has reached them.
        """
        low, high = cfg.NACK_BACKOFF
        lam = math.log(len(self.members) + 1) + 1
        return low + (high - low) * math.log1p(self._rng.random() * math.expm1(lam)) / lam

    def _deaf_after(self) -> float:
        """Silence this long means we may be deaf: cfg.NACK_DEAF_BEATS mean gaps between beats.

        The group beats about n / heartbeat_interval() times a second (the interval
        grows with the group, section 5), so the mean gap is that interval over n.
        """
        members = max(1, len(self.members))
        return cfg.NACK_DEAF_BEATS * self.heartbeat_interval() / members

    def _heard(self, now: float) -> None:
        """Some of the group's multicast arrived (Beat, Chat, Notice, Nack)."""
        if now - self._heard_at > self._deaf_after():
            self._deaf_end = now
        self._heard_at = now

    def _deaf_since(self, since: float, now: float) -> bool:
        """Whether we heard nothing for a while, now or at some time after `since`."""
        return now - self._heard_at > self._deaf_after() or self._deaf_end > since

    def _asked(self, hole: _Hole, now: float) -> None:
        """A Nack for the hole went out (ours or another's): wait for the repair, then retry."""
        wait = cfg.REPAIR_WAITS[min(hole.tries, len(cfg.REPAIR_WAITS) - 1)]
        hole.tries += 1
        hole.since = now
        hole.deferred = 0
        hole.quiet_until = now + wait
        hole.due = hole.quiet_until + self._backoff()

    def _overheard(self, msg: codec.Nack, now: float) -> None:
        """Another receiver asked: the seqs its Nack covers need no Nack of ours this round.

        A hole it covers in part is split: the covered part counts as asked, the
        rest keeps its own timer. A known peer's Nack also shows seqs exist that
        we never heard of (their sender may have crashed before its next
        heartbeat): they are missing too.
        """
        key = (msg.target_sender, msg.target_instance)
        stream = self._streams.get(key)
        if stream is None:
            return
        rec = self.members.get(msg.sender)
        if rec is not None and rec.instance == msg.instance and msg.ranges[-1][1] > stream.top:
            self._raise_top(key, stream, msg.ranges[-1][1], now, arrived=False)
        holes: list[_Hole] = []
        for hole in stream.holes:
            if now < hole.quiet_until:
                holes.append(hole)  # asked this round already: the Nack belongs to it
                continue
            for first, last, covered in _split(hole.first, hole.last, msg.ranges):
                part = replace(hole, first=first, last=last)
                if covered:
                    self._asked(part, now)
                    self.stats.nacks_suppressed += 1
                holes.append(part)
        stream.holes = holes
        self._bound_holes(key, stream)
        if stream.holes:
            self._book(stream, min(h.due for h in stream.holes))

    def _on_gone(self, msg: codec.Gone) -> None:
        """The sender cannot repair these seqs: report the ones we miss as lost now."""
        key = (msg.sender, msg.instance)
        stream = self._streams.get(key)
        if stream is None:
            return
        for first, last in msg.ranges:
            self._lose(key, stream, self._cut(stream, first, min(last, stream.top)))

    def _end_streams(self, peer: ev.PeerInfo, *, left: bool, bye: bool) -> None:
        """Older instances of the peer are over; if it left, nothing it missed will come."""
        sender = bytes.fromhex(peer.peer_id)
        for instance in sorted(self._stream_instances.get(sender, ())):
            key = (sender, instance)
            stream = self._streams[key]
            if instance < peer.instance or (instance == peer.instance and left and bye):
                self._drop_stream(key, stream)
            elif instance == peer.instance and left:
                # Timed out: it may come back, and then its Beat shows what it sent meanwhile.
                self._lose(key, stream, stream.holes)
                stream.holes = []

    # ------------------------------------------------- catch-up (PROTOCOL.md 11)

    # Holder side: keep each room's recent chat, answer Recalls with Recounts.

    def _ring(self, room: str, now: float) -> _Ring:
        """The room's kept chat (made, and its `since` set, on first use)."""
        ring = self._rings.get(room)
        if ring is None:
            ring = self._rings[room] = _Ring(now)
            if len(self._rings) > _MAX_RING_ROOMS:
                self._rings.popitem(last=False)
        self._rings.move_to_end(room)
        return ring

    def _keep_line(
        self, room: str, sender: bytes, instance: int, seq: int, nick: str, text: str, now: float
    ) -> None:
        """Keep a chat line we sent or showed, to answer late joiners of its room."""
        if self.config.member:
            self._ring(room, now).lines.append(_RingLine(sender, instance, seq, nick, text, now))

    def _on_recall(self, msg: codec.Recall, ip: str, now: float) -> None:
        """Another node catches up on a room: answer after a back-off if we hold its chat."""
        if not (self.config.member and self.started) or self._byes_left:
            return
        seen = (msg.sender, msg.nonce)
        if seen in self._recall_seen:
            self.stats.duplicates += 1  # the same request again (two NICs, a repeat)
            return
        self._recall_seen[seen] = None
        if len(self._recall_seen) > _MAX_RECALL_NONCES:
            self._recall_seen.popitem(last=False)
        ring = self._rings.get(msg.room)
        if ring is None or not (self.config.all_rooms or msg.room in self.config.rooms):
            return
        max_age = min(msg.max_age_ms / 1000, RECALL_KEEP)
        count = min(msg.max_count, RECALL_KEEP_LINES)
        chosen = [line for line in ring.lines if now - line.at <= max_age][-count:]
        if not chosen:
            return
        if msg.nonce in self._recall_answers or len(self._recall_answers) >= (
            _MAX_PENDING_RECALL_ANSWERS
        ):
            self.stats.rate_limited += 1
            return
        # A holder that heard the whole window answers first; one that joined later
        # waits, and then sends only what the first answers lacked.
        complete = ring.since <= now - max_age or len(chosen) >= count
        delay = self._rng.uniform(0, RECALL_BACKOFF) + (0 if complete else RECALL_BACKOFF)
        keys = {(line.sender, line.instance, line.seq) for line in chosen}
        self._recall_answers[msg.nonce] = _RecallAnswer(ip, msg.room, keys, now + delay)
        self._at(now + delay, "recall_answer", msg.nonce)

    def _answer_recall(self, nonce: int, now: float) -> None:
        """The back-off is over: multicast what no other holder has sent, within budget."""
        pending = self._recall_answers.get(nonce)
        if pending is None or pending.due > now:
            return  # answered already, or postponed by an overheard answer
        del self._recall_answers[nonce]
        ring = self._rings.get(pending.room)
        if ring is None or self._byes_left or self.closed:
            return
        lines = [
            line
            for line in ring.lines
            if (line.sender, line.instance, line.seq) in pending.keys
            and now - line.at <= RECALL_KEEP
        ]
        if not lines:
            self.stats.recalls_suppressed += pending.heard
            return
        entries = tuple(
            codec.RecountEntry(
                line.sender, line.instance, line.seq, line.nick,
                min(2**32 - 1, round((now - line.at) * 1000)), line.text,
            )
            for line in lines
        )  # fmt: skip
        parts = [
            codec.encode(part)
            for part in codec.split_recount(self._id, self._inst, nonce, pending.room, entries)
        ]
        source = self._recall_sources.get(pending.source)
        if source is None:
            source = self._recall_sources[pending.source] = _Bucket(_RECALL_BYTES_PER_SOURCE, now)
            if len(self._recall_sources) > _MAX_RECALL_SOURCES:
                self._recall_sources.popitem(last=False)
        self._recall_sources.move_to_end(pending.source)
        per_second = 1 / _RECALL_REFILL_PERIOD
        allowance = min(
            _RECALL_ANSWER_BYTES,
            source.refill(_RECALL_BYTES_PER_SOURCE, _RECALL_BYTES_PER_SOURCE * per_second, now),
            self._recall_bucket.refill(_RECALL_BYTES, _RECALL_BYTES * per_second, now),
        )
        while parts and sum(map(len, parts)) > allowance:
            parts.pop(0)  # over budget: the oldest lines stay unsent
        if not parts:
            self.stats.rate_limited += 1
            return
        size = sum(map(len, parts))
        for data in parts:
            self._multicast(data)
        source.tokens -= size
        self._recall_bucket.tokens -= size
        self.stats.recounts_sent += len(parts)
        self.stats.recount_bytes += size

    def _on_recount(self, msg: codec.Recount, now: float) -> None:
        """An answer: to our request (collect it), or to one we meant to answer (hold back)."""
        room = self._own_nonces.get(msg.nonce)
        if room is not None:
            self._collect(self._own_recalls[room], msg, now)
        pending = self._recall_answers.get(msg.nonce)
        if pending is not None and pending.room == msg.room:
            pending.keys -= {(e.sender, e.instance, e.seq) for e in msg.entries}
            pending.heard = True
            if pending.due < now + RECALL_SETTLE:
                pending.due = now + RECALL_SETTLE
                self._at(pending.due, "recall_answer", msg.nonce)

    # Joiner side: ask, collect the answers, hand out the lines once.

    def _send_recall(self, own: _OwnRecall, now: float) -> None:
        nonce = self._rng.getrandbits(64)
        own.nonces.append(nonce)
        self._own_nonces[nonce] = own.room
        max_age_ms = max(1, round(own.max_age * 1000))
        recall = codec.Recall(self._id, self._inst, own.room, max_age_ms, own.max_count, nonce)
        self._multicast(codec.encode(recall))
        self.stats.recalls_sent += 1
        self._at(now + RECALL_WAIT, "recall", own.token)

    def _collect(self, own: _OwnRecall, msg: codec.Recount, now: float) -> None:
        if msg.room != own.room:
            self.stats.unexpected += 1
            return
        own.answers += 1
        for entry in msg.entries:
            key = (entry.sender, entry.instance, entry.seq)
            age = entry.age_ms / 1000
            if key in own.have or key in own.lines or key[:2] == (self._id, self._inst):
                continue  # shown already: from the history, another answer, or our own
            if age <= own.max_age + _RECALL_AGE_SLACK:
                own.lines[key] = (entry, now - age)
        if len(own.lines) > own.max_count:  # an answerer may not push more than asked
            newest = sorted(own.lines.items(), key=lambda item: item[1][1])[-own.max_count :]
            own.lines = dict(newest)

    def _recall_due(self, token: int, now: float) -> None:
        """RECALL_WAIT after a request: ask again if nobody answered, else hand out the lines."""
        own = next((o for o in self._own_recalls.values() if o.token == token), None)
        if own is None:
            return
        if not own.answers and len(own.nonces) < RECALL_TRIES and not self._byes_left:
            self._send_recall(own, now)
            return
        self._end_own_recall(own.room)
        # Oldest first; each sender's lines in seq order, in the places its lines take.
        timed = sorted(own.lines.items(), key=lambda item: (item[1][1], item[0]))
        by_sender: dict[tuple[bytes, int], list[int]] = {}
        for key, _ in timed:
            by_sender.setdefault(key[:2], []).append(key[2])
        for seqs in by_sender.values():
            seqs.sort(reverse=True)
        ordered = []
        for key, _ in timed:
            seq = by_sender[key[:2]].pop()
            ordered.append(own.lines[(*key[:2], seq)])
        fresh = [
            (entry, sent_at)
            for entry, sent_at in ordered
            if self._fresh(self._stream_windows, entry.sender, entry.instance, entry.seq)
        ]
        self._events.append(ev.HistoryRecalled(own.room, len(fresh), own.answers))
        for entry, sent_at in fresh:
            self._events.append(
                ev.ChatRecalled(
                    entry.sender.hex(), entry.nick, own.room, entry.text, entry.seq,
                    entry.instance, max(0.0, now - sent_at),
                )
            )  # fmt: skip

    def _end_own_recall(self, room: str) -> None:
        own = self._own_recalls.pop(room, None)
        if own is not None:
            for nonce in own.nonces:
                self._own_nonces.pop(nonce, None)


def _split(first: int, last: int, ranges: codec.Ranges) -> list[tuple[int, int, bool]]:
    """first..last cut into consecutive parts, each (first, last, covered by `ranges`)."""
    parts: list[tuple[int, int, bool]] = []
    at = first
    for low, high in ranges:  # ascending and disjoint (codec)
        low, high = max(low, at), min(high, last)
        if low > high:
            continue
        if at < low:
            parts.append((at, low - 1, False))
        parts.append((low, high, True))
        at = high + 1
    if at <= last:
        parts.append((at, last, False))
    return parts
