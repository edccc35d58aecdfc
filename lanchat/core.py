"""The sans-I/O protocol core: bytes and time in; datagrams, a timer and events out.

Shape (after aioquic's QuicConnection): feed `receive_datagram(data, source, now)`,
call `handle_timer(now)` when `get_timer()` is due, send what
`datagrams_to_send()` returns, and read `next_event()` until it returns None.
Nothing here reads a clock, a socket or global randomness: `now` is passed in
and jitter comes from the `random.Random` handed to the constructor.

NodeCore dispatches received datagrams and holds identity, stats and the public
API; its parts (lanchat.part) do the rest, each with its own timers: heartbeat
(Beats, Queries, Byes), delivery (notices, directs, acks), repair (PROTOCOL.md
10), catchup (section 11), reports (key mismatches) and pairing (section 12).
"""

from __future__ import annotations

import itertools
import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Final

from lanchat import codec, ratelimit
from lanchat import config as cfg
from lanchat import events as ev
from lanchat.catchup import RECALL_KEEP, RECALL_KEEP_LINES, RECALL_TRIES, RECALL_WAIT, Catchup
from lanchat.codec import DecodeError
from lanchat.config import NodeConfig
from lanchat.dedup import SeqWindow, SeqWindows
from lanchat.delivery import Delivery
from lanchat.errors import ClosedError, ConfigError, PeerError
from lanchat.heartbeat import Heartbeat
from lanchat.membership import Membership, Timeouts
from lanchat.pairing import PAIRED, Pairing
from lanchat.part import Address, Answer, Context, Datagram, Part
from lanchat.repair import Repair
from lanchat.reports import UnauthenticatedReports
from lanchat.seal import KeyRing, Opener, Sealer
from lanchat.stats import Stats
from lanchat.trace import GROUP, UNICAST, Tracer, kind_of

__all__ = [
    "RECALL_KEEP",
    "RECALL_KEEP_LINES",
    "RECALL_TRIES",
    "RECALL_WAIT",
    "Address",
    "Datagram",
    "Identity",
    "NodeCore",
    "SeqWindow",
    "Stats",
]

