"""Who is on the LAN: the peer table and the rules that move peers between states.

Rules
-----
* A peer is keyed by its peer id (stable per user and host), never by address:
  one peer heard over two interfaces is one entry with two addresses.
* Only a Beat (announcement/heartbeat) creates an entry; it carries everything
  needed to show and reach the peer. Any datagram from a known instance is a
  sign of life.
* Instances are ordered (start time in the high bits): a higher instance of a
  known peer replaces the entry (the peer restarted); a lower one is stale and
  ignored, so a restarted peer never appears twice.
* Silence is measured against the peer's heartbeat interval: the larger of the
  one it advertises and our own current one (both grow with the group, RFC
  3550 section 6.2; ours covers a peer that slowed down since its last Beat).
  Past `probe_after` intervals (longer than any gap between two Beats) the
  node pings it by unicast every `ping_interval`; three unanswered pings later
  it is unreachable (the pings then back off to one per half interval); past
  `remove_after` intervals of silence it is gone.
* A Bye removes the peer at once.

State table (GONE means the entry is deleted and PeerLeft emitted):

    state        trigger    next         event
    -----        -------    ----         -----
    (none)       BEAT       ALIVE        PeerJoined
    ALIVE        HEARD      ALIVE        -
    ALIVE        SILENT     UNREACHABLE  PeerUnreachable
    ALIVE        EXPIRED    GONE         PeerLeft("timeout")
    ALIVE        BYE        GONE         PeerLeft("bye")
    UNREACHABLE  HEARD      ALIVE        PeerReachable
    UNREACHABLE  SILENT     UNREACHABLE  -
    UNREACHABLE  EXPIRED    GONE         PeerLeft("timeout")
    UNREACHABLE  BYE        GONE         PeerLeft("bye")
    any          RESTARTED  ALIVE        PeerRestarted
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from lanchat import events as ev
from lanchat.codec import Beat

ALIVE: Final = "alive"
UNREACHABLE: Final = "unreachable"
GONE: Final = "gone"

HEARD: Final = "heard"
SILENT: Final = "silent"
EXPIRED: Final = "expired"
BYE: Final = "bye"
RESTARTED: Final = "restarted"

TRANSITIONS: Final[dict[tuple[str, str], str]] = {
    (ALIVE, HEARD): ALIVE,
    (ALIVE, SILENT): UNREACHABLE,
    (ALIVE, EXPIRED): GONE,
    (ALIVE, BYE): GONE,
    (ALIVE, RESTARTED): ALIVE,
    (UNREACHABLE, HEARD): ALIVE,
    (UNREACHABLE, SILENT): UNREACHABLE,
    (UNREACHABLE, EXPIRED): GONE,
    (UNREACHABLE, BYE): GONE,
    (UNREACHABLE, RESTARTED): ALIVE,
}

# A /22 is about the largest broadcast domain anyone runs; 4096 entries cost ~3 MB.
_MAX_PEERS: Final = 4096
# Pings at the unscaled ping interval before backing off: the unreachable
# threshold falls after the third (PROTOCOL.md section 5).
_QUICK_PINGS: Final = 3
# Entries in the check heap per peer before superseded ones are swept out.
_MAX_CHECKS_PER_PEER: Final = 4
# A host with more NICs than this toward one LAN is unheard of; older ones are forgotten.
_MAX_ADDRESSES: Final = 8


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Silence thresholds for a peer beating at the minimum interval (`heartbeat_interval`)."""

    heartbeat_interval: float
    probe_after: float
    ping_interval: float
    unreachable_after: float
    remove_after: float

    def scaled(self, interval: float) -> tuple[float, float, float, float]:
        """(probe, ping, unreachable, remove) for a peer beating every `interval` on average.

        Probe and removal scale with the interval (k intervals of silence mean
        k lost Beats whatever the interval); the unicast check after the probe
        does not: a ping round trip takes as long in a big group as in a small one.
        """
        k = max(1.0, interval / self.heartbeat_interval)
        probe = self.probe_after * k
        return (
            probe,
            self.ping_interval,
            probe + self.unreachable_after - self.probe_after,
            self.remove_after * k,
        )

    def ping_gap(self, interval: float, pings: int) -> float:
        """Wait after the `pings`-th ping of a silence: 3 quick ones, then doubling to 0.5 interval.

        A crashed peer in a big group is pinged by every member: backing off
        keeps that to ~20 pings per member instead of one every 0.5 s until removal.
        """
        k = max(1.0, interval / self.heartbeat_interval)
        if pings < _QUICK_PINGS:
            return self.ping_interval
        return min(self.ping_interval * k, self.ping_interval * 2.0 ** (pings - _QUICK_PINGS + 1))


