"""A seeded in-memory LAN for testing lanchat cores (and your code) in virtual time.

    lan = FakeLan(seed=1, loss=0.2)
    alice, bob = lan.add_node("alice"), lan.add_node("bob")
    lan.run_until(lambda: bob.knows(alice), timeout=5)
    alice.core.say("lobby", "hi", lan.now)

Datagrams can be dropped, duplicated and delayed (which reorders them); every
random choice comes from one `random.Random(seed)`, so a run is reproducible.
Multicast reaches every node with an address in the sender interface's subnet
(a /24, or a /16 with `prefix=16` for groups of more than 250 nodes) and loops
back to the sender, as IP_MULTICAST_LOOP does on a real host.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lanchat import events as ev
from lanchat.config import NodeConfig
from lanchat.core import Address, Identity, NodeCore
from lanchat.seal import KeyRing


@dataclass
class FakeNode:
    """One node on the fake LAN: its core, addresses and the events it emitted."""

    name: str
    core: NodeCore
    ips: tuple[str, ...]
    lan: FakeLan
    events: list[ev.Event] = field(default_factory=list)
    up: bool = True
    loss_in: float = 0.0
    loss_out: float = 0.0
    partitioned: bool = False
    index: int = 0  # position in FakeLan.nodes (names its multicast source port)
    booked: float | None = None  # the timer last booked for it (one heap entry per change)

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


class FakeLan:
    """Many NodeCores on a simulated LAN, driven in virtual time."""

    def __init__(
        self,
        seed: int = 0,
        *,
        loss: float = 0.0,
        duplicate: float = 0.0,
        delay: tuple[float, float] = (0.0002, 0.002),
        start: float = 1000.0,
        prefix: int = 24,
    ) -> None:
        if prefix not in (16, 24):
            raise ValueError("prefix must be 16 or 24")
        self._octets = prefix // 8  # an address's subnet: its first 2 or 3 octets
        self.rng = random.Random(seed)
        self.loss = loss
        self.duplicate = duplicate
        self.delay = delay
        self.now = start
        self.nodes: list[FakeNode] = []
        self.loss_model: Callable[[FakeNode, FakeNode], bool] | None = None
        self.delivered = 0
        self.dropped = 0
        self._by_addr: dict[Address, FakeNode] = {}
        self._subnets: dict[str, list[FakeNode]] = {}  # "10.0.0" -> nodes with an address there
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._counter = 0

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
        """Create (and by default start) a node; extra keywords go to NodeConfig."""
        index = len(self.nodes) + 1
        addrs = tuple(ips) if ips is not None else (f"10.0.{index // 250}.{index % 250 + 1}",)
        pid = peer_id if peer_id is not None else self.rng.randbytes(8)
        inst = instance if instance is not None else (int(self.now * 1000) << 16) + index
        uport = 40000 + index
        core = NodeCore(
            NodeConfig(nick=nick, host=f"host-{nick}", **config),
            Identity(pid, inst),
            uport=uport,
            rng=random.Random(self.rng.random()),
            keys=KeyRing(tuple(keys)) if keys else None,
        )
        node = FakeNode(nick, core, addrs, self, index=len(self.nodes))
        self.nodes.append(node)
        for ip in addrs:
            self._by_addr[(ip, uport)] = node
        for subnet in dict.fromkeys(self._subnet(ip) for ip in addrs):
            self._subnets.setdefault(subnet, []).append(node)
        if start:
            core.start(self.now)
            self._service(node)
        return node

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

    def crash(self, node: FakeNode) -> None:
        """Stop a node dead: no goodbye, nothing sent or received any more."""
        node.up = False
        for ip in node.ips:
            self._by_addr.pop((ip, node.core.uport), None)

    def leave(self, node: FakeNode) -> None:
        """Graceful leave: the node says goodbye, then stops once it has."""
        node.core.leave(self.now)
        self._service(node)

    def partition(self, node: FakeNode) -> None:
        node.partitioned = True

    def heal(self, node: FakeNode) -> None:
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

    def _run_to(self, end: float, predicate: Callable[[], bool] | None) -> bool:
        while self._queue and self._queue[0][0] <= end:
            when, _, action = heapq.heappop(self._queue)
            self.now = max(self.now, when)
            action()
            if predicate is not None and predicate():
                return True
        self.now = max(self.now, end)
        return predicate() if predicate is not None else False

    def _schedule(self, when: float, action: Callable[[], None]) -> None:
        self._counter += 1
        heapq.heappush(self._queue, (when, self._counter, action))

    def _service(self, node: FakeNode) -> None:
        """Collect a node's events and datagrams, and book its next timer."""
        core = node.core
        while (event := core.next_event()) is not None:
            node.events.append(event)
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
        node.core.handle_timer(self.now)
        self._service(node)

    def _lost(self, src: FakeNode, dst: FakeNode) -> bool:
        if src.partitioned or dst.partitioned:
            return True
        if self.loss_model is not None:
            return self.loss_model(src, dst)
        p_out = src.loss_out or self.loss
        return self.rng.random() < p_out or self.rng.random() < dst.loss_in

    def _subnet(self, ip: str) -> str:
        return ".".join(ip.split(".")[: self._octets])

    def _route(self, src: FakeNode, data: bytes, to: Address | None) -> None:
        if to is None:
            for ip in src.ips:
                source = (ip, 50000 + src.index)
                for dst in self._subnets.get(self._subnet(ip), ()):
                    if dst.up:
                        self._deliver(src, dst, data, source)
            return
        target = self._by_addr.get(to)
        if target is None:
            self.dropped += 1
            return
        subnet = self._subnet(to[0])
        src_ip = next((ip for ip in src.ips if self._subnet(ip) == subnet), src.ips[0])
        self._deliver(src, target, data, (src_ip, src.core.uport))

    def _deliver(self, src: FakeNode, dst: FakeNode, data: bytes, source: Address) -> None:
        copies = 2 if self.duplicate and self.rng.random() < self.duplicate else 1
        for _ in range(copies):
            if src is not dst and self._lost(src, dst):
                self.dropped += 1
                continue
            when = self.now + self.rng.uniform(*self.delay)

            def arrive(dst: FakeNode = dst, source: Address = source) -> None:
                if dst.up:
                    self.delivered += 1
                    dst.core.receive_datagram(data, source, self.now)
                    self._service(dst)

            self._schedule(when, arrive)
