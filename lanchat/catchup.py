"""Catch-up of a room's recent chat (PROTOCOL.md section 11), a part of the core.

Holder side: keep each room's recent chat in a ring, answer a Recall with
Recounts after a random back-off, sending only what no other holder has sent
(NORM's feedback suppression), within byte budgets. Joiner side: ask, collect
the answers, ask again if none came, and hand out the lines once.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from lanchat import codec
from lanchat import events as ev
from lanchat.dedup import SeqWindows
from lanchat.errors import ConfigError
from lanchat.part import Bucket, Context, Part, bucket_for

# Each room's last 50 chat lines of the last hour are kept to answer late joiners:
# a screenful and a meeting's worth, and at most ~55 KB per room of worst-case lines.
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

LineKey = tuple[bytes, int, int]  # (sender, instance, seq)


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
    keys: set[LineKey]
    due: float
    heard: bool = False  # another holder answered the same Recall


@dataclass(slots=True)
class _OwnRecall:
    """A catch-up this node asked for, collecting answers until it ends."""

    room: str
    max_age: float
    max_count: int
    have: frozenset[LineKey]
    token: int
    nonces: list[int] = field(default_factory=list)
    answers: int = 0  # Recount datagrams received
    lines: dict[LineKey, tuple[codec.RecountEntry, float]] = field(
        default_factory=dict
    )  # key -> (entry, when it was sent, core time)


class Catchup(Part):
    """One node's catch-up: kept rooms, answers due, its own requests, the answer budgets."""

    def __init__(self, context: Context, *, stream_windows: SeqWindows) -> None:
        super().__init__(context)
        self._stream_windows = stream_windows  # the core's: a recalled line shown live is not
        self.leaving = False  # saying goodbye: no answers, no repeated requests
        self._rings: OrderedDict[str, _Ring] = OrderedDict()
        self._recall_answers: dict[int, _RecallAnswer] = {}  # by the Recall's nonce
        self._recall_seen: OrderedDict[tuple[bytes, int], None] = OrderedDict()
        self._recall_sources: OrderedDict[str, Bucket] = OrderedDict()
        self._recall_bucket = Bucket(_RECALL_BYTES, 0.0)
        self._own_recalls: dict[str, _OwnRecall] = {}
        self._own_nonces: dict[int, str] = {}  # nonce -> room of our request
        self._tokens = 0

    # Holder side: keep each room's recent chat, answer Recalls with Recounts.

    def hear_room(self, room: str, now: float) -> None:
        """From now on this node hears all of the room's chat."""
        self._ring(room, now)

    def forget_room(self, room: str) -> None:
        """We stop hearing the room: its ring would have a gap."""
        self._rings.pop(room, None)

    def _ring(self, room: str, now: float) -> _Ring:
        """The room's kept chat (made, and its `since` set, on first use)."""
        ring = self._rings.get(room)
        if ring is None:
            ring = self._rings[room] = _Ring(now)
            if len(self._rings) > _MAX_RING_ROOMS:
                self._rings.popitem(last=False)
        self._rings.move_to_end(room)
        return ring

    def keep_line(
        self, room: str, sender: bytes, instance: int, seq: int, nick: str, text: str, now: float
    ) -> None:
        """Keep a chat line we sent or showed, to answer late joiners of its room."""
        if self._member:
            self._ring(room, now).lines.append(_RingLine(sender, instance, seq, nick, text, now))

    def on_recall(self, msg: codec.Recall, ip: str, now: float, *, shown: bool) -> None:
        """Another node catches up on a room (`shown`: ours): answer after a back-off."""
        seen = (msg.sender, msg.nonce)
        if seen in self._recall_seen:
            self._stats.duplicates += 1  # the same request again (two NICs, a repeat)
            return
        self._recall_seen[seen] = None
        if len(self._recall_seen) > _MAX_RECALL_NONCES:
            self._recall_seen.popitem(last=False)
        ring = self._rings.get(msg.room)
        if ring is None or not shown:
            return
        max_age = min(msg.max_age_ms / 1000, RECALL_KEEP)
        count = min(msg.max_count, RECALL_KEEP_LINES)
        chosen = [line for line in ring.lines if now - line.at <= max_age][-count:]
        if not chosen:
            return
        if msg.nonce in self._recall_answers or len(self._recall_answers) >= (
            _MAX_PENDING_RECALL_ANSWERS
        ):
            self._stats.rate_limited += 1
            return
        # A holder that heard the whole window answers first; one that joined later
        # waits, and then sends only what the first answers lacked.
        complete = ring.since <= now - max_age or len(chosen) >= count
        delay = self._rng.uniform(0, RECALL_BACKOFF) + (0 if complete else RECALL_BACKOFF)
        keys = {(line.sender, line.instance, line.seq) for line in chosen}
        self._recall_answers[msg.nonce] = _RecallAnswer(ip, msg.room, keys, now + delay)
        self._book_answer(now + delay, msg.nonce)

    def _book_answer(self, when: float, nonce: int) -> None:
        self.timers.book(when, self._answer_recall, nonce)

    def _answer_recall(self, nonce: int, now: float) -> None:
        """The back-off is over: multicast what no other holder has sent, within budget."""
        pending = self._recall_answers.get(nonce)
        if pending is None or pending.due > now:
            return  # answered already, or postponed by an overheard answer
        del self._recall_answers[nonce]
        ring = self._rings.get(pending.room)
        if ring is None or self.leaving:
            return
        lines = [
            line
            for line in ring.lines
            if (line.sender, line.instance, line.seq) in pending.keys
            and now - line.at <= RECALL_KEEP
        ]
        if not lines:
            self._stats.recalls_suppressed += pending.heard
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
        source = bucket_for(
            self._recall_sources,
            pending.source,
            _RECALL_BYTES_PER_SOURCE,
            now,
            limit=_MAX_RECALL_SOURCES,
        )
        per_second = 1 / _RECALL_REFILL_PERIOD
        allowance = min(
            _RECALL_ANSWER_BYTES,
            source.refill(_RECALL_BYTES_PER_SOURCE, _RECALL_BYTES_PER_SOURCE * per_second, now),
            self._recall_bucket.refill(_RECALL_BYTES, _RECALL_BYTES * per_second, now),
        )
        while parts and sum(map(len, parts)) > allowance:
            parts.pop(0)  # over budget: the oldest lines stay unsent
        if not parts:
            self._stats.rate_limited += 1
            return
        size = sum(map(len, parts))
        for data in parts:
            self._multicast(data)
        source.tokens -= size
        self._recall_bucket.tokens -= size
        self._stats.recounts_sent += len(parts)
        self._stats.recount_bytes += size

    def on_recount(self, msg: codec.Recount, now: float) -> None:
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
                self._book_answer(pending.due, msg.nonce)

    # Joiner side: ask, collect the answers, hand out the lines once.

    def ask(
        self, room: str, max_age: float, max_count: int, have: Iterable[LineKey], now: float
    ) -> None:
        """Ask for the room's recent chat, replacing a catch-up of it in progress."""
        self.end_own_recall(room)
        if len(self._own_recalls) >= _MAX_OWN_RECALLS:
            raise ConfigError(f"at most {_MAX_OWN_RECALLS} catch-ups at a time")
        self._tokens += 1
        own = _OwnRecall(room, max_age, max_count, frozenset(have), self._tokens)
        self._own_recalls[room] = own
        self._send_recall(own, now)

    def _send_recall(self, own: _OwnRecall, now: float) -> None:
        nonce = self._rng.getrandbits(64)
        own.nonces.append(nonce)
        self._own_nonces[nonce] = own.room
        max_age_ms = max(1, round(own.max_age * 1000))
        recall = codec.Recall(self._id, self._inst, own.room, max_age_ms, own.max_count, nonce)
        self._multicast(codec.encode(recall))
        self._stats.recalls_sent += 1
        self.timers.book(now + RECALL_WAIT, self._recall_due, own.token)

    def _collect(self, own: _OwnRecall, msg: codec.Recount, now: float) -> None:
        if msg.room != own.room:
            self._stats.unexpected += 1
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
        if not own.answers and len(own.nonces) < RECALL_TRIES and not self.leaving:
            self._send_recall(own, now)
            return
        self.end_own_recall(own.room)
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
            if self._stream_windows.fresh(entry.sender, entry.instance, entry.seq)
        ]
        self._events.append(ev.HistoryRecalled(own.room, len(fresh), own.answers))
        for entry, sent_at in fresh:
            self._events.append(
                ev.ChatRecalled(
                    entry.sender.hex(), entry.nick, own.room, entry.text, entry.seq,
                    entry.instance, max(0.0, now - sent_at),
                )
            )  # fmt: skip

    def end_own_recall(self, room: str) -> None:
        """Stop a catch-up of ours (the room was left, or asked for anew)."""
        own = self._own_recalls.pop(room, None)
        if own is not None:
            for nonce in own.nonces:
                self._own_nonces.pop(nonce, None)
