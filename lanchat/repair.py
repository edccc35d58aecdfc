"""Loss repair of the multicast stream (PROTOCOL.md section 10), a part of the core.

Sender side: keep our own stream datagrams, send them again when a known peer's
Nack asks (within budget), answer Gone for what is no longer kept. Receiver
side: find the holes in others' streams, ask after a random back-off unless
another receiver's Nack did (NORM's suppression, RFC 5740), give up after
cfg.REPAIR_WAITS and report what will not come as MessagesLost.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Final

from lanchat import codec
from lanchat import config as cfg
from lanchat import events as ev
from lanchat.dedup import DEDUP_WINDOW, MAX_SENDERS
from lanchat.part import Bucket, Context, Part, bucket_for

# Own stream datagrams kept for repair: the receivers' dedup window, beyond which
# a repair would be dropped anyway (at most ~1.1 MB of worst-case chat). Their
# age bound is cfg.REPAIR_KEEP.
_REPAIR_WINDOW: Final = DEDUP_WINDOW
# Streams whose holes are tracked: one per known sender, like the seq windows.
_MAX_STREAMS: Final = MAX_SENDERS
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

StreamKey = tuple[bytes, int]  # (sender, instance)


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
    token: int  # names the stream in the timers
    holes: list[_Hole] = field(default_factory=list)  # ascending, disjoint
    booked: float = float("inf")  # the earliest timer booked for it


class Repair(Part):
    """One node's loss repair: its kept datagrams, the holes in others' streams, the budgets."""

    def __init__(self, context: Context, *, group_interval: Callable[[], float]) -> None:
        super().__init__(context)
        self._group_interval = group_interval  # the core's heartbeat_interval()
        self.leaving = False  # saying goodbye: no more questions
        # Our kept datagrams (kept[0] has seq _kept_first), what we miss of others'
        # streams, and the repair rate limits.
        self._kept: deque[_Kept] = deque()
        self._kept_first = 1
        self._streams: OrderedDict[StreamKey, _Stream] = OrderedDict()
        self._stream_tokens: dict[int, StreamKey] = {}
        self._stream_instances: dict[bytes, set[int]] = {}  # sender -> tracked instances
        self._tokens = 0
        self._requesters: OrderedDict[bytes, Bucket] = OrderedDict()
        self._repair_bucket = Bucket(_REPAIR_BURST, 0.0)
        # When we last heard the group's multicast, and when a silence long enough
        # to be deaf (_deaf_after) last ended: a Nack or repair may have passed us by.
        self._heard_at = self._deaf_end = float("-inf")

    # Sender side: keep our stream datagrams, repair them on request.

    def keep(self, seq: int, data: bytes, now: float) -> None:
        """Keep the datagram of our seq `seq` for repair (plain bytes: sealed when sent)."""
        if not self._kept:
            self._kept_first = seq
        self._kept.append(_Kept(data, now))
        if len(self._kept) > _REPAIR_WINDOW:
            self._kept.popleft()
            self._kept_first += 1

    def prune(self, now: float) -> None:
        """Forget kept datagrams older than cfg.REPAIR_KEEP (called with every heartbeat)."""
        while self._kept and self._kept[0].sent_at < now - cfg.REPAIR_KEEP:
            self._kept.popleft()
            self._kept_first += 1

    def on_nack(self, msg: codec.Nack, last_seq: int, now: float) -> None:
        """A Nack: for our stream (whose last seq is `last_seq`), or overheard."""
        self._heard(now)
        if (msg.target_sender, msg.target_instance) == (self._id, self._inst):
            self._stats.nacks_received += 1
            self._repair(msg, last_seq, now)
        else:
            self._stats.nacks_overheard += 1
            self._overheard(msg, now)

    def _repair(self, msg: codec.Nack, last_seq: int, now: float) -> None:
        """Multicast the requested seqs again: only for a known peer, and within budget."""
        rec = self._members.get(msg.sender)
        if rec is None or rec.instance != msg.instance:
            self._stats.unexpected += 1  # a stranger's Nack never makes us send anything
            return
        bucket = bucket_for(
            self._requesters, msg.sender, _REPAIR_BURST_PER_PEER, now, limit=_MAX_REQUESTERS
        )
        allowance = min(
            _MAX_REPAIRS_PER_NACK,
            bucket.refill(_REPAIR_BURST_PER_PEER, _REPAIR_RATE_PER_PEER, now),
            self._repair_bucket.refill(_REPAIR_BURST, _REPAIR_RATE, now),
        )
        if allowance < 1:
            self._stats.rate_limited += 1
            return
        self.prune(now)
        gone: list[tuple[int, int]] = []
        sent = 0
        for first, last in msg.ranges:
            last = min(last, last_seq)  # never sent: nothing to say
            if first < self._kept_first and first <= last:
                gone.append((first, min(last, self._kept_first - 1)))
                first = self._kept_first
            for seq in range(first, last + 1):
                if sent >= allowance:
                    break
                kept = self._kept[seq - self._kept_first]
                if now - kept.repaired_at < cfg.REPAIR_HOLDOFF:
                    self._stats.repairs_held += 1
                    continue
                kept.repaired_at = now
                self._multicast(kept.data)
                for delay in cfg.REPAIR_REPEATS:
                    self.timers.book(now + delay, self._repeat_repair, seq)
                sent += 1
        if gone:  # smaller than the Nack: its ranges, cut, without the target fields
            self._multicast(codec.encode(codec.Gone(self._id, self._inst, tuple(gone))))
            self._stats.gone_sent += 1
        charge = sent + bool(gone)
        bucket.tokens -= charge
        self._repair_bucket.tokens -= charge
        self._stats.repairs_sent += sent

    def _repeat_repair(self, seq: int, now: float) -> None:
        """A further copy of a repair (cfg.REPAIR_REPEATS), if seq is still kept."""
        if self._kept_first <= seq < self._kept_first + len(self._kept):
            kept = self._kept[seq - self._kept_first]
            kept.repaired_at = now
            self._multicast(kept.data)
            self._stats.repairs_sent += 1

    # Receiver side: find the holes in others' streams, ask, give up and report.

    def _stream(self, sender: bytes, instance: int, nick: str, seq: int) -> _Stream | None:
        """The stream's hole tracker, or None if untracked or new.

        A new tracker starts at seq: what came before we heard of the stream is history.
        """
        if not self._member:
            return None  # one-shot tools show no chat: nothing to repair
        key = (sender, instance)
        stream = self._streams.get(key)
        if stream is not None:
            self._streams.move_to_end(key)
            stream.nick = nick
            return stream
        self._tokens += 1
        stream = self._streams[key] = _Stream(nick, seq, self._tokens)
        self._stream_tokens[stream.token] = key
        instances = self._stream_instances.setdefault(sender, set())
        instances.add(instance)
        if len(instances) > _MAX_INSTANCES:
            oldest = (sender, min(instances))
            self._drop_stream(oldest, self._streams[oldest])
        if len(self._streams) > _MAX_STREAMS:
            self._drop_stream(*next(iter(self._streams.items())))
        return None

    def _drop_stream(self, key: StreamKey, stream: _Stream) -> None:
        """Stop tracking a stream; what it still misses is reported lost."""
        self._lose(key, stream, stream.holes)
        del self._streams[key]
        del self._stream_tokens[stream.token]
        instances = self._stream_instances[key[0]]
        instances.discard(key[1])
        if not instances:
            del self._stream_instances[key[0]]

    def arrived(self, sender: bytes, instance: int, seq: int, nick: str, now: float) -> None:
        """A Chat or Notice of another's stream arrived: it is no longer missing."""
        self._heard(now)
        stream = self._stream(sender, instance, nick, seq)
        if stream is not None:
            if seq > stream.top:
                self._raise_top((sender, instance), stream, seq, now, arrived=True)
            else:
                self._cut(stream, seq, seq)

    def advertised(self, beat: codec.Beat, now: float) -> None:
        """A Beat tells the sender's last_seq: seqs above what we have are missing."""
        self._heard(now)
        stream = self._stream(beat.sender, beat.instance, beat.nick, beat.last_seq)
        if stream is not None and beat.last_seq > stream.top:
            key = (beat.sender, beat.instance)
            self._raise_top(key, stream, beat.last_seq, now, arrived=False)

    def _raise_top(
        self, key: StreamKey, stream: _Stream, top: int, now: float, *, arrived: bool
    ) -> None:
        """Seq `top` exists (it arrived, or a Beat said so): what lies between is missing."""
        first, last = stream.top + 1, top - 1 if arrived else top
        stream.top = top
        if first > last:
            return
        # The dedup window drops anything 1024 below the highest seq: unrepairable.
        floor = max(1, top - DEDUP_WINDOW + 1)
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

    def _bound_holes(self, key: StreamKey, stream: _Stream) -> None:
        while len(stream.holes) > _MAX_HOLES:
            self._lose(key, stream, [stream.holes.pop(0)])

    def _lose(self, key: StreamKey, stream: _Stream, holes: list[_Hole]) -> None:
        """Report seqs that will not be repaired (never dropped silently)."""
        for hole in holes:
            count = hole.last - hole.first + 1
            self._stats.lost += count
            self._events.append(
                ev.MessagesLost(key[0].hex(), stream.nick, count, hole.first, hole.last)
            )

    def _book(self, stream: _Stream, when: float) -> None:
        if when < stream.booked:
            stream.booked = when
            self.timers.book(when, self._service_stream, stream.token)

    def _service_stream(self, token: int, now: float) -> None:
        """A stream's timer: ask for the holes that are due, or give them up."""
        key = self._stream_tokens.get(token)
        stream = self._streams.get(key) if key is not None else None
        if key is None or stream is None or stream.booked > now:
            return  # forgotten, or superseded by an earlier booking
        stream.booked = float("inf")
        if self.leaving:
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
            self._stats.nacks_sent += 1
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
        lam = math.log(len(self._members) + 1) + 1
        return low + (high - low) * math.log1p(self._rng.random() * math.expm1(lam)) / lam

    def _deaf_after(self) -> float:
        """Silence this long means we may be deaf: cfg.NACK_DEAF_BEATS mean gaps between beats.

        The group beats about n / heartbeat_interval() times a second (the interval
        grows with the group, section 5), so the mean gap is that interval over n.
        """
        members = max(1, len(self._members))
        return cfg.NACK_DEAF_BEATS * self._group_interval() / members

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
        rec = self._members.get(msg.sender)
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
                    self._stats.nacks_suppressed += 1
                holes.append(part)
        stream.holes = holes
        self._bound_holes(key, stream)
        if stream.holes:
            self._book(stream, min(h.due for h in stream.holes))

    def on_gone(self, msg: codec.Gone) -> None:
        """The sender cannot repair these seqs: report the ones we miss as lost now."""
        key = (msg.sender, msg.instance)
        stream = self._streams.get(key)
        if stream is None:
            return
        for first, last in msg.ranges:
            self._lose(key, stream, self._cut(stream, first, min(last, stream.top)))

    def end_streams(self, peer: ev.PeerInfo, *, left: bool, bye: bool) -> None:
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
