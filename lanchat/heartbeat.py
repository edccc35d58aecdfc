"""When this node speaks for itself (PROTOCOL.md sections 3 and 4), a part of the core.

The heartbeat schedule after RFC 3550 section 6.3: an announcement burst at
start (cfg.ANNOUNCE_DELAYS), tail Beats after chat (cfg.TAIL_BEAT_DELAYS), then
regular Beats at a randomised interval with timer reconsideration, and reverse
reconsideration when peers leave. Also discovery (Queries with back-off, and
our answers to others' Queries, spread and rate-limited) and the goodbye Byes.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from lanchat import codec
from lanchat import config as cfg
from lanchat.part import Address, Answer, Bucket, Context, Datagram, Part

# Queriers remembered for the answer rate limit (one entry per ip:port).
_MAX_QUERIERS: Final = 1024
# Answers waiting for their random delay; a flood of queries can queue no more.
_MAX_PENDING_ANSWERS: Final = 256


class Heartbeat(Part):
    """This node's Beats, Queries, answers to Queries and Byes."""

    def __init__(
        self, context: Context, *, uport: int, minimum: float, beat: Callable[[], bytes]
    ) -> None:
        super().__init__(context)
        self._uport = uport
        self._minimum = minimum  # the configured heartbeat interval
        self._beat = beat  # our Beat as it is now, encoded (the core knows its fields)
        # Heartbeat schedule (RFC 3550 section 6.3; PROTOCOL.md section 3.1):
        # the next Beat, whether it is a regular one (reconsidered when due) or
        # an announcement/tail Beat (sent as booked), when the last one went
        # out (tp), the group size when it was booked (pmembers), and the mean
        # Beat size on the wire (avg_rtcp_size).
        self.next_beat = float("inf")
        self._beat_regular = False
        self.last_beat = float("-inf")
        self._booked_members = 1
        self.beat_size = 0.0  # set by the core, once a Beat can be encoded
        self._announce_left: list[float] = []
        self._tail_left: list[float] = []
        self._answered: OrderedDict[str, float] = OrderedDict()
        self._answers: dict[int, Address] = {}
        self._answer_bucket = Bucket(cfg.QUERY_ANSWER_START, 0.0)
        self._tokens = 0
        self.byes_left = 0
        self.said_goodbye = False  # the last Bye is out

    def get_timer(self) -> float | None:
        when = min(self.next_beat, self.timers.first()[0])
        return None if when == float("inf") else when

    def interval(self) -> float:
        """The mean interval between our heartbeats now (RFC 3550 section 6.2's Td).

        max(minimum, n / datagram budget, n x mean Beat size / byte budget),
        n = known members + ourselves: the group's heartbeats stay within budget.
        """
        n = len(self._members) + 1
        return max(
            self._minimum,
            n / cfg.HEARTBEAT_RATE_BUDGET,
            n * self.beat_size / cfg.HEARTBEAT_BYTE_BUDGET,
        )

    def start(self, now: float) -> None:
        self._answer_bucket.stamp = now  # it holds QUERY_ANSWER_START, not a refill since 0

    def discover(self, now: float, *, member: bool) -> None:
        """Queries with back-off and, for a member, announcements: what a start sends.

        The repeats (key 1) are skipped once the group is big (cfg.SMALL_GROUP).
        """
        delays = cfg.QUERY_DELAYS if member else cfg.QUERY_DELAYS_ONESHOT
        for i, delay in enumerate(delays):
            self.timers.book(now + delay, self._send_query, int(i > 0))
        if member:
            self.announce(now)

    def query(self, now: float) -> None:
        """Ask the group who is there now."""
        self.timers.book(now, self._send_query, 0)

    def announce(self, now: float) -> None:
        """Send a heartbeat now and a few more with back-off (while the group is small)."""
        delays = list(cfg.ANNOUNCE_DELAYS)
        self.next_beat, self._beat_regular = now + delays.pop(0), False
        self._announce_left = [b - a for a, b in zip(cfg.ANNOUNCE_DELAYS, delays, strict=False)]

    def tail(self, now: float) -> None:
        """We sent chat: tail heartbeats tell receivers our last_seq soon (cfg.TAIL_BEAT_DELAYS)."""
        if self.next_beat != float("inf"):
            delays = cfg.TAIL_BEAT_DELAYS
            self._tail_left = [b - a for a, b in itertools.pairwise(delays)]
            if now + delays[0] < self.next_beat:
                self.next_beat, self._beat_regular = now + delays[0], False

    def silence(self) -> None:
        """No more Beats: the node is leaving."""
        self.next_beat = float("inf")

    def say_goodbye(self, now: float) -> None:
        """Send Byes at cfg.BYE_DELAYS; `said_goodbye` turns True once the last is out."""
        self.byes_left = len(cfg.BYE_DELAYS)
        for delay in cfg.BYE_DELAYS:
            self.timers.book(now + delay, self._send_bye, 0)

    def stop(self) -> None:
        """Closed: nothing more is due."""
        self.timers.clear()
        self.next_beat = float("inf")

    def beat_heard(self, size: int) -> None:
        """A Beat of `size` bytes was sent or heard: the mean Beat size follows it."""
        self.beat_size += (size + cfg.HEADER_BYTES - self.beat_size) / 16

    def beat_if_due(self, now: float) -> bool:
        """Send (or, for a regular Beat, reconsider) a due Beat and book the next; True if sent.

        After a Beat comes the next announcement or tail Beat, else a regular one.
        """
        if self.next_beat > now:
            return False
        n = len(self._members) + 1
        if self._beat_regular:
            # Timer reconsideration (RFC 3550 section 6.3.6): redraw with the group
            # as it is now; if it grew, the Beat waits, so a mass join is no flood.
            due = self.last_beat + self._draw_interval()
            if due > now:
                self.next_beat, self._booked_members = due, n
                return False
        data = self._beat()
        self.beat_heard(len(data))
        self._out.append(Datagram(data, None))
        self.last_beat, self._booked_members = now, n
        if self._announce_left and n >= cfg.SMALL_GROUP:
            self._announce_left = []  # a big group: the regular Beats suffice
        if self._announce_left:
            self.next_beat, self._beat_regular = now + self._announce_left.pop(0), False
        elif self._tail_left:
            self.next_beat, self._beat_regular = now + self._tail_left.pop(0), False
        else:
            self.next_beat, self._beat_regular = now + self._draw_interval(), True
        return True

    def _draw_interval(self) -> float:
        """A randomised interval: uniform in [0.5, 1.5] x Td / (e - 3/2) (RFC 3550 6.3.1)."""
        return self.interval() * self._rng.uniform(0.5, 1.5) / cfg.RECONSIDERATION_FACTOR

    def reconsider_down(self, now: float) -> None:
        """Reverse reconsideration (RFC 3550 section 6.3.4): peers left, beat sooner.

        The next Beat and the last one's time move toward now by n / pmembers,
        so the group's rate does not dip while every member still counts the
        departed peers in its old, longer interval.
        """
        n = len(self._members) + 1
        if n >= self._booked_members or not self._beat_regular:
            self._booked_members = max(self._booked_members, n) if self._beat_regular else n
            return
        ratio = n / self._booked_members
        if self.next_beat != float("inf"):
            self.next_beat = now + ratio * (self.next_beat - now)
        self.last_beat = now - ratio * (now - self.last_beat)
        self._booked_members = n

    def _send_query(self, repeat: int, now: float) -> None:
        if not (repeat and len(self._members) + 1 >= cfg.SMALL_GROUP):
            self._multicast(codec.encode(self._query()))

    def _query(self) -> codec.Query:
        """A query listing the peers already known (most recently heard first)."""
        recent = sorted(self._members, key=lambda rec: rec.last_heard, reverse=True)
        known = tuple(rec.peer_id for rec in recent[: codec.MAX_KNOWN])
        return codec.Query(self._id, self._inst, self._uport, known)

    def _send_bye(self, key: int, now: float) -> None:
        self._multicast(codec.encode(codec.Bye(self._id, self._inst)))
        self.byes_left -= 1
        self.said_goodbye = self.byes_left == 0

    def on_query(self, msg: codec.Query, ip: str, now: float) -> None:
        """A member's answer to a Query: our Beat, unicast after a random spread, within budget."""
        if self._id[: codec.KNOWN_PREFIX] in msg.known:
            return  # the querier knows us already
        dest = (ip, msg.uport)
        last = self._answered.get(ip)  # per address: a querier cannot vary uport for more
        if last is not None and now - last < cfg.QUERY_ANSWER_GAP:
            self._stats.rate_limited += 1
            return
        if len(self._answers) >= _MAX_PENDING_ANSWERS:
            self._stats.rate_limited += 1
            return
        n = len(self._members) + 1
        if n > cfg.QUERY_ANSWERS and self._rng.random() * n >= cfg.QUERY_ANSWERS:
            return  # a big group: ~QUERY_ANSWERS members answer, the rest beat soon
        # Our share of the group's heartbeat budget, without the minimum interval:
        # the whole group answers ~50 queriers' worth of Beats a second at most,
        # however big, and a small group keeps up with a newcomer every 0.2 s.
        rate = 1.0 / max(
            n / cfg.HEARTBEAT_RATE_BUDGET, n * self.beat_size / cfg.HEARTBEAT_BYTE_BUDGET
        )
        burst = min(cfg.QUERY_ANSWER_BURST_MAX, cfg.QUERY_ANSWER_GROUP_BURST / n)
        if self._answer_bucket.refill(max(cfg.QUERY_ANSWER_BURST, burst), rate, now) < 1:
            self._stats.rate_limited += 1
            return
        self._answer_bucket.tokens -= 1
        self._answered[ip] = now
        self._answered.move_to_end(ip)
        if len(self._answered) > _MAX_QUERIERS:
            self._answered.popitem(last=False)
        spread = cfg.QUERY_SPREAD_PER_PEER * min(n, cfg.QUERY_ANSWERS)
        spread = min(cfg.QUERY_SPREAD_MAX, max(cfg.QUERY_SPREAD_MIN, spread))
        self._tokens += 1
        self._answers[self._tokens] = dest
        self.timers.book(now + self._rng.uniform(0, spread), self._answer, self._tokens)

    def _answer(self, key: int, now: float) -> None:
        """A query's answer: our Beat, unicast, charged to the querier's credit."""
        dest = self._answers.pop(key, None)
        if dest is not None and not self.byes_left:
            self._out.append(Answer(self._beat(), dest))
