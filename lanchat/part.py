"""What every part of the protocol core shares: an outbox, events and timers.

A part (loss repair, catch-up, delivery, the heartbeat schedule, reports) is a
small sans-I/O machine beside NodeCore, after aioquic's `quic/recovery.py`: the
core feeds it, asks `get_timer()` and `handle_timer(now)`, and takes what it
queued with `take_out()` and `take_events()`, as it does with pairing.py's.
"""

from __future__ import annotations

import heapq
import random
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from lanchat import events as ev
from lanchat.membership import Membership
from lanchat.stats import Stats

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Datagram:
    """One datagram to send: to a unicast address, or (to=None) to the group on every interface."""

    data: bytes
    to: Address | None


@dataclass(frozen=True, slots=True)
class Answer:
    """A unicast answer to a remote datagram, sent within the IP's credit (PROTOCOL.md 13.3)."""

    data: bytes
    to: Address


@dataclass(frozen=True, slots=True)
class Context:
    """What the parts of one node's core share."""

    peer_id: bytes
    instance: int
    member: bool  # a member node (seen by others), not a one-shot tool
    members: Membership
    stats: Stats
    rng: random.Random
    order: Iterator[int]  # books timers: one counter for all parts


class Bucket:
    """A token bucket, refilled in virtual time."""

    __slots__ = ("stamp", "tokens")

    def __init__(self, size: float, now: float) -> None:
        self.tokens = size
        self.stamp = now

    def refill(self, size: float, rate: float, now: float) -> float:
        self.tokens = min(size, self.tokens + max(0.0, now - self.stamp) * rate)
        self.stamp = now
        return self.tokens


K = TypeVar("K", bound=Hashable)


def bucket_for(
    table: OrderedDict[K, Bucket], key: K, size: float, now: float, *, limit: int
) -> Bucket:
    """The key's bucket (a full one if new), most recently used; past `limit` the oldest go."""
    bucket = table.get(key)
    if bucket is None:
        bucket = table[key] = Bucket(size, now)
        if len(table) > limit:
            table.popitem(last=False)
    table.move_to_end(key)
    return bucket


# A timer's action: a method of the part that booked it, called with its key and now.
Action = Callable[[int, float], None]
Timer = tuple[float, int, Action, int]


class Timers:
    """One part's timers, earliest first: (when, order, action, key).

    `order` comes from one counter shared by all parts of a core, so timers due at
    the same instant fire in the order they were booked, whichever part owns them.
    """

    __slots__ = ("_heap", "_order")

    def __init__(self, order: Iterator[int]) -> None:
        self._heap: list[Timer] = []
        self._order = order

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self) -> Iterator[Timer]:
        return iter(self._heap)

    def book(self, when: float, action: Action, key: int) -> None:
        heapq.heappush(self._heap, (when, next(self._order), action, key))

    def first(self) -> tuple[float, int]:
        """(when, order) of the earliest timer; (inf, 0) if there is none."""
        return self._heap[0][:2] if self._heap else (float("inf"), 0)

    def fire(self, now: float) -> bool:
        """Run the earliest timer if it is due at `now`; False if none is."""
        if not self._heap or self._heap[0][0] > now:
            return False
        _, _, action, key = heapq.heappop(self._heap)
        action(key, now)
        return True

    def clear(self) -> None:
        self._heap.clear()


class Part:
    """A part of the core: datagrams and events queued for the core, and its timers."""

    def __init__(self, context: Context) -> None:
        self.timers = Timers(context.order)
        self._id = context.peer_id
        self._inst = context.instance
        self._member = context.member
        self._members = context.members
        self._stats = context.stats
        self._rng = context.rng
        self._out: list[Datagram | Answer] = []
        self._events: list[ev.Event] = []

    def get_timer(self) -> float | None:
        """When handle_timer should next be called, or None."""
        when = self.timers.first()[0]
        return None if when == float("inf") else when

    def handle_timer(self, now: float) -> bool:
        """Fire the earliest timer if due (False if none is).

        The core calls it one timer at a time, on the part whose timer was booked
        first, so the parts' datagrams and random draws keep one global order.
        """
        return self.timers.fire(now)

    def take_out(self) -> list[Datagram | Answer]:
        """Datagrams to send (an Answer is charged to its destination's credit)."""
        out, self._out = self._out, []
        return out

    def take_events(self) -> list[ev.Event]:
        events, self._events = self._events, []
        return events

    def _multicast(self, data: bytes) -> None:
        self._out.append(Datagram(data, None))