# Why a datagram was dropped -> the Stats counter it goes to.
# Types a node only ever unicasts (answers, pings, directs, pairing): arriving on the
# group socket they are dropped ("misdirected"), never answered.
_UNICAST_ONLY: Final = (
    codec.Ping, codec.Pong, codec.Direct, codec.Ack, codec.Pair, codec.Unpair,
)  # fmt: skip
_DROP_COUNTERS: Final = {
    "foreign": "foreign",
    "version": "wrong_version",
    "sealed": "sealed",
    "unknown key": "unknown_key",
    "forged": "forged",
    "replayed": "replayed",
    "unsealed": "unsealed",
}


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
        token_rng: random.Random | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        """`rng` draws every timing jitter; `token_rng` the probe tokens other hosts must not
        guess (default: the OS's random source; simulations pass a seeded one); `tracer` is
        told what happens to every datagram (lanchat.trace), if given."""
        self.config = config
        self.tracer = tracer
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
            ),
            token_rng,
        )
        self._out: list[Datagram] = []
        self._events: deque[ev.Event] = deque()
        self._next_sweep = float("inf")
        self._seq = 0  # multicast stream: chat and notices
        self._msg_id = 0  # direct messages
        self._stream_windows = SeqWindows(self.stats)
        self.limits = ratelimit.Limits()
        self.keys = keys
        self._sealer = Sealer(keys, identity.peer_id, identity.instance) if keys else None
        # What sealing adds to each of our datagrams: answers are charged with it.
        self._growth = codec.seal_growth(identity.instance) if keys else 0
        self._opener = Opener(keys) if keys else None
        # The parts: timers due at one instant fire in booking order across them all.
        context = Context(
            identity.peer_id, identity.instance, config.member, self.members, self.stats, rng,
            itertools.count(),
        )  # fmt: skip
        self._heartbeat = Heartbeat(context, uport=self.uport, minimum=interval, beat=self._beat)
        self._delivery = Delivery(context)
        self._reports = UnauthenticatedReports(context)
        self._repair = Repair(context, group_interval=self.heartbeat_interval)
        self._catchup = Catchup(context, stream_windows=self._stream_windows)
        self._pairing = Pairing(identity.peer_id, identity.instance, self.members, rng)
        self._pair_timers = Part(context)  # Pairing hands out (when, token) for on_timer
        self._parts: tuple[Part, ...] = (
            self._heartbeat, self._delivery, self._reports, self._repair, self._catchup,
            self._pair_timers,
        )  # fmt: skip
        self.started = False
        self.closed = False
        self._heartbeat.beat_size = float(len(self._beat()) + cfg.HEADER_BYTES)

    # ------------------------------------------------------------ public API

    @property
    def nick(self) -> str:
        return self.config.nick

    def start(self, now: float) -> None:
        """Announce this node (if a member) and ask who is there."""
        if self.started:
            return
        self.started = True
        self._heartbeat.start(now)
        for room in self.config.rooms:
            self._catchup.hear_room(room, now)  # from now on we hear all of its chat
        self._heartbeat.discover(now, member=self.config.member)

    def network_changed(self, now: float) -> None:
        """The adapter joined or left interfaces: announce again and ask who is there."""
        if self.started and not (self.closed or self._leaving):
            self._heartbeat.discover(now, member=self.config.member)

    def leave(self, now: float) -> None:
        """Say goodbye (several times); `closed` turns True once the last one is out."""
        if self.closed or self._leaving:
            return
        self._heartbeat.silence()
        self._pairing.stop(now)  # a partner hears "left" now, not at our Bye
        self._drain_pairing()
        if not (self.config.member and self.started):
            self.closed = True
            return
        self._heartbeat.say_goodbye(now)
        self._repair.leaving = self._catchup.leaving = True

    def say(self, room: str, text: str, now: float) -> int:
        """Send a chat message to a room; returns its sequence number."""
        self._check_open()
        room = codec.check_room(room)
        codec.check_text(text)
        self._seq += 1
        data = codec.encode(codec.Chat(self._id, self._inst, self._seq, self.nick, room, text))
        self._repair.keep(self._seq, data, now)
        self._catchup.keep_line(room, self._id, self._inst, self._seq, self.nick, text, now)
        self._multicast(data)
        if self.config.member:
            self._heartbeat.tail(now)
        return self._seq

    def notice(self, text: str, now: float) -> int:
        """Send a notice to every peer (repeated); returns its sequence number."""
        self._check_open()
        codec.check_text(text)
        self._delivery.check_notice_room()
        self._seq += 1
        data = codec.encode(
            codec.Notice(self._id, self._inst, self._seq, self.nick, text, self.uport)
        )
        self._repair.keep(self._seq, data, now)
        self._delivery.send_notice(self._seq, data, now)
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
        self._delivery.check_direct_room()
        self._msg_id += 1
        data = codec.encode(codec.Direct(self._id, self._inst, self._msg_id, self.nick, text))
        self._delivery.send_direct(self._msg_id, rec.peer_id, data, rec.destinations(), now)
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
                self._catchup.hear_room(room, now)

    def leave_room(self, room: str, now: float) -> None:
        """Leave a room."""
        room = codec.check_room(room)
        if room in self.config.rooms:
            self._reconfigure(now, rooms=tuple(r for r in self.config.rooms if r != room))
            if not self.config.all_rooms:
                self._catchup.forget_room(room)
            self._catchup.end_own_recall(room)

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
        self._heartbeat.query(now)

    def heartbeat_interval(self) -> float:
        """The mean interval between our heartbeats now (RFC 3550 section 6.2's Td).

        max(minimum, n / datagram budget, n x mean Beat size / byte budget),
        n = known members + ourselves: the group's heartbeats stay within budget.
        """
        return self._heartbeat.interval()

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
        self._catchup.ask(room, max_age, max_count, known, now)
        self._drain(self._catchup)

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
        if self.tracer is not None:
            for dgram in out:
                self.tracer.datagram_queued(dgram.to, kind_of(dgram.data))
        if self._sealer is not None:
            sealer = self._sealer  # sealed now, so every repeat gets a fresh counter
            out = [Datagram(codec.seal(d.data, sealer), d.to) for d in out]
        return out

    def next_event(self) -> ev.Event | None:
        """The next event, or None."""
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """When handle_timer should next be called (the earliest of the parts'), or None."""
        timers = [when for part in self._parts if (when := part.get_timer()) is not None]
        when = min(self._next_sweep, *timers) if timers else self._next_sweep
        return None if when == float("inf") else when

    def handle_timer(self, now: float) -> None:
        """Do everything that is due at `now`.

        The parts' timers fire one at a time, earliest (then first booked) first,
        whichever part owns them; then the Beat and the peer table's sweep.
        """
        while not self.closed:
            part = min(self._parts, key=lambda p: p.timers.first())
            if not part.handle_timer(now):
                break
            self._drain(part)
            self.closed = self._heartbeat.said_goodbye
        if self.closed:  # goodbye said: no retries, repeats or pings any more
            for part in self._parts:
                part.timers.clear()
            self._heartbeat.stop()
            self._next_sweep = float("inf")
            return
        if self._heartbeat.beat_if_due(now):
            self._repair.prune(now)
        self._drain(self._heartbeat)
        if self._next_sweep <= now:
            self.members.group_interval = self.heartbeat_interval()
            events, _, self._next_sweep = self.members.sweep(now)
            self._emit(events)  # and the pings the sweep queued
            self._heartbeat.reconsider_down(now)

    def receive_datagram(
        self, data: bytes, source: Address, now: float, *, on_link: bool = True, channel: str = ""
    ) -> None:
        """Handle one datagram from `source` (ip, port). Never raises on remote input.

        `on_link`: False if the source is on none of the node's subnets and the node
        keeps to its link (TTL 1): then it is dropped, and nothing ever answers it.
        `channel`: the socket it came in on (lanchat.trace), only told to the tracer.
        """
        self.stats.received += 1
        tracer = self.tracer
        if self.closed:  # a node that said goodbye answers nothing (not even pings)
            return self._dropped("closed", source, channel, now)
        if not on_link:
            return self._dropped("off_link", source, channel, now)
        # Before decoding (section 13): our own multicast looped back, then the limits.
        sender = codec.peek_sender(data)
        if sender == self._id:
            return self._dropped("own", source, channel, now)
        known = sender is not None and self.members.get(sender) is not None
        verdict = self.limits.admit(source[0], len(data), now, known=known)
        if verdict:
            why = "flooded" if verdict == ratelimit.FLOODED else "overloaded"
            return self._dropped(why, source, channel, now)
        try:
            msg = codec.decode(data, self._opener)
        except DecodeError as exc:
            self._reports.note(exc.reason, source[0], now)
            self._drain(self._reports)
            why = _DROP_COUNTERS.get(exc.reason, "malformed")
            return self._dropped(why, source, channel, now)
        if msg.sender == self._id:
            return self._dropped("own", source, channel, now)
        if self.members.is_stale(msg.sender, msg.instance):
            return self._dropped("stale", source, channel, now)
        if channel == GROUP and isinstance(msg, _UNICAST_ONLY):
            # Nothing sends these to the group; the group answering a faked source
            # would multiply its bytes by the members (PROTOCOL.md 13.3).
            return self._dropped("misdirected", source, channel, now)
        ip = source[0]
        self._delivery.heard_from(msg.sender)
        if isinstance(msg, codec.Beat):
            if self.members.get(msg.sender) is None and not self.limits.admit_peer(ip, now):
                return self._dropped("refused", source, channel, now)  # new-peer rate (13.2)
            if tracer is not None:
                tracer.datagram_accepted(source, channel, "Beat", msg.sender, now)
            self._heartbeat.beat_heard(len(data))
            self._emit(self.members.on_beat(msg, ip, now))
            self._next_sweep = min(self._next_sweep, self.members.next_check())
            self.members.group_interval = self.heartbeat_interval()
            rec = self.members.get(msg.sender)
            if rec is not None:
                self._next_sweep = min(self._next_sweep, self.members.next_deadline_for(rec))
                if rec.instance == msg.instance:
                    self._repair.advertised(msg, now)
                    self._drain(self._repair)
            return
        if tracer is not None:
            tracer.datagram_accepted(source, channel, type(msg).__name__, msg.sender, now)
        if isinstance(msg, codec.Pong):  # its token says what it answers (PROTOCOL.md 13.6)
            self._emit(self.members.on_pong(msg.sender, msg.instance, msg.token, ip, now))
            self._next_sweep = min(self._next_sweep, self.members.next_check())
            return
        self._emit(self.members.on_heard(msg.sender, msg.instance, ip, now))
        self._next_sweep = min(self._next_sweep, self.members.next_check())
        self._dispatch(msg, source, now, channel)

    # ------------------------------------------------------------- internals

    @property
    def _id(self) -> bytes:
        return self.identity.peer_id

    @property
    def _inst(self) -> int:
        return self.identity.instance

    @property
    def _leaving(self) -> bool:
        """Saying goodbye: Byes are booked but not all out yet."""
        return self._heartbeat.byes_left > 0

    def _check_open(self) -> None:
        if self.closed or self._leaving:
            raise ClosedError("the node is closed")

    def _dropped(self, counter: str, source: Address, channel: str, now: float) -> None:
        """Count a dropped datagram under its Stats counter and tell the tracer why."""
        if hasattr(self.stats, counter):
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)
        if self.tracer is not None:
            self.tracer.datagram_dropped(source, channel, counter, now)

    def _dispatch(self, msg: codec.Message, source: Address, now: float, channel: str = "") -> None:
        """A decoded datagram other than a Beat, from a current instance: to its part."""
        ip = source[0]
        match msg:
            case codec.Query():
                if self.config.member and self.started and not self._leaving:
                    self._heartbeat.on_query(msg, ip, now)
                    self._drain(self._heartbeat)
            case codec.Bye():
                self._emit(self.members.on_bye(msg.sender, msg.instance))
                self._heartbeat.reconsider_down(now)
            case codec.Chat():
                late = self._stream_arrival(msg.sender, msg.instance, msg.seq, msg.nick, now)
                if late is not None:
                    self._on_chat(msg, late, now)
            case codec.Notice():
                self._on_notice(msg, source, now, by_unicast=channel == UNICAST)
            case codec.Direct():
                self._delivery.on_direct(msg, source)
                self._drain(self._delivery)
            case codec.Ack():
                self._delivery.on_ack(msg)
                self._drain(self._delivery)
            case codec.Ping():
                self._answer(codec.Pong(self._id, self._inst, msg.token), source)
            case codec.Nack():
                self._repair.on_nack(msg, self._seq, now)
                self._drain(self._repair)
            case codec.Gone():
                self._repair.on_gone(msg)
                self._drain(self._repair)
            case codec.Recall():
                if self.config.member and self.started and not self._leaving:
                    shown = self.config.all_rooms or msg.room in self.config.rooms
                    self._catchup.on_recall(msg, ip, now, shown=shown)
            case codec.Recount():
                self._catchup.on_recount(msg, now)
            case codec.Seek():
                self._pairing.on_seek(msg, now)
                self._drain_pairing()
            case codec.Pair():
                self._pairing.on_pair(msg, source, now)
                self._drain_pairing()
            case codec.Unpair():
                self._pairing.on_unpair(msg, source, now)
                self._drain_pairing()

    def _emit(self, events: list[ev.Event]) -> None:
        """Queue membership events; a peer that left or restarted ends its streams' repair."""
        for event in events:
            self._events.append(event)
            match event:
                case ev.PeerLeft(peer=peer, reason=reason):
                    self._repair.end_streams(peer, left=True, bye=reason == "bye")
                    self._drain(self._repair)
                case ev.PeerJoined(peer=peer) | ev.PeerRestarted(peer=peer):
                    self._repair.end_streams(peer, left=False, bye=False)
                    self._drain(self._repair)
            if isinstance(event, ev.PeerLeft | ev.PeerRestarted):
                self._pairing.peer_gone(event.peer)
                self._drain_pairing()
        for probe in self.members.take_probes():  # address probes and liveness pings
            ping = codec.encode(codec.Ping(self._id, self._inst, probe.token))
            self._unicast_charged(ping, (probe.ip, probe.port))

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

    def _drain(self, part: Part) -> None:
        """Send and emit what a part queued (an Answer within its destination's credit)."""
        for item in part.take_out():
            if isinstance(item, Answer):
                self._unicast_charged(item.data, item.to)
            else:
                self._out.append(item)
        self._events.extend(part.take_events())

    def _drain_pairing(self) -> None:
        """Send, book and emit what the pairing logic queued (PROTOCOL.md section 12)."""
        pairing = self._pairing
        for msg, to, via in pairing.take_out():
            data = codec.encode(msg)
            if to is None:
                self._multicast(data)
                continue
            rec = self.members.get(to)
            # A peer's verified addresses; until it has one, the source that spoke.
            dests = (rec.destinations() if rec is not None else []) or ([via] if via else [])
            for dest in dests:  # unicast answers a remote peer's datagram: charged (13.3)
                self._unicast_charged(data, dest)
        for when, token in pairing.take_timers():
            self._pair_timers.timers.book(when, self._pair_timer, token)
        self._events.extend(pairing.take_events())

    def _pair_timer(self, token: int, now: float) -> None:
        self._pairing.on_timer(token, now)
        self._drain_pairing()

    def _reconfigure(self, now: float, **changes: object) -> None:
        self._check_open()
        self.config = replace(self.config, **changes)  # type: ignore[arg-type]
        if self.config.member and self.started:
            self._heartbeat.announce(now)

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

    def _stream_arrival(
        self, sender: bytes, instance: int, seq: int, nick: str, now: float
    ) -> bool | None:
        """A Chat or Notice arrived: None if a duplicate, else whether it is late."""
        highest = self._stream_windows.highest(sender, instance)
        late = highest is not None and seq < highest
        fresh = self._stream_windows.fresh(sender, instance, seq)
        self._repair.arrived(sender, instance, seq, nick, now)
        self._drain(self._repair)
        return late if fresh else None

    def _on_chat(self, msg: codec.Chat, late: bool, now: float) -> None:
        c = self.config
        if c.member and (c.all_rooms or msg.room in c.rooms):
            self._events.append(
                ev.ChatReceived(
                    msg.sender.hex(), msg.nick, msg.room, msg.text, msg.seq, late, msg.instance
                )
            )
            keep = self._catchup.keep_line
            keep(msg.room, msg.sender, msg.instance, msg.seq, msg.nick, msg.text, now)

    def _on_notice(
        self, msg: codec.Notice, source: Address, now: float, *, by_unicast: bool
    ) -> None:
        if not self.config.member:
            return
        # Every copy is acknowledged: the sender repeats because acks get lost too.
        # A copy sent to us alone is acked to its source; one sent to the group only
        # to a known peer's current instance at its verified address, so a faked
        # source cannot have the whole group answer it (PROTOCOL.md 13.3).
        ack = codec.encode(codec.Ack(self._id, self._inst, codec.T_NOTICE, msg.seq, msg.instance))
        if by_unicast:
            self._unicast_charged(ack, (source[0], msg.uport))
        else:
            rec = self.members.get(msg.sender)
            if rec is not None and rec.instance == msg.instance:
                for dest in rec.destinations()[:1]:
                    self._unicast_charged(ack, dest)
        late = self._stream_arrival(msg.sender, msg.instance, msg.seq, msg.nick, now)
        if late is not None:
            self._events.append(
                ev.NoticeReceived(msg.sender.hex(), msg.nick, msg.text, msg.seq, late)
            )
