"""The asyncio adapter: real sockets and the event loop's clock around a NodeCore.

    async with Node("alice", interfaces=["eth0"], keys=[key]) as node:  # keys: optional
        await node.say("lobby", "hello")
        async for event in node.events():
            print(event)

One multicast receive socket (shared port, address reuse) joined on every
chosen interface by address; one multicast send socket per interface; one
unicast socket on an ephemeral port. Exactly one `loop.call_at` timer handle,
re-armed after every receive and send.

Interfaces come and go while a node runs (cables, Wi-Fi, VPNs, containers):
every `INTERFACE_POLL_INTERVAL` seconds, and on `refresh_interfaces()`, the node
re-reads and re-chooses them with the same options, joins and opens a send
socket on new ones, leaves vanished ones, emits `InterfacesChanged` and has the
core announce itself and query again.

With `history` on, every chat line, notice and direct message the node sends or
hands out is stored (`lanchat.history`), committed before any subscriber sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import random
import socket
import struct
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from lanchat import config as cfg
from lanchat import events as ev
from lanchat import netif
from lanchat.core import Address, Datagram, Identity, NodeCore, Stats
from lanchat.errors import (
    ClosedError,
    ConfigError,
    InterfaceError,
    LanchatError,
    NetworkError,
    PeerError,
)
from lanchat.identity import IdentityLease, acquire_identity, ephemeral_identity
from lanchat.seal import KeyRing

if TYPE_CHECKING:  # sqlite3 is imported only by a node that keeps history
    from lanchat.history import HistoryStore

# Events kept for a subscriber that does not read; the oldest are dropped past it.
_MAX_QUEUED_EVENTS: Final = 10_000
_IP_MULTICAST_ALL: Final = 49  # Linux: deliver only groups this socket joined
_RECV_BUFFER: Final = 1 << 20  # 1 MiB absorbs bursts of ~800 full datagrams
# Query answers arrive within ~0.5 s (three queries, answers spread by <= 0.5 s);
# a name looked up this soon after start waits for them instead of failing.
_DISCOVERY_GRACE: Final = 1.5
# Interfaces are re-read this often: a new or returning interface is joined within
# 2 s, less than the 3 s of silence after which peers call a node unreachable
# (config.UNREACHABLE_AFTER), and the announcement that follows reaches them in
# milliseconds. A read costs ~1.5 ms (getifaddrs and /sys, 4 interfaces).
INTERFACE_POLL_INTERVAL: Final = 2.0


def _os_error(action: str, exc: OSError) -> NetworkError:
    hints = {
        errno.EADDRINUSE: "another program holds the port without address reuse",
        errno.EACCES: "permission denied (ports below 1024 need privileges)",
        errno.ENODEV: "the interface does not exist (any more)",
        errno.EADDRNOTAVAIL: "the address is not on this machine (any more)",
        errno.ENETUNREACH: "the network is unreachable from this interface",
    }
    hint = hints.get(exc.errno or 0, exc.strerror or str(exc))
    return NetworkError(exc.errno or 0, f"cannot {action}: {hint}")


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self, node: Node) -> None:
        self.node = node

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.node._on_datagram(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        self.node.send_errors += 1


class Node:
    """A lanchat node on the real network, driven by asyncio."""

    def __init__(
        self,
        nick: str,
        *,
        rooms: Iterable[str] = (cfg.DEFAULT_ROOM,),
        group: str = cfg.DEFAULT_GROUP,
        port: int = cfg.DEFAULT_PORT,
        interfaces: Sequence[str] = (),
        exclude_interfaces: Sequence[str] = (),
        ttl: int = cfg.DEFAULT_TTL,
        member: bool = True,
        all_rooms: bool = False,
        heartbeat_interval: float = cfg.HEARTBEAT_INTERVAL,
        unreachable_after: float | None = None,
        remove_after: float | None = None,
        identity: Identity | None = None,
        host: str | None = None,
        keys: Sequence[bytes] = (),
        interface_poll_interval: float | None = INTERFACE_POLL_INTERVAL,
        history: bool | Path = False,
    ) -> None:
        """`history`: True keeps messages in the user's history file, a Path in that file."""
        self.group = cfg.check_group(group)
        self.port = cfg.check_port(port)
        if not 1 <= ttl <= 255:
            raise ConfigError(f"ttl {ttl} is not in 1..255")
        self.ttl = ttl
        scale = heartbeat_interval / cfg.HEARTBEAT_INTERVAL
        self.config = cfg.NodeConfig(
            nick=nick,
            rooms=tuple(rooms),
            host=host if host is not None else socket.gethostname(),
            member=member,
            all_rooms=all_rooms,
            heartbeat_interval=heartbeat_interval,
            unreachable_after=unreachable_after or cfg.UNREACHABLE_AFTER * scale,
            remove_after=remove_after or cfg.REMOVE_AFTER * scale,
        )
        if interface_poll_interval is not None and interface_poll_interval <= 0:
            raise ConfigError("the interface poll interval must be positive (or None: never)")
        self._wanted = tuple(interfaces)
        self._excluded = tuple(exclude_interfaces)
        self._poll_interval = interface_poll_interval
        self.choice = netif.choose_interfaces(netif.read_interfaces(), self._wanted, self._excluded)
        self.keys = KeyRing(tuple(keys)) if keys else None
        if history is True:
            from lanchat.history import default_path

            history = default_path()
        self._history_path = history if isinstance(history, Path) else None
        self.history: HistoryStore | None = None  # open while the node runs
        self._identity = identity
        self._lease: IdentityLease | None = None
        self._core: NodeCore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._transports: list[asyncio.DatagramTransport] = []
        self._unicast: asyncio.DatagramTransport | None = None
        self._rx: socket.socket | None = None  # the group socket, for joining and leaving
        self._senders: dict[netif.InterfaceAddress, asyncio.DatagramTransport] = {}
        self._refresh_lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None
        self._subscribers: list[asyncio.Queue[ev.Event]] = []
        self._closed = asyncio.Event()
        self.send_errors = 0
        self.interface_errors = 0  # joins, leaves and interface reads the OS refused
        self.dropped_events = 0
        self._started_at = 0.0

    # ---------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the sockets, announce this node and ask who is there."""
        if self._core is not None:
            return
        loop = self._loop = asyncio.get_running_loop()
        if self._history_path is not None and self.history is None:
            from lanchat.history import HistoryStore

            try:
                self.history = HistoryStore(self._history_path)
            except ConfigError as exc:
                raise ConfigError(f"{exc} (--no-history runs without it)") from exc
        if self._identity is None:
            if self.config.member:
                self._lease = acquire_identity(self.config.host)
                self._identity = self._lease.identity
            else:
                self._identity = ephemeral_identity()
        try:
            await self._open_sockets(loop)
        except BaseException:
            self._close_sockets()
            self._close_history()
            raise
        assert self._unicast is not None
        uport = self._unicast.get_extra_info("sockname")[1]
        self._core = NodeCore(
            self.config, self._identity, uport=uport, rng=random.Random(), keys=self.keys
        )
        self._started_at = loop.time()
        self._core.start(self._started_at)
        self._pump()
        if self._poll_interval is not None:
            self._watcher = loop.create_task(
                self._follow_interfaces(self._poll_interval), name="lanchat-interfaces"
            )

    async def close(self) -> None:
        """Say goodbye (a member sends it three times over 150 ms), then close the sockets."""
        core = self._core
        if core is None or self._closed.is_set():
            return
        if not core.closed:
            core.leave(self._now())
            self._pump()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wait_core_closed(), timeout=2.0)
        self._closed.set()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        async with self._refresh_lock:  # a refresh in progress opens no socket after this
            self._close_sockets()
        if self._lease is not None:
            self._lease.release()
        self._close_history()

    def _close_history(self) -> None:
        if self.history is not None:
            self.history.close()
            self.history = None

    async def _wait_core_closed(self) -> None:
        while self._core is not None and not self._core.closed:
            await asyncio.sleep(0.01)

    def _close_sockets(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for transport in self._transports:
            transport.close()
        self._transports.clear()
        self._senders.clear()
        self._rx = None

    async def _open_sockets(self, loop: asyncio.AbstractEventLoop) -> None:
        wanted = self.choice.joined
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        try:
            rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):
                rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            with contextlib.suppress(OSError):
                rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECV_BUFFER)
            if sys.platform.startswith("linux"):
                rx.setsockopt(socket.IPPROTO_IP, _IP_MULTICAST_ALL, 0)
                rx.bind((self.group, self.port))
            else:  # pragma: no cover - other systems cannot bind a group address
                rx.bind(("", self.port))
        except OSError as exc:
            rx.close()
            raise _os_error(f"open the group port {self.port}", exc) from exc
        await self._endpoint(loop, rx)
        self._rx = rx
        joined = []
        for where in wanted:
            try:
                self._membership(where, join=True)
            except OSError as exc:
                self.interface_errors += 1
                if len(wanted) == 1:
                    raise _os_error(f"join {self.group} on {where.address}", exc) from exc
                continue  # tried again at the next interface poll
            joined.append(where)
        if not joined:
            raise NetworkError(0, f"cannot join {self.group} on any interface")
        tx_unicast = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        with contextlib.suppress(OSError):
            tx_unicast.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECV_BUFFER)
        tx_unicast.bind(("0.0.0.0", 0))
        self._unicast = await self._endpoint(loop, tx_unicast)
        for where in joined:
            try:
                self._senders[where] = await self._open_sender(loop, where.address)
            except OSError as exc:
                raise _os_error(f"send multicast from {where.address}", exc) from exc

    def _membership(self, where: netif.InterfaceAddress, *, join: bool) -> None:
        """Join or leave the group on one interface (OSError if the OS refuses)."""
        assert self._rx is not None
        group = socket.inet_aton(self.group) + socket.inet_aton(where.address)
        if join:
            self._rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, group)
        elif where.index and sys.platform.startswith("linux"):
            # Leave by interface index (struct ip_mreqn): the address may be gone already,
            # and leaving by a vanished address would keep the interface in the group.
            mreqn = group + struct.pack("@i", where.index)
            self._rx.setsockopt(socket.IPPROTO_IP, socket.IP_DROP_MEMBERSHIP, mreqn)
        else:
            self._rx.setsockopt(socket.IPPROTO_IP, socket.IP_DROP_MEMBERSHIP, group)

    async def _open_sender(
        self, loop: asyncio.AbstractEventLoop, address: str
    ) -> asyncio.DatagramTransport:
        """A socket sending to the group from `address` (OSError if the OS refuses)."""
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        try:
            tx.bind((address, 0))
            tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(address))
            tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, self.ttl)
            tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        except BaseException:
            tx.close()
            raise
        return await self._endpoint(loop, tx)

    async def _add_interface(
        self, loop: asyncio.AbstractEventLoop, where: netif.InterfaceAddress
    ) -> None:
        """Join the group on `where` and open its send socket, or neither (OSError)."""
        self._membership(where, join=True)
        try:
            self._senders[where] = await self._open_sender(loop, where.address)
        except BaseException:
            with contextlib.suppress(OSError):
                self._membership(where, join=False)
            raise

    def _remove_interface(self, where: netif.InterfaceAddress) -> None:
        """Close the send socket of `where` and leave the group there; never raises."""
        sender = self._senders.pop(where, None)
        if sender is not None:
            sender.close()
            with contextlib.suppress(ValueError):
                self._transports.remove(sender)
        with contextlib.suppress(OSError):  # the interface may be gone already
            self._membership(where, join=False)

    async def _endpoint(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket
    ) -> asyncio.DatagramTransport:
        sock.setblocking(False)
        transport, _ = await loop.create_datagram_endpoint(lambda: _Receiver(self), sock=sock)
        self._transports.append(transport)
        return transport

    # ------------------------------------------------------------- driving

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _on_datagram(self, data: bytes, source: Address) -> None:
        if self._core is None or self._closed.is_set():
            return
        self._core.receive_datagram(data, source, self._now())
        self._pump()

    def _on_timer(self) -> None:
        self._timer = None
        if self._core is None or self._closed.is_set():
            return
        self._core.handle_timer(self._now())
        self._pump()

    def _pump(self) -> None:
        """Send what the core queued, hand out its events, re-arm the one timer."""
        core = self._core
        assert core is not None and self._loop is not None
        for dgram in core.datagrams_to_send():
            self._send(dgram)
        while (event := core.next_event()) is not None:
            self._publish(event)
        when = core.get_timer()
        if self._timer is not None and (when is None or self._timer.when() != when):
            self._timer.cancel()
            self._timer = None
        if when is not None and self._timer is None and not self._closed.is_set():
            self._timer = self._loop.call_at(when, self._on_timer)

    def _publish(self, event: ev.Event) -> None:
        if self.history is not None and self._identity is not None:
            self.history.record_event(event, instance=self._identity.instance)  # before shown
        for queue in self._subscribers:
            if queue.qsize() >= _MAX_QUEUED_EVENTS:
                queue.get_nowait()
                self.dropped_events += 1
            queue.put_nowait(event)

    def _send(self, dgram: Datagram) -> None:
        try:
            if dgram.to is None:
                for tx in self._senders.values():
                    tx.sendto(dgram.data, (self.group, self.port))
            elif self._unicast is not None:
                self._unicast.sendto(dgram.data, dgram.to)
        except OSError:
            self.send_errors += 1

    def _require(self) -> NodeCore:
        if self._core is None:
            raise ClosedError("the node is not started")
        if self._closed.is_set():
            raise ClosedError("the node is closed")
        return self._core

    def _do(self, action: Callable[[NodeCore, float], Any]) -> Any:
        core = self._require()
        result = action(core, self._now())
        self._pump()
        return result

    # ---------------------------------------------------------- interfaces

    async def _follow_interfaces(self, interval: float) -> None:
        """Refresh the interfaces every `interval` seconds until the node closes."""
        while not self._closed.is_set():
            await asyncio.sleep(interval)
            try:
                await self.refresh_interfaces()
            except (OSError, LanchatError):  # never end the poll: the next one may do better
                self.interface_errors += 1

    async def refresh_interfaces(self) -> ev.InterfacesChanged | None:
        """Re-read and re-choose the interfaces now, and follow any change.

        Joins the group on new interface addresses, leaves vanished ones, then
        announces this node and queries again. Returns the `InterfacesChanged`
        event it emitted, or None if nothing changed (or the node is not running).
        With no usable interface left the node keeps running and sends nowhere
        until one comes back. Runs by itself every `interface_poll_interval`
        seconds (`INTERFACE_POLL_INTERVAL`; None turns the poll off).
        """
        async with self._refresh_lock:
            core, loop = self._core, self._loop
            if core is None or loop is None or self._closed.is_set() or core.closed:
                return None
            try:
                infos = netif.read_interfaces()
            except OSError:
                self.interface_errors += 1
                return None
            try:
                choice = netif.choose_interfaces(infos, self._wanted, self._excluded)
            except InterfaceError:  # nothing usable: leave everything, keep polling
                choice = netif.Choice(used=(), verdicts=(), loopback_only=False)
            change = netif.diff(self._senders, choice.joined)
            for where in change.removed:
                self._remove_interface(where)
            added = []
            for where in change.added:
                try:
                    await self._add_interface(loop, where)
                except OSError:
                    self.interface_errors += 1  # not joined: tried again at the next poll
                    continue
                added.append(where)
            self.choice = choice
            if not (added or change.removed):
                return None
            event = ev.InterfacesChanged(
                added=tuple(map(str, added)),
                removed=tuple(map(str, change.removed)),
                active=tuple(map(str, self._senders)),
            )
            self._publish(event)
            core.network_changed(self._now())
            self._pump()
            return event

    # ------------------------------------------------------------- public

    @property
    def peer_id(self) -> str:
        """This node's peer id (16 hex digits)."""
        if self._identity is None:
            raise ClosedError("the node is not started")
        return self._identity.peer_id.hex()

    @property
    def nick(self) -> str:
        return self._core.config.nick if self._core else self.config.nick

    @property
    def rooms(self) -> tuple[str, ...]:
        return self._core.config.rooms if self._core else self.config.rooms

    @property
    def stats(self) -> Stats:
        """Counters of received, dropped and sent datagrams."""
        return self._require().stats

    @property
    def unicast_port(self) -> int:
        return self._require().uport

    def peers(self) -> list[ev.PeerInfo]:
        """Every known peer."""
        return self._require().peers()

    def find_peer(self, name: str) -> ev.PeerInfo:
        """A peer by nickname or id prefix (PeerError if none or ambiguous)."""
        return self._require().find_peer(name)

    async def lookup(self, name: str, wait: float | None = None) -> ev.PeerInfo:
        """find_peer, waiting up to `wait` seconds for the peer to be discovered.

        By default it waits only while discovery is still in progress (the first
        1.5 s after start), so a script's first line can address a peer at once.
        """
        if wait is None:
            wait = max(0.0, self._started_at + _DISCOVERY_GRACE - self._now())
        deadline = self._now() + wait
        while True:
            try:
                return self.find_peer(name)
            except PeerError:
                if self._now() >= deadline:
                    raise
            await asyncio.sleep(0.02)

    async def say(self, room: str, text: str) -> int:
        """Send a chat message to a room."""
        seq = int(self._do(lambda core, now: core.say(room, text, now)))
        if self.history is not None:
            self.history.add(
                "chat", "out", peer_id=self.peer_id, nick=self.nick, text=text,
                room=room.removeprefix("#"), seq=seq,  # the room as the core checked it
            )  # fmt: skip
        return seq

    async def notice(self, text: str) -> int:
        """Send a notice to everyone (repeated; NoticeAcknowledged events follow)."""
        seq = int(self._do(lambda core, now: core.notice(text, now)))
        if self.history is not None:
            self.history.add(
                "notice", "out", peer_id=self.peer_id, nick=self.nick, text=text, seq=seq
            )
        return seq

    async def send_direct(self, name: str, text: str) -> int:
        """Send a direct message to a peer by nickname or id prefix; returns its id."""
        peer = self.find_peer(name)
        msg_id = int(self._do(lambda core, now: core.send_direct(peer.peer_id, text, now)))
        if self.history is not None and self._identity is not None:
            self.history.add_direct(
                peer.peer_id, peer.nick, text, msg_id, instance=self._identity.instance
            )
        return msg_id

    async def set_nick(self, nick: str) -> None:
        self._do(lambda core, now: core.set_nick(nick, now))

    async def set_away(self, text: str | None) -> None:
        """Away with an optional text; None means back."""
        self._do(lambda core, now: core.set_away(text, now))

    async def join_room(self, room: str) -> None:
        self._do(lambda core, now: core.join_room(room, now))

    async def leave_room(self, room: str) -> None:
        self._do(lambda core, now: core.leave_room(room, now))

    async def seek_partner(self) -> bool:
        """Look for a random one-to-one partner; False if looking already or paired."""
        return bool(self._do(lambda core, now: core.seek_partner(now)))

    async def end_pair(self) -> bool:
        """Stop looking, or end the pair (the partner is told); False if neither."""
        return bool(self._do(lambda core, now: core.end_pair(now)))

    @property
    def pair_state(self) -> str:
        """Random pairing: "idle", "seeking" or "paired"."""
        return self._require().pair_state

    @property
    def partner(self) -> ev.PeerInfo | None:
        """The random partner while paired."""
        return self._require().partner

    async def query(self) -> None:
        """Ask the group who is there."""
        self._do(lambda core, now: core.query(now))

    def subscribe(self) -> asyncio.Queue[ev.Event]:
        """A queue receiving every event from now on (see also `events()`)."""
        queue: asyncio.Queue[ev.Event] = asyncio.Queue()
        self._subscribers.append(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[ev.Event]) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(queue)

    async def events(self) -> AsyncIterator[ev.Event]:
        """Every event from now on, until the node is closed."""
        queue = self.subscribe()
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            while True:
                if queue.empty():
                    getter = asyncio.ensure_future(queue.get())
                    await asyncio.wait({getter, closed}, return_when=asyncio.FIRST_COMPLETED)
                    if not getter.done():
                        getter.cancel()
                        return
                    yield getter.result()
                else:
                    yield queue.get_nowait()
        finally:
            closed.cancel()
            self.unsubscribe(queue)

    async def wait_for(
        self, predicate: Callable[[ev.Event], bool], timeout: float
    ) -> ev.Event | None:
        """The first event matching predicate within timeout seconds, or None."""
        queue = self.subscribe()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    event = await queue.get()
                    if predicate(event):
                        return event
        except TimeoutError:
            return None
        finally:
            self.unsubscribe(queue)

    async def send_direct_wait(self, name: str, text: str) -> ev.DirectDelivered | ev.DirectFailed:
        """Send a direct message and wait for its outcome (delivered or failed)."""
        queue = self.subscribe()
        try:
            msg_id = await self.send_direct(name, text)
            while True:
                event = await queue.get()
                if (
                    isinstance(event, ev.DirectDelivered | ev.DirectFailed)
                    and event.msg_id == msg_id
                ):
                    return event
        finally:
            self.unsubscribe(queue)
