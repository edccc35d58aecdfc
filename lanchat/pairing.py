"""Random pairing (`/random`): find one other seeker, agree, talk privately (sans-I/O).

Rules (PROTOCOL.md section 12)
------------------------------
* A node that wants a partner multicasts Seek, repeated while it seeks.
* A seeker proposes (unicast) only to seekers with a *higher* peer id, so two
  proposals never cross; the highest seeker never proposes and so is always
  free to accept, which keeps the search from deadlocking.
* A node accepts a proposal only while SEEKING (not while proposing, accepting
  or paired): it is in at most one handshake, hence in at most one pair.
* The proposer is paired when the Accept arrives and answers it with Confirm
  (again for every repeated Accept); the accepting node is paired on Confirm.
* Every step is retried a bounded number of times; a handshake that gives up
  withdraws (proposer) or ends (acceptor) so the other side never stays paired.
* A pair ends by Unpair (acknowledged, retried), when the partner leaves the
  LAN or restarts, or when the partner is seen seeking again (a newer seek id).

State table (events in brackets; "send" is what goes out):

    state      trigger                 next       send / event
    -----      -------                 ----       ------------
    IDLE       seek()                  SEEKING    Seek (repeated)
    SEEKING    Seek from higher id     PROPOSING  Propose (retried)
    SEEKING    Propose                 ACCEPTING  Accept (retried)
    SEEKING    search expired          IDLE       [PairSearchExpired]
    PROPOSING  Accept (same pair)      PAIRED     Confirm [Paired]
    PROPOSING  Decline / gives up      SEEKING    (Withdraw on give up)
    PROPOSING  Propose                 PROPOSING  Decline (busy)
    ACCEPTING  Confirm (same pair)     PAIRED     [Paired]
    ACCEPTING  Withdraw / Unpair       SEEKING    -
    ACCEPTING  gives up (no Confirm)   SEEKING    Unpair abort (retried)
    PAIRED     stop() (/leave)         IDLE       Unpair (retried) [PairEnded "you left"]
    PAIRED     Unpair / Withdraw       IDLE       [PairEnded "partner left"]
    PAIRED     Unpair abort            SEEKING    [PairEnded "unconfirmed"]
    PAIRED     partner seeks anew      IDLE       [PairEnded "partner left"]
    PAIRED     partner left/restarted  IDLE       [PairEnded "partner gone"]
    any but    stop()                  IDLE       Withdraw / Unpair to the other side
      PAIRED
"""

from __future__ import annotations

import itertools
import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Final

from lanchat import codec
from lanchat import config as cfg
from lanchat import events as ev
from lanchat.membership import Membership

Address = tuple[str, int]

IDLE: Final = "idle"
SEEKING: Final = "seeking"
PROPOSING: Final = "proposing"
ACCEPTING: Final = "accepting"
PAIRED: Final = "paired"

# Seek at once and twice more within 0.3 s (a lost first Seek should not cost a
# second of waiting), then every SEEK_EVERY seconds, jittered by +-25 % so that
# seekers started together do not stay in step (RFC 3550 section 6.3.1).
SEEK_DELAYS: Final = (0.0, 0.1, 0.3)
SEEK_EVERY: Final = 1.0
# Look for a partner this long, then give up and say so: long enough for a
# colleague to notice the PairSought line and type /random, short enough that
# a forgotten search does not pair the user an hour later.
SEEK_FOR: Final = 300.0
# A seeker not heard for 3.5 s (three Seeks missed, 0.2^3 = 0.8 % at 20 % loss)
# has stopped seeking or is paired: no proposals to it.
SEEKER_FRESH: Final = 3.5
# After a Decline, do not propose to the same peer for one Seek interval: it was
# busy in another handshake, which is over (one way or the other) by then.
DECLINE_HOLDOFF: Final = SEEK_EVERY
# A Propose is sent again at these offsets: a LAN round trip takes about a
# millisecond, so the first repeat at 0.25 s is only for loss; at 20 % loss a
# round trip fails 36 % of the time, all five 0.6 % (then: another seeker).
PROPOSE_DELAYS: Final = (0.0, 0.25, 0.6, 1.2, 2.0)
# ...and the proposal is withdrawn this long after it began (one second after
# the last repeat: every answer that is coming has arrived by then).
PROPOSE_GIVE_UP: Final = 3.0
# The accepting side repeats Accept until the Confirm comes, longer than the
# proposer proposes: once the proposer has an Accept it is paired, so a failure
# here costs a pair that the proposer announced (0.36^7 = 0.08 % at 20 % loss).
ACCEPT_DELAYS: Final = (0.0, 0.25, 0.6, 1.2, 2.0, 3.5, 5.0)
ACCEPT_GIVE_UP: Final = 6.0
# Unpair is retried like a direct message (cfg.DIRECT_DELAYS over 5 s).
UNPAIR_DELAYS: Final = cfg.DIRECT_DELAYS
UNPAIR_GIVE_UP: Final = cfg.DIRECT_GIVE_UP
# Seekers remembered (one small entry per peer that sent Seek); oldest first out.
_MAX_SEEKERS: Final = 256
# Unpairs awaiting their ack: one per pair ended in the last 5 s; only a script
# pairing in a loop could have more, and an old one then simply stops retrying.
_MAX_UNPAIRS: Final = 16