@dataclass(slots=True)
class PeerRecord:
    """Mutable state of one known peer (internal)."""

    peer_id: bytes
    instance: int
    nick: str
    host: str
    uport: int
    status: str
    status_text: str
    rooms: tuple[str, ...]
    last_seq: int
    interval: float
    state: ev.PeerState = ALIVE
    last_heard: float = 0.0
    next_ping: float = 0.0
    pings: int = 0  # pings sent since last heard
    booked: float = float("inf")  # its live entry in Membership's check heap
    addresses: dict[str, float] = field(default_factory=dict)

    def info(self) -> ev.PeerInfo:
        """Freeze into a PeerInfo snapshot."""
        ordered = sorted(self.addresses, key=self.addresses.__getitem__, reverse=True)
        return ev.PeerInfo(
            peer_id=self.peer_id.hex(),
            instance=self.instance,
            nick=self.nick,
            host=self.host,
            address=ordered[0] if ordered else "",
            port=self.uport,
            addresses=tuple(ordered),
            rooms=self.rooms,
            status=self.status,
            status_text=self.status_text,
            state=self.state,
            last_heard=self.last_heard,
            heartbeat_interval=self.interval,
        )

    def destinations(self) -> list[tuple[str, int]]:
        """Unicast addresses, most recently heard first."""
        ordered = sorted(self.addresses, key=self.addresses.__getitem__, reverse=True)
        return [(ip, self.uport) for ip in ordered]

    def touch(self, ip: str, now: float) -> None:
        self.last_heard = now
        self.addresses[ip] = now
        if len(self.addresses) > _MAX_ADDRESSES:
            del self.addresses[min(self.addresses, key=self.addresses.__getitem__)]


