"""The asyncio adapter: a transport and the event loop's clock around a NodeCore.

    async with Node("alice", interfaces=["eth0"], keys=[key]) as node:  # keys: optional
        await node.say("lobby", "hello")
        async for event in node.events():
            print(event)

The node takes its time from the running event loop (`loop.time()`), so a
virtual-time loop (`lanchat.testing.run`) runs it in virtual time, and it moves
datagrams through a `Transport` (`lanchat.transport`): real UDP sockets by
default, or a fake LAN's in tests. Exactly one `loop.call_at` timer handle,
re-armed after every receive and send.

The OS refusing something becomes one line for people: at start a
`NetworkError` (what failed, why, the fix); while running a
`NetworkErrorReported` event per interface and error, and the node goes on
with the other interfaces (the interface poll drops a vanished one).

Interfaces come and go while a node runs (cables, Wi-Fi, VPNs, containers): on
Linux a netlink socket tells the node of every link and address change (and a
slow poll, `NETLINK_SAFETY_POLL`, catches anything missed); elsewhere it polls
every `INTERFACE_POLL_INTERVAL` seconds. Then, and on `refresh_interfaces()`, it
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
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from lanchat import config as cfg
from lanchat import events as ev
from lanchat import netif
from lanchat.core import RECALL_KEEP, Address, Identity, NodeCore, Stats
from lanchat.errors import (
    ClosedError,
    ConfigError,
    InterfaceError,
    LanchatError,
    PeerError,
)
from lanchat.identity import IdentityLease, acquire_identity, ephemeral_identity
from lanchat.ratelimit import is_loopback
from lanchat.seal import KeyRing
from lanchat.trace import Tracer
from lanchat.transport import Pending, Receiver, Transport, UdpTransport, join_hint, send_hint

if TYPE_CHECKING:  # sqlite3 is imported only by a node that keeps history
    from lanchat.history import HistoryStore

# Events kept for a subscriber that does not read; the oldest are dropped past it.
_MAX_QUEUED_EVENTS: Final = 10_000
# A send error on one interface is reported at once, then at most every 10 s with
# a count: a vanished interface fails every datagram (~5 a second) until the poll
# (every 2 s) drops it, and a firewall fails them for as long as it stands.
_ERROR_REPORT_GAP: Final = 10.0
# Interfaces and errors reported; a flapping set of interfaces cannot grow it.
_MAX_ERROR_KEYS: Final = 64
# A readable socket is drained of up to 64 datagrams in one go, handled with one
# clock reading and one pump: the loop's per-wakeup cost is paid once per batch,
# and 64 datagrams (~1 ms at most) keep timers and the other sockets prompt.
_RECV_BATCH: Final = 64
# Source addresses whose on-link verdict is cached (forgotten at once when full,
# and whenever the interfaces change).
_MAX_LINK_CACHE: Final = 4096
# Query answers arrive within ~0.5 s (three queries, answers spread by <= 0.5 s);
# a name looked up this soon after start waits for them instead of failing.
_DISCOVERY_GRACE: Final = 1.5
# Interfaces are re-read this often: a new or returning interface is joined within
# 2 s, less than the 3 s of silence after which peers call a node unreachable
# (config.UNREACHABLE_AFTER), and the announcement that follows reaches them in
# milliseconds. A read costs ~1.5 ms (getifaddrs and /sys, 4 interfaces).
INTERFACE_POLL_INTERVAL: Final = 2.0
# With netlink (Linux) the kernel announces link and address changes, so the poll
# is only a safety net (a notification lost to a full netlink buffer): idle, a
# read every 2 s was most of a listening node's CPU (~2 ms of getifaddrs and /sys).
NETLINK_SAFETY_POLL: Final = 30.0
# Changes come in bursts (link up, then its addresses, then DAD ending): the
# interfaces are re-read once the burst has been quiet this long.
NETLINK_SETTLE: Final = 0.1


class Node:
    """A lanchat node on the network (or on a fake one), driven by asyncio."""

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
        netlink: bool = True,
        history: bool | Path = False,
        ipv4_only: bool = False,
        ipv6_only: bool = False,
        transport: Transport | None = None,
        rng: random.Random | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        """`history`: True keeps messages in the user's history file, a Path in that file.

        Interface changes are followed through netlink where the OS has it (then
        polled only every NETLINK_SAFETY_POLL s), else polled every
        `interface_poll_interval` s; `netlink=False` always polls; an interval of
        None follows nothing.

        `ipv4_only` / `ipv6_only`: use one address family (default: both, each on
        the interfaces that have an address of it).

        `transport`: how datagrams travel (default: `UdpTransport`, real sockets on
        `group` and `port`; `lanchat.testing.FakeLan.transport()` in tests). `rng`:
        the core's randomness (jitter), seeded for a reproducible test. `tracer`:
        told what happens to every datagram, and on which socket it came
        (`lanchat.trace`; `lanchat doctor` uses one).
        """
        if ipv4_only and ipv6_only:
            raise ConfigError("--ipv4-only and --ipv6-only exclude each other: choose one")
        self.ipv4 = not ipv6_only
        self.ipv6 = not ipv4_only and socket.has_ipv6
        if not self.ipv6 and ipv6_only:
            raise ConfigError("--ipv6-only: this Python has no IPv6 support")
        self.group = cfg.check_group(group)
        self.group6 = cfg.ipv6_group(self.group)
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
        self._netlink = netlink
        self._transport: Transport = transport or UdpTransport(
            group=self.group, group6=self.group6, port=self.port, ttl=ttl,
            ipv4=self.ipv4, ipv6=self.ipv6,
        )  # fmt: skip
        self._rng = rng
        self._tracer = tracer
        self._receiver = Receiver(self._on_datagram, self._send_failed, self._join_failed)
        self.choice = self._choose(self._transport.read_interfaces())
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
        self._error_reports: dict[tuple[str, int], tuple[float, int]] = {}  # last report, count
        self._refresh_lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None
        # How interface changes are noticed: "netlink", "poll", or "" (not followed).
        self.interface_watch = ""
        self._subscribers: list[asyncio.Queue[ev.Event]] = []
        self._closed = asyncio.Event()
        self.send_errors = 0
        self.interface_errors = 0  # joins, leaves and interface reads the OS refused
        self.dropped_events = 0
        self._started_at = 0.0
        self._link_cache: dict[str, bool] = {}
        self._link_choice: netif.Choice | None = None

    # ---------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the transport, announce this node and ask who is there."""
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
            await self._transport.open(self._receiver, self.choice.joined)
        except BaseException:
            self._close_sockets()
            self._close_history()
            if self._lease is not None:  # a failed start holds no identity slot
                self._lease.release()
                self._lease = None
                self._identity = None
            raise
        self.ipv6 = self._transport.ipv6
        uport = self._transport.unicast_port
        self._core = NodeCore(
            self.config,
            self._identity,
            uport=uport,
            rng=self._rng or random.Random(),
            keys=self.keys,
            tracer=self._tracer,
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
        self._transport.close()

    def _choose(self, infos: Sequence[netif.InterfaceInfo]) -> netif.Choice:
        return netif.choose_interfaces(
            infos, self._wanted, self._excluded, ipv4=self.ipv4, ipv6=self.ipv6
        )

    def _group_of(self, where: netif.InterfaceAddress) -> str:
        return self.group6 if where.ipv6 else self.group

    @property
    def _senders(self) -> Collection[netif.InterfaceAddress]:
        """The interface addresses the group is sent on."""
        return self._transport.joined

    # ------------------------------------------------------------- driving

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _on_datagram(
        self, data: bytes, source: Address, pending: Pending | None, channel: str
    ) -> None:
        """One datagram from the transport, then what else is `pending` (up to _RECV_BATCH)."""
        core = self._core
        if core is None or self._closed.is_set():
            return
        now = self._now()
        if self._link_choice is not self.choice:  # the interfaces changed: judge sources anew
            self._link_cache.clear()
            self._link_choice = self.choice
        receive, link, on_link = core.receive_datagram, self._link_cache, self._on_link
        ip = source[0]
        receive(data, source, now, on_link=link.get(ip) or on_link(ip), channel=channel)
        for _ in range(_RECV_BATCH - 1):
            more = pending() if pending is not None else None
            if more is None:
                break
            data, source = more
            ip = source[0]
            receive(data, source, now, on_link=link.get(ip) or on_link(ip), channel=channel)
        self._pump()

    def _on_link(self, ip: str) -> bool:
        """Whether a source may be heard: this machine, a used subnet, or anywhere if TTL > 1."""
        cache = self._link_cache
        verdict = cache.get(ip)
        if verdict is None:
            if len(cache) >= _MAX_LINK_CACHE:
                cache.clear()
            verdict = cache[ip] = (
                self.ttl > 1 or is_loopback(ip) or netif.is_on_link(self.choice.used, ip)
            )
        return verdict

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
            self._transport.send(dgram)
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

    def _send_failed(self, where: str, exc: OSError | None) -> None:
        self.send_errors += 1
        if exc is not None:
            self._report_send_error(where, exc)

    def _join_failed(self, where: str, exc: OSError, line: str) -> None:
        self.interface_errors += 1
        self._report(where, exc, line)

    def _report_send_error(self, where: str, exc: OSError) -> None:
        destination = "the group" if where != "unicast" else "a peer"
        line = f"cannot send to {destination} on {where}: {send_hint(exc, where)}"
        if where == "unicast":
            line = f"cannot send to a peer: {send_hint(exc, 'its interface')}"
        self._report(where if where != "unicast" else "", exc, line)

    def _report(self, where: str, exc: OSError, line: str) -> None:
        """Publish a `NetworkErrorReported` now, or count it if this one was reported < 10 s ago."""
        if self._loop is None:
            return
        key = (where, exc.errno or 0)
        now = self._now()
        last, count = self._error_reports.get(key, (-_ERROR_REPORT_GAP, 0))
        count += 1
        if now - last < _ERROR_REPORT_GAP:
            self._error_reports[key] = (last, count)
            return
        if key not in self._error_reports and len(self._error_reports) >= _MAX_ERROR_KEYS:
            del self._error_reports[next(iter(self._error_reports))]  # oldest first
        self._error_reports[key] = (now, 0)
        self._publish(ev.NetworkErrorReported(where, exc.errno or 0, count, line))

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
        """Refresh the interfaces on each netlink change, or every `interval` s, until closed."""
        changed = asyncio.Event()
        stop_watch = self._transport.watch(changed) if self._netlink else None
        if stop_watch is not None:
            interval = max(interval, NETLINK_SAFETY_POLL)
        self.interface_watch = "netlink" if stop_watch is not None else "poll"
        try:
            while not self._closed.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout=interval)
                while changed.is_set():  # a burst of changes: wait until it is quiet
                    changed.clear()
                    await asyncio.sleep(NETLINK_SETTLE)
                try:
                    await self.refresh_interfaces()
                except (OSError, LanchatError):  # never end the watch: the next may do better
                    self.interface_errors += 1
        finally:
            if stop_watch is not None:
                stop_watch()

    async def refresh_interfaces(self) -> ev.InterfacesChanged | None:
        """Re-read and re-choose the interfaces now, and follow any change.

        Joins the group on new interface addresses, leaves vanished ones, then
        announces this node and queries again. Returns the `InterfacesChanged`
        event it emitted, or None if nothing changed (or the node is not running).
        With no usable interface left the node keeps running and sends nowhere
        until one comes back. Runs by itself on every netlink notification, or
        every `interface_poll_interval` seconds (None turns it off).
        """
        async with self._refresh_lock:
            core = self._core
            if core is None or self._closed.is_set() or core.closed:
                return None
            try:
                infos = self._transport.read_interfaces()
            except OSError:
                self.interface_errors += 1
                return None
            try:
                choice = self._choose(infos)
            except InterfaceError:  # nothing usable: leave everything, keep polling
                choice = netif.Choice(used=(), verdicts=(), loopback_only=False)
            joined = choice.joined if self.ipv6 else tuple(w for w in choice.joined if not w.ipv6)
            change = netif.diff(self._transport.joined, joined)
            for where in change.removed:
                self._transport.leave(where)
            added = []
            for where in change.added:
                try:
                    await self._transport.join(where)
                except OSError as exc:
                    self.interface_errors += 1  # not joined: tried again at the next poll
                    if not (where.ipv6 and exc.errno == errno.EADDRNOTAVAIL):  # DAD: wait
                        line = f"cannot join {self._group_of(where)} on {where}: {join_hint(exc)}"
                        self._report(str(where), exc, line)
                    continue
                added.append(where)
            self.choice = choice
            if not (added or change.removed):
                return None
            event = ev.InterfacesChanged(
                added=tuple(map(str, added)),
                removed=tuple(map(str, change.removed)),
                active=tuple(map(str, self._transport.joined)),
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
                instance=self._identity.instance if self._identity else None,
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

    async def recall(
        self, room: str, *, max_age: float | None = None, have: Sequence[tuple[str, int, int]] = ()
    ) -> None:
        """Ask the room's members for its recent lines (HistoryRecalled, ChatRecalled follow).

        Without `max_age` and with the history on, it asks only for what the
        history lacks (`HistoryStore.recall_hint`).
        """
        if max_age is None and self.history is not None:
            max_age, stored = self.history.recall_hint(room.removeprefix("#"), time.time())
            have = [*have, *stored]
        age = max_age if max_age is not None else RECALL_KEEP
        self._do(lambda core, now: core.recall(room, now, max_age=age, have=have))

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