@dataclass(slots=True)
class _Seeker:
    instance: int
    seek_id: int
    heard: float
    not_before: float = float("-inf")  # no proposal to it before this (it declined)


@dataclass(slots=True)
class _Handshake:
    """The pair being agreed or agreed: (proposer, pair_id) names it on the wire."""

    peer: bytes
    proposer: bytes
    pair_id: int
    started: float
    peer_seek_id: int = 0  # the partner's seek id when the pair formed
    info: ev.PeerInfo | None = None  # the partner as last known (for PairEnded)


@dataclass(slots=True)
class _Unpairing:
    peer: bytes
    via: Address | None
    kind: int


_SCHEDULES: Final = {
    PROPOSING: (PROPOSE_DELAYS, PROPOSE_GIVE_UP),
    ACCEPTING: (ACCEPT_DELAYS, ACCEPT_GIVE_UP),
}

Outgoing = tuple[codec.Message, bytes | None, Address | None]


class Pairing:
    """One node's side of random pairing. The core feeds it and drains `take_*()`."""

    def __init__(
        self, peer_id: bytes, instance: int, members: Membership, rng: random.Random
    ) -> None:
        self._id = peer_id
        self._inst = instance
        self._members = members
        self._rng = rng
        self.state = IDLE
        self.seek_id = 0  # searches started by this node
        self._seek_until = 0.0
        self._seek_started = 0.0
        self._seek_left: list[float] = []
        self._seek_gen = 0  # Seek timer chains: only the newest one goes on
        self._pair_counter = 0
        self._hs: _Handshake | None = None
        self._gen = 0  # bumped on every handshake change: stale timers do nothing
        self._seekers: OrderedDict[bytes, _Seeker] = OrderedDict()
        self._unpairs: dict[tuple[bytes, int], _Unpairing] = {}
        self._timer_jobs: dict[int, Callable[[float], None]] = {}  # token -> what to do
        self._token = 0
        self._out: list[Outgoing] = []
        self._events: list[ev.Event] = []
        self._timers: list[tuple[float, int]] = []

    # ------------------------------------------------------------ draining

    def take_out(self) -> list[Outgoing]:
        """Messages to send: (message, peer id or None for the group, fallback address)."""
        out, self._out = self._out, []
        return out

    def take_events(self) -> list[ev.Event]:
        events, self._events = self._events, []
        return events

    def take_timers(self) -> list[tuple[float, int]]:
        """Timers to book: (when, token) for `on_timer`."""
        timers, self._timers = self._timers, []
        return timers

    # ------------------------------------------------------------ local API

    @property
    def partner(self) -> bytes | None:
        """The partner's peer id while paired."""
        return self._hs.peer if self.state == PAIRED and self._hs else None

    def seek(self, now: float) -> bool:
        """Start looking for a partner; False if already looking or paired."""
        if self.state != IDLE:
            return False
        self.state = SEEKING
        self.seek_id += 1
        self._seek_started = now
        self._seek_until = now + SEEK_FOR
        self._seek_chain(now)
        self._propose_if_any(now)
        return True

    def stop(self, now: float) -> bool:
        """Stop looking, or end the pair (telling the partner); False if neither."""
        hs, state = self._hs, self.state
        if state == IDLE:
            return False
        self._reset(IDLE)
        if hs is None:
            return True
        if state == PROPOSING:
            self._send_pair(hs, codec.PAIR_WITHDRAW)
        elif state == ACCEPTING:
            self._send_pair(hs, codec.PAIR_DECLINE)
        else:
            self._unpair(hs, now, None, codec.UNPAIR_END)
            self._ended(hs, "you left")
        return True

    # ------------------------------------------------------------ receiving

    def on_seek(self, msg: codec.Seek, now: float) -> None:
        rec = self._members.get(msg.sender)
        if rec is None or rec.instance != msg.instance:
            return  # its Beat will come: only known peers can be partners
        entry = self._seekers.get(msg.sender)
        if entry is None or entry.instance != msg.instance or entry.seek_id < msg.seek_id:
            if self.partner != msg.sender:
                self._events.append(ev.PairSought(rec.info()))
            self._seekers[msg.sender] = entry = _Seeker(msg.instance, msg.seek_id, now)
            if len(self._seekers) > _MAX_SEEKERS:
                self._seekers.popitem(last=False)
        entry.heard = now
        self._seekers.move_to_end(msg.sender)
        hs = self._hs
        if self.state == PAIRED and hs and hs.peer == msg.sender and msg.seek_id > hs.peer_seek_id:
            self._reset(IDLE)
            self._ended(hs, "partner left")  # it looks anew: its Unpair was lost
        elif self.state == SEEKING:
            self._propose_if_any(now)

    def on_pair(self, msg: codec.Pair, source: Address, now: float) -> None:
        step = msg.step
        mine = step in (codec.PAIR_ACCEPT, codec.PAIR_DECLINE)
        proposer = self._id if mine else msg.sender
        hs = self._hs
        ours = (
            hs is not None
            and hs.peer == msg.sender
            and (hs.proposer, hs.pair_id) == (proposer, msg.pair_id)
        )
        if step == codec.PAIR_PROPOSE:
            if ours and self.state in (ACCEPTING, PAIRED):
                if self.state == ACCEPTING:
                    self._send_pair(hs, codec.PAIR_ACCEPT)  # type: ignore[arg-type]
                return
            rec = self._members.get(msg.sender)
            if self.state != SEEKING or rec is None or rec.instance != msg.instance:
                reply = _Handshake(msg.sender, msg.sender, msg.pair_id, now)
                self._send_pair(reply, codec.PAIR_DECLINE, source)
                return
            self._hs = _Handshake(msg.sender, msg.sender, msg.pair_id, now, msg.seek_id)
            self._set(ACCEPTING, now)
            self._send_pair(self._hs, codec.PAIR_ACCEPT)
        elif step == codec.PAIR_ACCEPT:
            if ours and self.state == PROPOSING:
                assert hs is not None
                hs.peer_seek_id = msg.seek_id
                self._set(PAIRED, now)
                self._send_pair(hs, codec.PAIR_CONFIRM)
                self._paired(hs)
            elif ours and self.state == PAIRED:
                self._send_pair(hs, codec.PAIR_CONFIRM)  # type: ignore[arg-type]
            else:
                stale = _Handshake(msg.sender, self._id, msg.pair_id, now)
                self._send_pair(stale, codec.PAIR_WITHDRAW, source)
        elif step == codec.PAIR_CONFIRM:
            if ours and self.state == ACCEPTING:
                assert hs is not None
                hs.peer_seek_id = msg.seek_id
                self._set(PAIRED, now)
                self._paired(hs)
            elif not ours and (msg.sender, msg.pair_id) not in self._unpairs:
                # We gave up on it (or never knew it): the proposer must not stay paired.
                # (A pair we ended ourselves is being told so already.)
                stale = _Handshake(msg.sender, msg.sender, msg.pair_id, now)
                self._unpair(stale, now, source, codec.UNPAIR_ABORT)
        elif step == codec.PAIR_DECLINE:
            if ours and self.state == PROPOSING:
                self._back_to_seeking(now, holdoff=msg.sender)
        elif ours and self.state == ACCEPTING:  # PAIR_WITHDRAW
            self._back_to_seeking(now)
        elif ours and self.state == PAIRED:
            assert hs is not None
            self._reset(IDLE)
            self._ended(hs, "partner left")

    def on_unpair(self, msg: codec.Unpair, source: Address, now: float) -> None:
        key = (msg.proposer, msg.pair_id)
        if msg.kind == codec.UNPAIR_ACK:
            pending = self._unpairs.get(key)
            if pending is not None and pending.peer == msg.sender:
                del self._unpairs[key]
            return
        ack = codec.Unpair(self._id, self._inst, msg.proposer, msg.pair_id, codec.UNPAIR_ACK)
        self._out.append((ack, msg.sender, source))
        hs = self._hs
        if hs is None or hs.peer != msg.sender or (hs.proposer, hs.pair_id) != key:
            return
        if self.state == PAIRED and msg.kind == codec.UNPAIR_ABORT:
            self._ended(hs, "unconfirmed")  # the Confirms were lost: look on
            self._back_to_seeking(now, restart=True)
        elif self.state == PAIRED:
            self._reset(IDLE)
            self._ended(hs, "partner left")
        elif self.state == ACCEPTING:
            self._back_to_seeking(now)

    def peer_gone(self, peer: ev.PeerInfo) -> None:
        """The peer left the LAN, timed out or restarted: its pair or handshake is over.

        A handshake with it falls back to seeking; the next Seek timer looks further.
        """
        peer_id = bytes.fromhex(peer.peer_id)
        self._seekers.pop(peer_id, None)
        hs = self._hs
        if hs is None or hs.peer != peer_id:
            return
        if self.state == PAIRED:
            self._reset(IDLE)
            self._events.append(ev.PairEnded(peer, "partner gone"))
        else:
            self._reset(SEEKING)

    def on_timer(self, token: int, now: float) -> None:
        job = self._timer_jobs.pop(token, None)
        if job is not None:
            job(now)

    # ------------------------------------------------------------ internals

    def _book(self, when: float, job: Callable[[float], None]) -> None:
        self._token += 1
        self._timer_jobs[self._token] = job
        self._timers.append((when, self._token))

    def _set(self, state: str, now: float) -> None:
        """Enter a handshake state (or PAIRED): retries of the old one stop."""
        self.state = state
        self._gen += 1
        if state in (PROPOSING, ACCEPTING):
            delays, give_up = _SCHEDULES[state]
            for delay in delays[1:]:
                self._book(now + delay, partial(self._handshake_due, self._gen))
            self._book(now + give_up, partial(self._handshake_due, self._gen))

    def _reset(self, state: str) -> None:
        self.state = state
        self._gen += 1
        self._hs = None

    def _back_to_seeking(
        self, now: float, holdoff: bytes | None = None, *, restart: bool = False
    ) -> None:
        """A handshake failed: seek on (restart: the Seek timers had stopped when paired)."""
        if holdoff is not None and (entry := self._seekers.get(holdoff)) is not None:
            entry.not_before = now + DECLINE_HOLDOFF
        self._reset(SEEKING)
        if now >= self._seek_until:
            self._expire(now)
        elif restart:
            self._seek_chain(now)
        else:
            self._propose_if_any(now)

    def _seek_chain(self, now: float) -> None:
        """Send Seek now and on (SEEK_DELAYS, then every SEEK_EVERY); older chains stop."""
        self._seek_gen += 1
        self._seek_left = [b - a for a, b in itertools.pairwise(SEEK_DELAYS)]
        self._book(now, partial(self._seek_timer, self._seek_gen))

    def _expire(self, now: float) -> None:
        self._reset(IDLE)
        self._events.append(ev.PairSearchExpired(round(now - self._seek_started, 1)))

    def _seek_timer(self, gen: int, now: float) -> None:
        if gen != self._seek_gen or self.state in (IDLE, PAIRED):
            return  # that search is over
        if now >= self._seek_until:
            if self.state == SEEKING:
                self._expire(now)
                return
        elif self.state != ACCEPTING:  # an accepting node is spoken for
            self._out.append((codec.Seek(self._id, self._inst, self.seek_id), None, None))
            self._propose_if_any(now)  # e.g. a decliner's holdoff has passed
        delay = self._seek_left.pop(0) if self._seek_left else None
        if delay is None:
            delay = SEEK_EVERY * self._rng.uniform(0.75, 1.25)
        self._book(now + delay, partial(self._seek_timer, gen))

    def _handshake_due(self, gen: int, now: float) -> None:
        if gen == self._gen and self._hs is not None:  # else that handshake is over
            self._handshake_timer(self._hs, now)

    def _handshake_timer(self, hs: _Handshake, now: float) -> None:
        if now - hs.started < _SCHEDULES[self.state][1] - 1e-9:
            step = codec.PAIR_PROPOSE if self.state == PROPOSING else codec.PAIR_ACCEPT
            self._send_pair(hs, step)
            return
        if self.state == PROPOSING:
            self._send_pair(hs, codec.PAIR_WITHDRAW)
            self._back_to_seeking(now, holdoff=hs.peer)
        elif self.state == ACCEPTING:
            # The proposer may be paired: our Confirm never came.
            self._unpair(hs, now, None, codec.UNPAIR_ABORT)
            self._back_to_seeking(now)

    def _propose_if_any(self, now: float) -> None:
        """In SEEKING, propose to a fresh seeker with a higher id, chosen at random."""
        if self.state != SEEKING:
            return
        candidates = []
        for peer_id, entry in self._seekers.items():
            rec = self._members.get(peer_id)
            if (
                peer_id > self._id
                and now - entry.heard <= SEEKER_FRESH
                and now >= entry.not_before
                and rec is not None
                and rec.instance == entry.instance
            ):
                candidates.append(peer_id)
        if not candidates:
            return
        peer = self._rng.choice(sorted(candidates))
        self._pair_counter += 1
        self._hs = _Handshake(peer, self._id, self._pair_counter, now)
        self._set(PROPOSING, now)
        self._send_pair(self._hs, codec.PAIR_PROPOSE)

    def _send_pair(self, hs: _Handshake, step: int, via: Address | None = None) -> None:
        msg = codec.Pair(self._id, self._inst, step, hs.pair_id, max(1, self.seek_id))
        self._out.append((msg, hs.peer, via))

    def _unpair(self, hs: _Handshake, now: float, via: Address | None, kind: int) -> None:
        """Tell hs.peer the pair is over, retried until acknowledged (or given up)."""
        key = (hs.proposer, hs.pair_id)
        if key not in self._unpairs and len(self._unpairs) >= _MAX_UNPAIRS:
            del self._unpairs[next(iter(self._unpairs))]
        self._unpairs[key] = _Unpairing(hs.peer, via, kind)
        self._out.append((codec.Unpair(self._id, self._inst, *key, kind), hs.peer, via))
        for delay in UNPAIR_DELAYS[1:]:
            self._book(now + delay, partial(self._unpair_due, key, False))
        self._book(now + UNPAIR_GIVE_UP, partial(self._unpair_due, key, True))

    def _unpair_due(self, key: tuple[bytes, int], give_up: bool, now: float) -> None:
        """Send the Unpair again, or give it up, if it is still unacknowledged."""
        pending = self._unpairs.get(key)
        if pending is None:
            return
        if give_up:
            del self._unpairs[key]
            return
        msg = codec.Unpair(self._id, self._inst, key[0], key[1], pending.kind)
        self._out.append((msg, pending.peer, pending.via))

    def _paired(self, hs: _Handshake) -> None:
        rec = self._members.get(hs.peer)
        if rec is not None:
            hs.info = rec.info()
            self._events.append(ev.Paired(hs.info))

    def _ended(self, hs: _Handshake, reason: str) -> None:
        rec = self._members.get(hs.peer)
        info = rec.info() if rec is not None else hs.info
        if info is not None:
            self._events.append(ev.PairEnded(info, reason))