class Membership:
    """The peer table; every method returns the events its change caused."""

    def __init__(self, timeouts: Timeouts) -> None:
        self.timeouts = timeouts
        # Our own current (deterministic) heartbeat interval, set by the core as
        # the group grows: no peer is given less time than that.
        self.group_interval = timeouts.heartbeat_interval
        self._peers: dict[bytes, PeerRecord] = {}
        # When each peer must be checked next; an entry may be early (the peer
        # was heard since: checked, then booked again), never late, except
        # after our own interval shrank (then up to the old, longer deadline).
        self._due: list[tuple[float, int, PeerRecord]] = []
        self._counter = 0
        self.refused = 0  # beats from new peers refused because the table was full
        self.stale = 0  # datagrams from an older instance of a known peer

    def __len__(self) -> int:
        return len(self._peers)

    def __iter__(self) -> Iterator[PeerRecord]:
        return iter(list(self._peers.values()))

    def get(self, peer_id: bytes) -> PeerRecord | None:
        return self._peers.get(peer_id)

    def _move(self, rec: PeerRecord, trigger: str) -> str:
        new = TRANSITIONS[(rec.state, trigger)]
        if new == GONE:
            del self._peers[rec.peer_id]
        else:
            rec.state = ALIVE if new == ALIVE else UNREACHABLE
        return new

    def on_beat(self, beat: Beat, ip: str, now: float) -> list[ev.Event]:
        """A heartbeat arrived from ip."""
        rec = self._peers.get(beat.sender)
        interval = beat.interval_ms / 1000.0
        if rec is None or beat.instance > rec.instance:
            if rec is None and len(self._peers) >= _MAX_PEERS:
                self.refused += 1
                return []
            restarted = rec is not None
            rec = PeerRecord(
                beat.sender, beat.instance, beat.nick, beat.host, beat.uport, beat.status,
                beat.status_text, beat.rooms, beat.last_seq, interval,
            )  # fmt: skip
            self._peers[beat.sender] = rec
            rec.touch(ip, now)
            self._book(rec, self.next_deadline_for(rec))
            return [ev.PeerRestarted(rec.info()) if restarted else ev.PeerJoined(rec.info())]
        if beat.instance < rec.instance:
            self.stale += 1
            return []
        out = self._heard(rec, ip, now)
        old_nick, old_status, old_text, old_rooms = rec.nick, rec.status, rec.status_text, rec.rooms
        rec.nick, rec.host, rec.uport = beat.nick, beat.host, beat.uport
        rec.status, rec.status_text, rec.rooms = beat.status, beat.status_text, beat.rooms
        rec.last_seq, rec.interval = beat.last_seq, interval
        if self.next_deadline_for(rec) < rec.booked:  # it beats faster now
            self._book(rec, self.next_deadline_for(rec))
        if beat.nick != old_nick:
            out.append(ev.PeerRenamed(rec.info(), old_nick))
        if (beat.status, beat.status_text) != (old_status, old_text):
            out.append(ev.PeerStatusChanged(rec.info()))
        if beat.rooms != old_rooms:
            info = rec.info()
            out += [ev.PeerLeftRoom(info, r) for r in old_rooms if r not in beat.rooms]
            out += [ev.PeerJoinedRoom(info, r) for r in beat.rooms if r not in old_rooms]
        return out

    def on_heard(self, sender: bytes, instance: int, ip: str, now: float) -> list[ev.Event]:
        """Any other datagram from a peer: a sign of life if it is the known instance."""
        rec = self._peers.get(sender)
        if rec is None or instance != rec.instance:
            if rec is not None and instance < rec.instance:
                self.stale += 1
            return []
        return self._heard(rec, ip, now)

    def is_stale(self, sender: bytes, instance: int) -> bool:
        """True for a datagram from an older instance of a known peer."""
        rec = self._peers.get(sender)
        return rec is not None and instance < rec.instance

    def _heard(self, rec: PeerRecord, ip: str, now: float) -> list[ev.Event]:
        rec.touch(ip, now)
        rec.next_ping = 0.0
        rec.pings = 0
        was = rec.state
        self._move(rec, HEARD)
        return [ev.PeerReachable(rec.info())] if was == UNREACHABLE else []

    def on_bye(self, sender: bytes, instance: int) -> list[ev.Event]:
        """A peer said goodbye."""
        rec = self._peers.get(sender)
        if rec is None or instance != rec.instance:
            return []
        self._move(rec, BYE)
        return [ev.PeerLeft(rec.info(), "bye")]

    def sweep(self, now: float) -> tuple[list[ev.Event], list[PeerRecord], float]:
        """Apply silence timeouts: (events, peers to ping now, when to sweep next).

        Only peers whose check is due are looked at (a heap with one entry per
        peer, refreshed lazily): a node that knows 1000 peers does not scan
        them all whenever one of them is due.
        """
        out: list[ev.Event] = []
        to_ping: list[PeerRecord] = []
        due = self._due
        while due and due[0][0] <= now:
            when, _, rec = heapq.heappop(due)
            if self._peers.get(rec.peer_id) is not rec or when != rec.booked:
                continue  # removed or restarted since, or superseded by an earlier booking
            next_check = self._check(rec, now, out, to_ping)
            if next_check is not None:
                self._book(rec, next_check)
        return out, to_ping, due[0][0] if due else float("inf")

    def _check(
        self, rec: PeerRecord, now: float, out: list[ev.Event], to_ping: list[PeerRecord]
    ) -> float | None:
        """Apply one peer's timeouts; when it must be checked next (None: removed)."""
        interval = self.interval_of(rec)
        probe, _, unreachable, remove = self.timeouts.scaled(interval)
        # Compare with the very deadlines that are scheduled (last_heard + x),
        # never with now - last_heard: rounding could leave a due check idle.
        probe_at, remove_at = rec.last_heard + probe, rec.last_heard + remove
        unreachable_at = rec.last_heard + unreachable
        if now >= remove_at:
            self._move(rec, EXPIRED)
            out.append(ev.PeerLeft(rec.info(), "timeout"))
            return None
        if now >= unreachable_at and rec.state == ALIVE:
            self._move(rec, SILENT)
            out.append(ev.PeerUnreachable(rec.info()))
        if now < probe_at:
            return probe_at
        if now >= rec.next_ping:
            to_ping.append(rec)
            rec.next_ping = now + self.timeouts.ping_gap(interval, rec.pings)
            rec.pings += 1
        next_check = min(rec.next_ping, remove_at)
        return min(next_check, unreachable_at) if rec.state == ALIVE else next_check

    def _book(self, rec: PeerRecord, when: float) -> None:
        rec.booked = when
        self._counter += 1
        heapq.heappush(self._due, (when, self._counter, rec))
        if len(self._due) > _MAX_CHECKS_PER_PEER * (len(self._peers) + 1):
            # Superseded entries piled up (a peer shrinking its interval beat after
            # beat): keep the live ones only.
            self._due = [e for e in self._due if self._peers.get(e[2].peer_id) is e[2]]
            self._due = [e for e in self._due if e[0] == e[2].booked]
            heapq.heapify(self._due)

    def interval_of(self, rec: PeerRecord) -> float:
        """The interval a peer's silence is measured in: its own or ours, whichever is longer."""
        return max(rec.interval, self.group_interval)

    def next_deadline_for(self, rec: PeerRecord) -> float:
        """The first silence threshold of a freshly heard peer."""
        probe, _, _, _ = self.timeouts.scaled(self.interval_of(rec))
        return rec.last_heard + probe
