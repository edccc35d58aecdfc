"""A seeded in-memory LAN running lanchat cores in virtual time (sans-I/O).

    lan = FakeLan(seed=1, loss=0.2)
    alice, bob = lan.add_node("alice"), lan.add_node("bob")
    lan.run_until(lambda: bob.knows(alice), timeout=5)
    alice.core.say("lobby", "hi", lan.now)

Datagrams can be dropped, duplicated and delayed (which reorders them); every
random choice comes from one `random.Random(seed)`, so a run is reproducible.
Multicast reaches every station with an address in the sender interface's
subnet (a /24, or a /16 with `prefix=16` for groups of more than 250 nodes) and
loops back to the sender, as IP_MULTICAST_LOOP does on a real host.

A Node's transport (`Endpoint`) is told the socket a datagram would come in on
(lanchat.trace): GROUP if sent to the group, UNICAST if sent to its unicast port.

Every datagram handed to the LAN is logged in `lan.sent` (time, sender,
destination, bytes, and which receivers lost it). A core whose `handle_timer(now)`
leaves its timer at or before `now` raises `TimerStuck` (a driver would spin).

Stations that are not cores (a real `Node`'s transport, `lanchat.testing`) join
with `add_endpoint`; the LAN then runs on their event loop (`bind`), whose
virtual clock is the LAN's.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

from lanchat import codec
from lanchat import events as ev
from lanchat.config import NodeConfig
from lanchat.core import Address, Datagram, Identity, NodeCore
from lanchat.seal import KeyRing
from lanchat.trace import GROUP, UNICAST


class TimerStuck(AssertionError):
    """handle_timer(now) left get_timer() at or before now: a driver would call it forever."""


def check_timer_moved(name: str, core: NodeCore, now: float) -> None:
    """Raise TimerStuck if `core`'s timer is still due after handle_timer(now)."""
    after = core.get_timer()
    if after is not None and after <= now:
        raise TimerStuck(f"{name}: timer {after!r} <= now {now!r} after handle_timer")


def run_timers(core: NodeCore, until: float) -> list[tuple[float | None, Datagram]]:
    """Drive a lone core (no LAN): handle each of its timers at its time, up to `until`.

    What it sent, with the time of the timer that sent it (None: queued before
    the call). Raises TimerStuck as FakeLan does.
    """
    sent: list[tuple[float | None, Datagram]] = [(None, d) for d in core.datagrams_to_send()]
    while (when := core.get_timer()) is not None and when <= until:
        core.handle_timer(when)
        check_timer_moved("core", core, when)
        sent += [(when, d) for d in core.datagrams_to_send()]
    return sent


