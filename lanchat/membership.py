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
* Addresses are verified (PROTOCOL.md 13.6): a datagram from an address the
  peer was not verified at makes that address a *candidate*, probed with a
  Ping whose token is random; it becomes one of the peer's addresses only when
  a Pong with that token comes back from it, sent by that peer's current
  instance. Unicast goes to verified addresses only (until the first one is
  verified, a new peer is shown at its candidate). Only datagrams from a
  verified address are signs of life; an address silent for the removal time
  is forgotten.
* No takeover: a Beat with a higher instance of a known peer does not replace
  it at once. The known instance is probed at its verified addresses (and the
  newcomer at its source); a Pong from the known instance keeps the entry (a
  forged restart), a Pong from the new instance at a verified address accepts
  the restart at once, and if nobody answers within `CHALLENGE_WAIT` the
  known instance is gone and the restart is accepted. A peer's advertised
  interval counts for at most `_MAX_INTERVAL_RATIO` times our own.

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
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final, NamedTuple

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
# Unverified addresses probed at once per peer: a host with a few NICs needs a few;
# a forger sending from many addresses gets the oldest probes dropped.
_MAX_CANDIDATES: Final = 4
# Probes of one candidate address, this far apart: three round trips at 20 % loss all
# fail 1 % of the time, and the next datagram from there starts a new round.
PROBE_TRIES: Final = 3
PROBE_GAP: Final = 0.25
# A restart is believed after the known instance stayed silent to this many seconds of
# probes (three at PROBE_GAP, and a round trip's slack); a restart at the same address
# is believed at once, when its Pong comes back (one round trip).
CHALLENGE_WAIT: Final = PROBE_TRIES * PROBE_GAP + 0.25
# A peer's advertised interval stretches its timeouts to at most this many times our own
# interval: peers see about the same group (their Td differs little from ours), and a
# forged Beat with interval 3,600 s cannot keep a ghost for hours.
_MAX_INTERVAL_RATIO: Final = 10.0
# Liveness-ping tokens remembered per peer (a Pong with an older one is no sign of life).
_MAX_PING_TOKENS: Final = 8


class Probe(NamedTuple):
    """A Ping to send: to (ip, port), with a random token the answer must echo."""

    ip: str
    port: int
    token: int


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
    addresses: dict[str, float] = field(default_factory=dict)  # verified ip -> last heard
    candidates: dict[str, _Candidate] = field(default_factory=dict)  # ip -> its probe round
    ping_tokens: dict[int, str] = field(default_factory=dict)  # liveness ping token -> ip
    challenge: _Challenge | None = None  # a higher instance claims to be this peer

    def info(self) -> ev.PeerInfo:
        """Freeze into a PeerInfo snapshot (a new peer is shown at its candidate address)."""
        ordered = self._ordered() or list(self.candidates)[:1]
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

    def _ordered(self) -> list[str]:
        return sorted(self.addresses, key=self.addresses.__getitem__, reverse=True)

    def destinations(self) -> list[tuple[str, int]]:
        """Verified unicast addresses, most recently heard first."""
        return [(ip, self.uport) for ip in self._ordered()]

    def touch(self, ip: str, now: float) -> None:
        """Life from a verified address."""
        self.last_heard = now
        self.addresses[ip] = now
        if len(self.addresses) > _MAX_ADDRESSES:
            del self.addresses[min(self.addresses, key=self.addresses.__getitem__)]


@dataclass(slots=True)
class _Candidate:
    """An address a peer was heard from but not yet verified at: its probe round."""

    token: int
    tries: int
    next_probe: float


@dataclass(slots=True)
class _Challenge:
    """A Beat of a higher instance of a known peer, waiting for the known one to answer."""

    beat: Beat
    ip: str  # where the Beat came from
    tokens: dict[int, str]  # probe token -> the ip it went to
    deadline: float  # no answer from the known instance by then: the restart is real


