"""The sans-I/O protocol core: bytes and time in; datagrams, a timer and events out.

Shape (after aioquic's QuicConnection): feed `receive_datagram(data, source, now)`,
call `handle_timer(now)` when `get_timer()` is due, send what
`datagrams_to_send()` returns, and read `next_event()` until it returns None.
Nothing here reads a clock, a socket or global randomness: `now` is passed in
and jitter comes from the `random.Random` handed to the constructor.
"""

from __future__ import annotations

import heapq
import random
from collections import OrderedDict, deque
from dataclasses import dataclass, field, replace
from typing import Any, Final

from lanchat import codec
from lanchat import config as cfg
from lanchat import events as ev
from lanchat.codec import DecodeError
from lanchat.config import NodeConfig
from lanchat.errors import ClosedError, ConfigError, PeerError
from lanchat.membership import Membership, PeerRecord, Timeouts
from lanchat.seal import KeyRing, Opener, Sealer

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
    rate_limited: int = 0


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
        self._next_beat = float("inf")
        self._announce_left: list[float] = []
        self._next_sweep = float("inf")
        self._seq = 0  # multicast stream: chat and notices
        self._msg_id = 0  # direct messages
        self._ping_token = 0
        self._stream_windows: OrderedDict[tuple[bytes, int], SeqWindow] = OrderedDict()
        self._direct_windows: OrderedDict[tuple[bytes, int], SeqWindow] = OrderedDict()
        self._answered: OrderedDict[Address, float] = OrderedDict()
        self._answers: dict[int, Address] = {}
        self._directs: dict[int, _PendingDirect] = {}
        self._notices: dict[int, _PendingNotice] = {}
        self._byes_left = 0
        self.keys = keys
        self._sealer = Sealer(keys, identity.peer_id, identity.instance) if keys else None
        self._opener = Opener(keys) if keys else None
        self._unauth: dict[tuple[str, str], list[float]] = {}
        self.started = False
        self.closed = False

    # ------------------------------------------------------------ public API

    @property
    def nick(self) -> str:
        return self.config.nick

    def start(self, now: float) -> None:
        """Announce this node (if a member) and ask who is there."""
        if self.started:
            return
        self.started = True
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
        msg = codec.Chat(self._id, self._inst, self._seq, self.nick, room, text)
        self._multicast(codec.encode(msg))
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

    def leave_room(self, room: str, now: float) -> None:
        """Leave a room."""
        room = codec.check_room(room)
        if room in self.config.rooms:
            self._reconfigure(now, rooms=tuple(r for r in self.config.rooms if r != room))

    def query(self, now: float) -> None:
        """Ask the group who is there now."""
        self._at(now, "query", 0)

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
            self._send_beat(None)
            if self._announce_left:
                self._next_beat = now + self._announce_left.pop(0)
            else:
                jitter = self._rng.uniform(0.5, 1.5)
                self._next_beat = now + jitter * self.config.heartbeat_interval
        if self._next_sweep <= now:
            events, to_ping, self._next_sweep = self.members.sweep(now)
            self._events.extend(events)
            for rec in to_ping:
                self._ping(rec)

    def receive_datagram(self, data: bytes, source: Address, now: float) -> None:
        """Handle one datagram from `source` (ip, port). Never raises on remote input."""
        self.stats.received += 1
        if self.closed:
            return  # a node that said goodbye answers nothing (not even pings)
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
            self._emit(self.members.on_beat(msg, ip, now))
            rec = self.members.get(msg.sender)
            if rec is not None:
                self._next_sweep = min(self._next_sweep, self.members.next_deadline_for(rec))
            return
        self._emit(self.members.on_heard(msg.sender, msg.instance, ip, now))
        match msg:
            case codec.Query():
                self._on_query(msg, ip, now)
            case codec.Bye():
                self._emit(self.members.on_bye(msg.sender, msg.instance))
            case codec.Chat():
                if self._fresh(self._stream_windows, msg.sender, msg.instance, msg.seq):
                    self._on_chat(msg)
            case codec.Notice():
                self._on_notice(msg, ip)
            case codec.Direct():
                self._on_direct(msg, source)
            case codec.Ack():
                self._on_ack(msg)
            case codec.Ping():
                pong = codec.Pong(self._id, self._inst, msg.token)
                self._out.append(Datagram(codec.encode(pong), source))
            case codec.Pong():
                pass  # a sign of life, already counted above

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
        self._events.extend(events)

    def _multicast(self, data: bytes) -> None:
        self._out.append(Datagram(data, None))

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
        """Queries with back-off and, for a member, announcements: what a start sends."""
        delays = cfg.QUERY_DELAYS if self.config.member else cfg.QUERY_DELAYS_ONESHOT
        for delay in delays:
            self._at(now + delay, "query", 0)
        if self.config.member:
            self._announce(now)

    def _announce(self, now: float) -> None:
        """Send a heartbeat now and a few more with back-off."""
        delays = list(cfg.ANNOUNCE_DELAYS)
        self._next_beat = now + delays.pop(0)
        self._announce_left = [b - a for a, b in zip(cfg.ANNOUNCE_DELAYS, delays, strict=False)]

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
                round(c.heartbeat_interval * 1000),
            )
        )

    def _send_beat(self, to: Address | None) -> None:
        self._out.append(Datagram(self._beat(), to))

    def _ping(self, rec: PeerRecord) -> None:
        self._ping_token += 1
        data = codec.encode(codec.Ping(self._id, self._inst, self._ping_token))
        self._out.extend(Datagram(data, dest) for dest in rec.destinations())

    def _fire(self, kind: str, key: int, now: float) -> None:
        if kind == "query":
            if not self.closed:
                self._multicast(codec.encode(self._query()))
        elif kind == "answer":
            dest = self._answers.pop(key, None)
            if dest is not None and not self.closed and not self._byes_left:
                self._send_beat(dest)
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
        last = self._answered.get(dest)
        if last is not None and now - last < cfg.QUERY_ANSWER_GAP:
            self.stats.rate_limited += 1
            return
        if len(self._answers) >= _MAX_PENDING_ANSWERS:
            self.stats.rate_limited += 1
            return
        self._answered[dest] = now
        self._answered.move_to_end(dest)
        if len(self._answered) > _MAX_QUERIERS:
            self._answered.popitem(last=False)
        spread = cfg.QUERY_SPREAD_PER_PEER * (len(self.members) + 1)
        spread = min(cfg.QUERY_SPREAD_MAX, max(cfg.QUERY_SPREAD_MIN, spread))
        self._timer_counter += 1
        key = self._timer_counter
        self._answers[key] = dest
        self._at(now + self._rng.uniform(0, spread), "answer", key)

    def _on_chat(self, msg: codec.Chat) -> None:
        c = self.config
        if c.member and (c.all_rooms or msg.room in c.rooms):
            self._events.append(
                ev.ChatReceived(msg.sender.hex(), msg.nick, msg.room, msg.text, msg.seq)
            )

    def _on_notice(self, msg: codec.Notice, ip: str) -> None:
        if not self.config.member:
            return
        # Every copy is acknowledged: the sender repeats because acks get lost too.
        ack = codec.Ack(self._id, self._inst, codec.T_NOTICE, msg.seq, msg.instance)
        self._out.append(Datagram(codec.encode(ack), (ip, msg.uport)))
        if self._fresh(self._stream_windows, msg.sender, msg.instance, msg.seq):
            self._events.append(ev.NoticeReceived(msg.sender.hex(), msg.nick, msg.text, msg.seq))

    def _on_direct(self, msg: codec.Direct, source: Address) -> None:
        if not self.config.member:
            self.stats.unexpected += 1
            return
        ack = codec.Ack(self._id, self._inst, codec.T_DIRECT, msg.msg_id, msg.instance)
        self._out.append(Datagram(codec.encode(ack), source))
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