class Scheduler(Protocol):
    """A clock that runs callbacks at times of its own (an asyncio event loop is one)."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], None], /) -> object: ...


@dataclass(eq=False)
class Station:
    """A place on the fake LAN: its addresses, unicast port and link state."""

    name: str
    ips: tuple[str, ...]
    lan: FakeLan
    uport: int
    index: int = 0  # position in FakeLan.stations (names its multicast source port)
    up: bool = True
    loss_in: float = 0.0
    loss_out: float = 0.0
    partitioned: bool = False

    def receive(self, data: bytes, source: Address, channel: str) -> None:
        """A datagram arrives from `source` on `channel` (GROUP or UNICAST)."""
        raise NotImplementedError


@dataclass(eq=False)
class FakeNode(Station):
    """A NodeCore on the fake LAN, driven by it, and the events it emitted (with times)."""

    core: NodeCore = field(kw_only=True)
    events: list[ev.Event] = field(default_factory=list, kw_only=True)
    times: list[float] = field(default_factory=list, kw_only=True)  # when each event came
    booked: float | None = field(default=None, kw_only=True)  # the timer booked (one entry)

    @property
    def peer_id(self) -> str:
        return self.core.identity.peer_id.hex()

    def knows(self, other: FakeNode) -> bool:
        """True if this node has `other` (its current instance) in its peer table."""
        rec = self.core.members.get(other.core.identity.peer_id)
        return rec is not None and rec.instance == other.core.identity.instance

    def of_type(self, kind: type[Any]) -> list[Any]:
        """The events of one type this node emitted so far."""
        return [e for e in self.events if isinstance(e, kind)]

    def receive(self, data: bytes, source: Address, channel: str) -> None:
        self.core.receive_datagram(data, source, self.lan.now, channel=channel)
        self.lan._service(self)


@dataclass(eq=False)
class Endpoint(Station):
    """A station driven from outside (a Node's transport): arrivals go to `deliver`."""

    deliver: Callable[[bytes, Address, str], None] = field(kw_only=True)

    def receive(self, data: bytes, source: Address, channel: str) -> None:
        self.deliver(data, source, channel)

    def send(self, data: bytes, to: Address | None) -> None:
        """Hand a datagram to the LAN: to the group (None) or to a unicast address."""
        if self.up:
            self.lan._route(self, data, to)


@dataclass(eq=False)
class Sent:
    """One datagram a station handed to the LAN."""

    time: float
    sender: Station
    to: Address | None  # None: the group
    data: bytes
    lost: tuple[Station, ...] = ()  # the receivers a copy of it was lost to

    @cached_property
    def msg(self) -> codec.Message | None:
        """The datagram decoded without a key (None if it does not decode so)."""
        try:
            return codec.decode(self.data)
        except codec.DecodeError:
            return None


class FakeLan:
    """Many NodeCores (and Nodes' endpoints) on a simulated LAN, in virtual time."""

    def __init__(
        self,
        seed: int = 0,
        *,
        loss: float = 0.0,
        duplicate: float = 0.0,
        delay: tuple[float, float] = (0.0002, 0.002),
        start: float = 1000.0,
        prefix: int = 24,
        log: bool = True,
    ) -> None:
        """`log`: keep every datagram sent in `sent` (off for long, large simulations)."""
        if prefix not in (16, 24):
            raise ValueError("prefix must be 16 or 24")
        self.prefix = prefix
        self._octets = prefix // 8  # an address's subnet: its first 2 or 3 octets
        self.rng = random.Random(seed)
        self.loss = loss
        self.duplicate = duplicate
        self.delay = delay
        self._now = start
        self.stations: list[Station] = []
        self.nodes: list[FakeNode] = []  # the cores among the stations
        self.loss_model: Callable[[Station, Station], bool] | None = None
        self.delivered = 0
        self.dropped = 0
        self.sent: list[Sent] = []
        self._log = log
        self._by_addr: dict[Address, Station] = {}
        self._subnets: dict[str, list[Station]] = {}  # "10.0.0" -> stations with an address there
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._counter = 0
        self._scheduler: Scheduler | None = None

    @property
    def now(self) -> float:
        """The virtual time: the LAN's own, or its event loop's once bound."""
        return self._scheduler.time() if self._scheduler is not None else self._now

    @now.setter
    def now(self, value: float) -> None:
        self._now = value

    # ------------------------------------------------------------- topology

    def add_node(
        self,
        nick: str,
        *,
        ips: Iterable[str] | None = None,
        peer_id: bytes | None = None,
        instance: int | None = None,
        start: bool = True,
        keys: Sequence[bytes] = (),
        **config: Any,
    ) -> FakeNode:
        """Create (and by default start) a core; extra keywords go to NodeConfig."""
        addrs, uport, index = self._place(ips)
        pid = peer_id if peer_id is not None else self.rng.randbytes(8)
        inst = instance if instance is not None else self.new_instance()
        core = NodeCore(
            NodeConfig(nick=nick, host=f"host-{nick}", **config),
            Identity(pid, inst),
            uport=uport,
            rng=random.Random(seed := self.rng.random()),
            keys=KeyRing(tuple(keys)) if keys else None,
            token_rng=random.Random(f"tokens {seed}"),  # reproducible, and no draw of self.rng
        )
        node = FakeNode(nick, addrs, self, uport, index, core=core)
        self.nodes.append(node)
        self._register(node)
        if start:
            core.start(self.now)
            self._service(node)
        return node

    def add_endpoint(
        self,
        name: str,
        deliver: Callable[[bytes, Address, str], None],
        *,
        ips: Iterable[str] | None = None,
    ) -> Endpoint:
        """A station driven from outside: it sends with `Endpoint.send`, receives by `deliver`."""
        addrs, uport, index = self._place(ips)
        endpoint = Endpoint(name, addrs, self, uport, index, deliver=deliver)
        self._register(endpoint)
        return endpoint

    def new_instance(self) -> int:
        """An instance number for a station starting now (unique on this LAN)."""
        return (int(self.now * 1000) << 16) + len(self.stations) + 1

    def _place(self, ips: Iterable[str] | None) -> tuple[tuple[str, ...], int, int]:
        """Addresses, unicast port and index for the next station."""
        number = len(self.stations) + 1
        addrs = tuple(ips) if ips is not None else (f"10.0.{number // 250}.{number % 250 + 1}",)
        return addrs, 40000 + number, len(self.stations)

    def _register(self, station: Station) -> None:
        self.stations.append(station)
        for ip in station.ips:
            self._by_addr[(ip, station.uport)] = station
        for subnet in dict.fromkeys(self._subnet(ip) for ip in station.ips):
            self._subnets.setdefault(subnet, []).append(station)

    def restart(self, node: FakeNode, **config: Any) -> FakeNode:
        """Crash `node` and start it again with the same peer id and a newer instance.

        Keywords change its NodeConfig, or its `keys` (default: the same keys).
        """
        self.crash(node)
        ring = node.core.keys
        cfg: dict[str, Any] = {
            "keys": ring.keys if ring is not None else (),
            "rooms": node.core.config.rooms,
            "heartbeat_interval": node.core.config.heartbeat_interval,
            **config,
        }
        return self.add_node(
            node.core.config.nick,
            ips=node.ips,
            peer_id=node.core.identity.peer_id,
            instance=node.core.identity.instance + 1,
            **cfg,
        )

    def crash(self, node: Station) -> None:
        """Stop a station dead: no goodbye, nothing sent or received any more."""
        node.up = False
        for ip in node.ips:
            self._by_addr.pop((ip, node.uport), None)

    def leave(self, node: FakeNode) -> None:
        """Graceful leave: the node says goodbye, then stops once it has."""
        node.core.leave(self.now)
        self._service(node)

    def partition(self, node: Station) -> None:
        node.partitioned = True

    def heal(self, node: Station) -> None:
        node.partitioned = False

    # --------------------------------------------------------------- running

    def call(self, node: FakeNode, fn: Callable[[NodeCore, float], Any]) -> Any:
        """Run fn(core, now) on a node and send what it queued."""
        result = fn(node.core, self.now)
        self._service(node)
        return result

    def run(self, duration: float) -> None:
        """Advance virtual time by `duration` seconds."""
        self._run_to(self.now + duration, None)

    def run_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Advance until predicate() holds (True) or timeout passes (False)."""
        if predicate():
            return True
        return self._run_to(self.now + timeout, predicate)

    def bind(self, scheduler: Scheduler) -> None:
        """Run on `scheduler` (an event loop) from now on: its clock becomes the LAN's.

        What was due on the LAN's own clock moves to it; its time must not be
        behind the LAN's once stations exist.
        """
        if self._scheduler is scheduler:
            return
        if self._scheduler is not None:
            raise RuntimeError("this FakeLan already runs on another event loop")
        if self.stations and scheduler.time() < self._now:
            raise RuntimeError(
                f"the event loop's clock ({scheduler.time()}) is behind the LAN's ({self._now}): "
                "start it at lan.now (lanchat.testing.run(..., start=lan.now))"
            )
        self._scheduler = scheduler
        queue, self._queue = sorted(self._queue), []
        for when, _, action in queue:
            scheduler.call_at(when, action)

    def _run_to(self, end: float, predicate: Callable[[], bool] | None) -> bool:
        if self._scheduler is not None:
            raise RuntimeError("this FakeLan runs on its event loop: await asyncio.sleep() there")
        while self._queue and self._queue[0][0] <= end:
            when, _, action = heapq.heappop(self._queue)
            self._now = max(self._now, when)
            action()
            if predicate is not None and predicate():
                return True
        self._now = max(self._now, end)
        return predicate() if predicate is not None else False

    def _schedule(self, when: float, action: Callable[[], None]) -> None:
        if self._scheduler is not None:
            self._scheduler.call_at(when, action)
            return
        self._counter += 1
        heapq.heappush(self._queue, (when, self._counter, action))

    def _service(self, node: FakeNode) -> None:
        """Collect a node's events and datagrams, and book its next timer."""
        core, now = node.core, self.now
        while (event := core.next_event()) is not None:
            node.events.append(event)
            node.times.append(now)
        for dgram in core.datagrams_to_send():
            if node.up:
                self._route(node, dgram.data, dgram.to)
        if core.closed and node.up:
            self.crash(node)  # its goodbyes are out: it stops, as a closed process would
        timer = core.get_timer()
        if timer is not None and node.up and timer != node.booked:
            node.booked = timer
            self._schedule(timer, lambda: self._on_timer(node, timer))

    def _on_timer(self, node: FakeNode, booked: float) -> None:
        timer = node.core.get_timer()
        if not node.up or timer is None or timer != booked:
            return  # superseded by a later booking
        node.booked = None
        now = self.now
        node.core.handle_timer(now)
        check_timer_moved(node.name, node.core, now)
        self._service(node)

    def _lost(self, src: Station, dst: Station) -> bool:
        if src.partitioned or dst.partitioned:
            return True
        if self.loss_model is not None:
            return self.loss_model(src, dst)
        p_out = src.loss_out or self.loss
        return self.rng.random() < p_out or self.rng.random() < dst.loss_in

    def _subnet(self, ip: str) -> str:
        return ".".join(ip.split(".")[: self._octets])

    def _route(self, src: Station, data: bytes, to: Address | None) -> None:
        sent = Sent(self.now, src, to, data)
        if self._log:
            self.sent.append(sent)
        if to is None:
            for ip in src.ips:
                source = (ip, 50000 + src.index)
                for dst in self._subnets.get(self._subnet(ip), ()):
                    if dst.up:
                        self._deliver(sent, dst, source)
            return
        target = self._by_addr.get(to)
        if target is None:
            self.dropped += 1
            return
        subnet = self._subnet(to[0])
        src_ip = next((ip for ip in src.ips if self._subnet(ip) == subnet), src.ips[0])
        self._deliver(sent, target, (src_ip, src.uport))

    def _deliver(self, sent: Sent, dst: Station, source: Address) -> None:
        src, data = sent.sender, sent.data
        channel = GROUP if sent.to is None else UNICAST
        copies = 2 if self.duplicate and self.rng.random() < self.duplicate else 1
        for _ in range(copies):
            if src is not dst and self._lost(src, dst):
                self.dropped += 1
                sent.lost += (dst,)
                continue
            when = self.now + self.rng.uniform(*self.delay)

            def arrive(dst: Station = dst, source: Address = source) -> None:
                if dst.up:
                    self.delivered += 1
                    dst.receive(data, source, channel)

            self._schedule(when, arrive)