class Membership:
    """The peer table; every method returns the events its change caused."""

    def __init__(self, timeouts: Timeouts, rng: random.Random | None = None) -> None:
        self.timeouts = timeouts
        # Probe tokens must be unguessable by other hosts: the node passes the
        # OS's random source (random.SystemRandom); simulations pass a seeded one.
        self._rng = rng if rng is not None else random.SystemRandom()
        self._probes: list[Probe] = []
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
        self.unverified = 0  # datagrams of a known peer from an address not verified yet
        self.takeovers_refused = 0  # higher instances claiming a peer that answered
        self.unexpected_pongs = 0  # Pongs with no probe or ping of ours behind them

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
        if rec is None:
            if len(self._peers) >= _MAX_PEERS:
                self.refused += 1
                return []
            return [ev.PeerJoined(self._create(beat, ip, now).info())]
        if beat.instance > rec.instance:
            self._challenge(rec, beat, ip, now)
            return []
        if beat.instance < rec.instance:
            self.stale += 1
            return []
        if not self._counts(rec, ip, now):
            return []  # a Beat from an unverified address changes nothing yet
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
        """Any other datagram from a peer: a sign of life if it is the known instance
        at a verified address (from elsewhere, that address is probed)."""
        rec = self._peers.get(sender)
        if rec is None or instance != rec.instance:
            if rec is not None and instance < rec.instance:
                self.stale += 1
            return []
        if not self._counts(rec, ip, now):
            return []
        return self._heard(rec, ip, now)

    def _counts(self, rec: PeerRecord, ip: str, now: float) -> bool:
        """Whether a datagram of the peer's current instance from `ip` is life (and news).

        From a verified address, yes. From elsewhere the address is probed; it counts
        only while the peer has no verified address at all and `ip` is the candidate it
        is shown at (a new peer whose probes were lost is not dropped for that).
        """
        if ip in rec.addresses:
            return True
        self.unverified += 1
        self._candidate(rec, ip, now)
        return not rec.addresses and ip in rec.candidates

    def on_pong(
        self, sender: bytes, instance: int, token: int, ip: str, now: float
    ) -> list[ev.Event]:
        """A Pong: it verifies an address, shows life, or settles a restart challenge."""
        rec = self._peers.get(sender)
        if rec is None:
            self.unexpected_pongs += 1
            return []
        challenge = rec.challenge
        if challenge is not None and challenge.tokens.get(token) == ip:
            if instance == rec.instance:  # the known instance is alive: a forged restart
                rec.challenge = None
                self.takeovers_refused += 1
                return self._heard(rec, ip, now) if ip in rec.addresses else []
            if instance == challenge.beat.instance and ip in rec.addresses:
                return self._restart(rec, now, ip)  # the new instance holds a verified address
        if instance != rec.instance:
            self.unexpected_pongs += 1
            return []
        candidate = rec.candidates.get(ip)
        if candidate is not None and candidate.token == token:
            del rec.candidates[ip]
            return self._heard(rec, ip, now)
        if rec.ping_tokens.get(token) == ip:
            return self._heard(rec, ip, now)
        self.unexpected_pongs += 1
        return []

    def next_check(self) -> float:
        """When the sweep must run next (a probe, challenge or silence threshold is due)."""
        return self._due[0][0] if self._due else float("inf")

    def take_probes(self) -> list[Probe]:
        """The Pings to send now (address probes, challenges and liveness pings)."""
        probes, self._probes = self._probes, []
        return probes

    def _create(self, beat: Beat, ip: str, now: float, verified: str | None = None) -> PeerRecord:
        rec = PeerRecord(
            beat.sender, beat.instance, beat.nick, beat.host, beat.uport, beat.status,
            beat.status_text, beat.rooms, beat.last_seq, beat.interval_ms / 1000.0,
        )  # fmt: skip
        self._peers[beat.sender] = rec
        rec.last_heard = now
        if verified is not None:
            rec.addresses[verified] = now
        self._book(rec, self.next_deadline_for(rec))
        if ip != verified:
            self._candidate(rec, ip, now)
        return rec

    def _token(self) -> int:
        return self._rng.getrandbits(64)

    def _candidate(self, rec: PeerRecord, ip: str, now: float) -> None:
        """Probe an address the peer was heard from but not verified at (one round at a time)."""
        candidate = rec.candidates.get(ip)
        if candidate is not None and (candidate.tries < PROBE_TRIES or now < candidate.next_probe):
            return  # a round is under way (its next probes come from the sweep), or just failed
        if candidate is None and len(rec.candidates) >= _MAX_CANDIDATES:
            del rec.candidates[next(iter(rec.candidates))]
        rec.candidates[ip] = _Candidate(self._token(), 1, now + PROBE_GAP)
        self._probes.append(Probe(ip, rec.uport, rec.candidates[ip].token))
        self._book(rec, min(rec.booked, now + PROBE_GAP))

    def _challenge(self, rec: PeerRecord, beat: Beat, ip: str, now: float) -> None:
        """A higher instance claims the peer: ask the known one (and the newcomer) who is there."""
        challenge = rec.challenge
        if challenge is not None and beat.instance <= challenge.beat.instance:
            return  # the same claim again: its probes are out
        tokens: dict[int, str] = {}
        targets = [(dest_ip, rec.uport) for dest_ip in rec.addresses]
        targets.append((ip, beat.uport))
        for dest_ip, port in targets:
            token = self._token()
            tokens[token] = dest_ip
            self._probes.append(Probe(dest_ip, port, token))
        rec.challenge = _Challenge(beat, ip, tokens, now + CHALLENGE_WAIT)
        self._book(rec, min(rec.booked, rec.challenge.deadline))

    def _restart(self, rec: PeerRecord, now: float, verified: str | None) -> list[ev.Event]:
        """Accept the challenger: the entry is replaced by the new instance."""
        assert rec.challenge is not None
        new = self._create(rec.challenge.beat, rec.challenge.ip, now, verified)
        return [ev.PeerRestarted(new.info())]

    def is_stale(self, sender: bytes, instance: int) -> bool:
        """True for a datagram from an older instance of a known peer."""
        rec = self._peers.get(sender)
        return rec is not None and instance < rec.instance

    def _heard(self, rec: PeerRecord, ip: str, now: float) -> list[ev.Event]:
        if ip in rec.addresses or ip not in rec.candidates:
            rec.touch(ip, now)  # a verified address (the Pong just verified it, or before)
        else:
            rec.last_heard = now  # its unverified candidate: life, not an address yet
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
        if rec.challenge is not None and now >= rec.challenge.deadline:
            out += self._restart(rec, now, None)  # the known instance never answered
            return None  # the new entry booked its own check
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
        for ip in [a for a, heard in rec.addresses.items() if now >= heard + remove]:
            del rec.addresses[ip]  # silent there for the removal time: moved away
        extra = [self._reprobe(rec, now)]
        if rec.challenge is not None:
            extra.append(rec.challenge.deadline)
        if now >= unreachable_at and rec.state == ALIVE:
            self._move(rec, SILENT)
            out.append(ev.PeerUnreachable(rec.info()))
        if now < probe_at:
            return min(probe_at, *extra)
        if now >= rec.next_ping:
            to_ping.append(rec)
            self._ping(rec)
            rec.next_ping = now + self.timeouts.ping_gap(interval, rec.pings)
            rec.pings += 1
        next_check = min(rec.next_ping, remove_at, *extra)
        return min(next_check, unreachable_at) if rec.state == ALIVE else next_check

    def _reprobe(self, rec: PeerRecord, now: float) -> float:
        """Probe candidates again when due, forget failed ones; when next to look."""
        due = float("inf")
        for ip, candidate in list(rec.candidates.items()):
            if now < candidate.next_probe:
                due = min(due, candidate.next_probe)
            elif candidate.tries < PROBE_TRIES:
                candidate.tries += 1
                candidate.next_probe = now + PROBE_GAP
                self._probes.append(Probe(ip, rec.uport, candidate.token))
                due = min(due, candidate.next_probe)
            elif rec.addresses:
                del rec.candidates[ip]  # never answered: not the peer's address
        return due

    def _ping(self, rec: PeerRecord) -> None:
        """A liveness ping to each verified address, each with a fresh random token."""
        for ip, port in rec.destinations():
            token = self._token()
            rec.ping_tokens[token] = ip
            if len(rec.ping_tokens) > _MAX_PING_TOKENS:
                del rec.ping_tokens[next(iter(rec.ping_tokens))]
            self._probes.append(Probe(ip, port, token))

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
        """The interval a peer's silence is measured in: its own or ours, whichever is longer
        (its own counting for at most `_MAX_INTERVAL_RATIO` times ours)."""
        own = self.group_interval
        return max(min(rec.interval, _MAX_INTERVAL_RATIO * own), own)

    def next_deadline_for(self, rec: PeerRecord) -> float:
        """The first silence threshold of a freshly heard peer."""
        probe, _, _, _ = self.timeouts.scaled(self.interval_of(rec))
        return rec.last_heard + probe
