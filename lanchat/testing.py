"""Test lanchat, and your code on top of it, without a network and without waiting.

Bare cores on the seeded in-memory LAN, time stepped by hand (`lanchat.fakelan`):

    lan = FakeLan(seed=1, loss=0.2)
    alice, bob = lan.add_node("alice"), lan.add_node("bob")
    lan.run_until(lambda: bob.knows(alice), timeout=5)

Real `lanchat.Node`s on it, in virtual time (like trio's FakeNet with
`MockClock(autojump_threshold=0)`): `run` is `asyncio.run` on an event loop
whose clock jumps to the next timer whenever nothing is ready, so sleeps,
timeouts and the nodes' timers take no wall time; `lan.node()` makes a Node
whose transport is the fake LAN (no socket is opened):

    async def main() -> None:
        async with lan.node("alice") as alice, lan.node("bob") as bob:
            await bob.lookup("alice", wait=5)
            await alice.say("lobby", "hi")
            await bob.wait_for(lambda e: isinstance(e, lanchat.ChatReceived), 5)

    run(main())
"""

from __future__ import annotations

import asyncio
import random
import selectors
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, TypeVar

from lanchat import fakelan, netif
from lanchat.core import Address, Datagram, Identity
from lanchat.fakelan import (
    Endpoint,
    FakeNode,
    Scheduler,
    Sent,
    Station,
    TimerStuck,
    run_timers,
)
from lanchat.node import Node
from lanchat.transport import Receiver

__all__ = [
    "FakeLan",
    "FakeNode",
    "FakeTransport",
    "Scheduler",
    "Sent",
    "Station",
    "TimerStuck",
    "VirtualEventLoop",
    "run",
    "run_timers",
]

T = TypeVar("T")


class FakeTransport:
    """A Node's transport on a FakeLan: one interface per address of its station."""

    def __init__(self, lan: fakelan.FakeLan, name: str, ips: Iterable[str] | None = None) -> None:
        self.lan = lan
        self.ipv6 = False  # the fake LAN carries IPv4 only
        self.station: Endpoint = lan.add_endpoint(name, self._arrive, ips=ips)
        self.station.up = False  # until opened
        self._receiver: Receiver | None = None
        self._joined: dict[netif.InterfaceAddress, None] = {}

    def read_interfaces(self) -> list[netif.InterfaceInfo]:
        return [
            netif.InterfaceInfo(
                name=f"fake{i}",
                index=i + 2,
                up=True,
                loopback=False,
                multicast=True,
                point_to_point=False,
                virtual_kind=None,
                ipv4=(netif.IPv4Net(ip, self.lan.prefix),),
            )
            for i, ip in enumerate(self.station.ips)
        ]

    async def open(self, receiver: Receiver, wanted: Sequence[netif.InterfaceAddress]) -> None:
        self.lan.bind(asyncio.get_running_loop())
        self._receiver = receiver
        self._joined = dict.fromkeys(wanted)
        self.station.up = True

    @property
    def unicast_port(self) -> int:
        return self.station.uport

    @property
    def joined(self) -> dict[netif.InterfaceAddress, None]:
        return self._joined

    async def join(self, where: netif.InterfaceAddress) -> None:
        self._joined[where] = None

    def leave(self, where: netif.InterfaceAddress) -> None:
        self._joined.pop(where, None)

    def send(self, dgram: Datagram) -> None:
        """To a peer, or to the group (on every address: none once every interface is left)."""
        if dgram.to is not None or self._joined:
            self.station.send(dgram.data, dgram.to)

    def watch(self, changed: asyncio.Event) -> Callable[[], None] | None:
        return None  # the node polls read_interfaces (in virtual time)

    def close(self) -> None:
        if self._receiver is not None:
            self.lan.crash(self.station)
            self._receiver = None

    def _arrive(self, data: bytes, source: Address, channel: str) -> None:
        if self._receiver is not None:
            self._receiver.datagram(data, source, None, channel)


class FakeLan(fakelan.FakeLan):
    """The seeded in-memory LAN, for bare cores (`add_node`) and real Nodes (`node`)."""

    def __init__(self, seed: int = 0, **options: Any) -> None:
        """Options as `lanchat.fakelan.FakeLan`: loss, duplicate, delay, start, prefix, log."""
        super().__init__(seed, **options)
        self._stations: dict[Node, Station] = {}

    def transport(self, name: str = "node", *, ips: Iterable[str] | None = None) -> FakeTransport:
        """A transport for a Node of your own making: `Node(..., transport=lan.transport())`."""
        return FakeTransport(self, name, ips)

    def node(
        self, nick: str, *, ips: Iterable[str] | None = None, keys: Sequence[bytes] = (), **kw: Any
    ) -> Node:
        """A real `lanchat.Node` on this LAN (not started: `async with` it inside `run`).

        Its identity, host name and randomness come from the LAN's seed; other
        keywords go to Node.
        """
        transport = self.transport(nick, ips=ips)
        identity = Identity(self.rng.randbytes(8), self.new_instance())
        options: dict[str, Any] = {"host": f"host-{nick}", **kw}
        rng = random.Random(self.rng.random())
        node = Node(nick, transport=transport, identity=identity, keys=keys, rng=rng, **options)
        self._stations[node] = transport.station
        return node

    def station(self, node: Node) -> Station:
        """Where a Node made by `node()` is on the LAN: to crash, partition or make lossy."""
        return self._stations[node]


class _Autojump(selectors.DefaultSelector):
    """A selector that, when nothing is ready and a timer is due later, jumps the clock to it."""

    def __init__(self, loop: VirtualEventLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or (timeout is not None and timeout <= 0):
            return ready
        if timeout is None:  # no timer at all: only real I/O (another thread) can wake us
            return super().select(None)
        self._loop.advance(timeout)
        return []


class VirtualEventLoop(asyncio.SelectorEventLoop):
    """An asyncio event loop in virtual time with autojump (trio's autojump_threshold=0)."""

    def __init__(self, start: float = 1000.0) -> None:
        self._virtual_now = start
        super().__init__(_Autojump(self))

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        """Move the clock on (timers then due run at the next iteration)."""
        self._virtual_now += seconds


def run(main: Coroutine[Any, Any, T], *, start: float = 1000.0) -> T:
    """`asyncio.run(main)` in virtual time, starting at `start` (FakeLan's default).

    An exception in a callback, which asyncio would only log (a FakeLan's
    `TimerStuck`, a node's), stops the loop and is raised here.
    """
    errors: list[BaseException] = []

    def failed(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        errors.append(exc if isinstance(exc, BaseException) else RuntimeError(context["message"]))
        loop.stop()

    def make_loop() -> VirtualEventLoop:
        loop = VirtualEventLoop(start)
        loop.set_exception_handler(failed)
        return loop

    try:
        with asyncio.Runner(loop_factory=make_loop) as runner:
            result = runner.run(main)
    except BaseException:
        if errors:
            raise errors[0] from None
        raise
    if errors:
        raise errors[0]
    return result
