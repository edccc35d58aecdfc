"""The socket layer under a `Node`: the `Transport` interface and its UDP implementation.

A Node chooses its interfaces (`netif`) and drives its core; a transport only
moves datagrams: it reads the host's interfaces, opens on the chosen ones,
sends a `Datagram` to the group (every joined interface) or to a unicast
address, hands what arrives to the node with its source and the socket it came
in on (`Receiver`), and tells of send and join errors. `UdpTransport` is the real one (the default);
`lanchat.testing.FakeLan.transport()` gives an in-memory one, as trio's
`FakeNet` and httpx's `MockTransport` do.

UdpTransport, per address family: one multicast receive socket (shared port,
address reuse): IPv4 joins its group on every chosen interface by address, IPv6
its link-local group (`config.ipv6_group`, ff02::efff:4c43 by default) by
interface index. One multicast send socket per interface and family; one
unicast socket on an ephemeral port, dual-stack when IPv6 is on (IPv4 sources
show as plain IPv4, link-local IPv6 ones as "fe80::1%eth0"). On Linux a netlink
socket tells of every link and address change (`watch`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import struct
import sys
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from lanchat import netif
from lanchat.core import Address, Datagram
from lanchat.errors import NetworkError
from lanchat.trace import GROUP, UNICAST

_IP_MULTICAST_ALL: Final = 49  # Linux: deliver only groups this socket joined
_IPV6_MULTICAST_ALL: Final = 29  # the same for IPv6 (Linux 4.20+; older ones ignore it)
# Interfaces whose index -> name is cached for IPv6 sources; more are looked up each time.
_MAX_SCOPE_NAMES: Final = 64
# 4 MiB of socket buffer (the kernel caps it at net.core.rmem_max): a pause of
# the loop (a history commit, a redraw) of ~100 ms under a 20,000/s flood of
# small datagrams (~1 KB of buffer each) overflows no heartbeat out of it.
_RECV_BUFFER: Final = 4 << 20
# Read buffer: anything longer than MAX_DATAGRAM (1200) is dropped as oversized,
# truncated or not; asyncio's own 256 KiB buffer costs a large allocation per read.
_RECV_SIZE: Final = 2048
# Linux rtnetlink multicast groups: links, IPv4 addresses, IPv6 addresses.
_RTMGRP_LINK: Final = 0x1
_RTMGRP_IPV4_IFADDR: Final = 0x10
_RTMGRP_IPV6_IFADDR: Final = 0x100

# The next datagram already waiting on the socket one arrived on, or None: a
# node drains a batch with one clock reading (and one pump).
Pending = Callable[[], tuple[bytes, Address] | None]


@dataclass(frozen=True)
class Receiver:
    """What a transport calls on its node."""

    # A datagram, its source, what else its socket holds, and the socket it came in
    # on: lanchat.trace.GROUP (the group socket) or UNICAST (the node's own port).
    datagram: Callable[[bytes, Address, Pending | None, str], None]
    # A send failed on `where` (an interface, "unicast", or "" for a socket's own
    # error); counted, and reported when the OSError is given.
    send_failed: Callable[[str, OSError | None], None]
    # Joining the group on one of several interfaces failed at open: a line for people.
    join_failed: Callable[[str, OSError, str], None]


class Transport(Protocol):
    """How a Node reaches the network: `UdpTransport`, or a fake one in tests."""

    # False once the OS refused IPv6 at open (the node goes on with IPv4 alone).
    ipv6: bool

    def read_interfaces(self) -> list[netif.InterfaceInfo]:
        """The host's interfaces now (the node chooses among them; OSError if unreadable)."""
        ...

    async def open(self, receiver: Receiver, wanted: Sequence[netif.InterfaceAddress]) -> None:
        """Open the group and unicast sockets and join the group on `wanted`.

        A join that fails on one of several interfaces goes to
        `receiver.join_failed`; failing on all of them raises NetworkError.
        """
        ...

    @property
    def unicast_port(self) -> int:
        """The port peers send to this node's unicast address."""
        ...

    @property
    def joined(self) -> Collection[netif.InterfaceAddress]:
        """The interface addresses the group is joined and sent on."""
        ...

    async def join(self, where: netif.InterfaceAddress) -> None:
        """Join the group on one more interface address and send there (OSError if refused)."""
        ...

    def leave(self, where: netif.InterfaceAddress) -> None:
        """Stop sending and leave the group on `where`; never raises."""
        ...

    def send(self, dgram: Datagram) -> None:
        """Send to the group on every joined interface, or to `dgram.to`; errors go to
        `receiver.send_failed`."""
        ...

    def watch(self, changed: asyncio.Event) -> Callable[[], None] | None:
        """Set `changed` at every interface change; the function stopping it, or None if
        this transport cannot tell (the node then polls)."""
        ...

    def close(self) -> None:
        """Close everything it opened (again: nothing)."""
        ...


# ------------------------------------------------------------------ errors for people


def bind_hint(exc: OSError, port: int) -> str:
    """Why binding a port failed, and the fix."""
    match exc.errno:
        case errno.EADDRINUSE:
            return (
                f"another program holds UDP port {port} without address reuse "
                f"(find it: ss -ulpn 'sport = :{port}'; or choose another --port)"
            )
        case errno.EACCES | errno.EPERM:
            return (
                f"permission denied for UDP port {port} (ports below 1024 need root "
                "or CAP_NET_BIND_SERVICE: choose --port 1024 or above)"
            )
        case errno.EAFNOSUPPORT:
            return "IPv6 is turned off on this machine (use --ipv4-only)"
    return exc.strerror or str(exc)


def join_hint(exc: OSError) -> str:
    """Why joining a group on an interface failed, and the fix."""
    match exc.errno:
        case errno.ENODEV | errno.EADDRNOTAVAIL | errno.ENXIO:
            return "the interface or its address is gone (see `lanchat interfaces`)"
        case errno.ENOBUFS:
            return (
                "the kernel's limit of group memberships is reached (sysctl igmp_max_memberships)"
            )
        case errno.EACCES | errno.EPERM:
            return "permission denied (a security policy forbids multicast)"
    return exc.strerror or str(exc)


def send_hint(exc: OSError, where: str) -> str:
    """Why a send failed on `where` (an interface, or "unicast"), and what to do."""
    match exc.errno:
        case errno.EACCES | errno.EPERM:
            return (
                "a firewall refuses it (allow UDP to and from lanchat's port in its output rules)"
            )
        case errno.ENETUNREACH | errno.EHOSTUNREACH:
            return "the network is unreachable (link down or interface gone? see `lanchat doctor`)"
        case errno.ENODEV | errno.EADDRNOTAVAIL | errno.ENXIO:
            return f"{where} or its address is gone (it is dropped at the next interface poll)"
        case errno.ENOBUFS | errno.EAGAIN:
            return "the send queue is full (a flood, or a link that is down): datagrams are lost"
        case errno.EMSGSIZE:
            return "the datagram is larger than the link's MTU"
    return exc.strerror or str(exc)


def os_error(action: str, exc: OSError, hint: str | None = None) -> NetworkError:
    return NetworkError(exc.errno or 0, f"cannot {action}: {hint or exc.strerror or str(exc)}")


# ------------------------------------------------------------------ netlink


def _open_netlink() -> socket.socket | None:
    """A socket the Linux kernel tells of link and address changes (None elsewhere)."""
    family = getattr(socket, "AF_NETLINK", None)
    if family is None:
        return None
    try:
        sock = socket.socket(family, socket.SOCK_RAW | socket.SOCK_NONBLOCK, 0)  # NETLINK_ROUTE
    except OSError:
        return None
    try:
        sock.bind((0, _RTMGRP_LINK | _RTMGRP_IPV4_IFADDR | _RTMGRP_IPV6_IFADDR))
    except OSError:
        sock.close()
        return None
    return sock


def _drain_netlink(sock: socket.socket, changed: asyncio.Event) -> None:
    """Read every pending notification; any of them (or an overrun) means: re-read."""
    while True:
        try:
            if not sock.recv(65536):
                break
        except (BlockingIOError, InterruptedError):
            break
        except OSError:  # ENOBUFS: notifications were lost, which is a change too
            break
    changed.set()


# ------------------------------------------------------------------ UDP sockets


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


_scope_names: dict[int, str] = {}


def _source6(addr: tuple[Any, ...]) -> Address:
    """An IPv6 source as the core sees it: mapped IPv4 plain, link-local with "%ifname"."""
    host, port = str(addr[0]), int(addr[1])
    if host.startswith("::ffff:") and "." in host:
        return host[7:], port
    scope = int(addr[3]) if len(addr) > 3 else 0
    if scope and "%" not in host:
        name = _scope_names.get(scope)
        if name is None:
            try:
                name = socket.if_indextoname(scope)
            except OSError:
                name = str(scope)  # the interface is gone; the index still routes nowhere
            if len(_scope_names) < _MAX_SCOPE_NAMES:
                _scope_names[scope] = name
        host = f"{host}%{name}"
    return host, port


def _source(addr: tuple[Any, ...]) -> Address:
    return (addr[0], addr[1]) if len(addr) == 2 else _source6(addr)


class _Receiver(asyncio.DatagramProtocol):
    """Hands a datagram to the node, with what else its socket holds (`pending`)."""

    def __init__(self, receiver: Receiver, channel: str, sock: socket.socket | None = None) -> None:
        self.receiver = receiver
        self.channel = channel  # GROUP or UNICAST
        self.sock = sock

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        pending = self.pending if self.sock else None
        self.receiver.datagram(data, _source(addr), pending, self.channel)

    def pending(self) -> tuple[bytes, Address] | None:
        try:
            data, addr = self.sock.recvfrom(_RECV_SIZE)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:  # e.g. an ICMP error reported on a unicast socket
            self.receiver.send_failed("", None)
            return None
        return data, _source(addr)

    def error_received(self, exc: Exception) -> None:
        self.receiver.send_failed("", None)


class _Sender(_Receiver):
    """The protocol of a send socket: its errors are reported with the interface's name."""

    def __init__(self, receiver: Receiver, where: str) -> None:
        super().__init__(receiver, UNICAST)  # a unicast reply to its port, rare
        self.where = where

    def error_received(self, exc: Exception) -> None:
        self.receiver.send_failed(self.where, exc if isinstance(exc, OSError) else None)


class UdpTransport:
    """Real UDP sockets: multicast on every chosen interface and family, one unicast socket."""

    def __init__(
        self,
        *,
        group: str,
        group6: str,
        port: int,
        ttl: int,
        ipv4: bool = True,
        ipv6: bool = True,
    ) -> None:
        self.group, self.group6, self.port, self.ttl = group, group6, port, ttl
        self.ipv4, self.ipv6 = ipv4, ipv6
        self._receiver: Receiver | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._endpoints: list[asyncio.DatagramTransport] = []
        self._unicast: asyncio.DatagramTransport | None = None
        self._unicast_family = socket.AF_INET
        self._rx: socket.socket | None = None  # the group socket, for joining and leaving
        self._rx6: socket.socket | None = None  # the IPv6 group socket
        self.senders: dict[netif.InterfaceAddress, asyncio.DatagramTransport] = {}

    def read_interfaces(self) -> list[netif.InterfaceInfo]:
        return netif.read_interfaces()

    @property
    def joined(self) -> dict[netif.InterfaceAddress, asyncio.DatagramTransport]:
        return self.senders

    @property
    def unicast_port(self) -> int:
        assert self._unicast is not None, "not open"
        return int(self._unicast.get_extra_info("sockname")[1])

    async def open(self, receiver: Receiver, wanted: Sequence[netif.InterfaceAddress]) -> None:
        self._receiver = receiver
        loop = self._loop = asyncio.get_running_loop()
        if self.ipv4:
            self._rx = self._open_group_socket(socket.AF_INET)
            await self._wrap(loop, self._rx, _Receiver(receiver, GROUP, self._rx))
        if self.ipv6:
            try:
                self._rx6 = self._open_group_socket(socket.AF_INET6)
            except NetworkError as exc:
                if self.ipv4 and exc.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                    self.ipv6 = False  # IPv6 is off in this kernel: IPv4 alone, as asked
                    wanted = tuple(where for where in wanted if not where.ipv6)
                else:
                    raise
            else:
                await self._wrap(loop, self._rx6, _Receiver(receiver, GROUP, self._rx6))
        joined = []
        for where in wanted:
            try:
                self._membership(where, join=True)
            except OSError as exc:
                problem = os_error(f"join {self._group_of(where)} on {where}", exc, join_hint(exc))
                if len(wanted) == 1:
                    raise problem from exc
                receiver.join_failed(str(where), exc, str(problem))
                continue  # tried again at the next interface poll
            joined.append(where)
        if not joined:
            raise NetworkError(0, f"cannot join {self.group} on any interface")
        unicast = self._open_unicast_socket()
        self._unicast = await self._wrap(loop, unicast, _Receiver(receiver, UNICAST, unicast))
        for where in joined:
            try:
                self.senders[where] = await self._open_sender(loop, where)
            except OSError as exc:
                hint = send_hint(exc, where.name)
                raise os_error(f"send multicast from {where}", exc, hint) from exc

    async def join(self, where: netif.InterfaceAddress) -> None:
        assert self._loop is not None, "not open"
        self._membership(where, join=True)
        try:
            self.senders[where] = await self._open_sender(self._loop, where)
        except BaseException:
            with contextlib.suppress(OSError):
                self._membership(where, join=False)
            raise

    def leave(self, where: netif.InterfaceAddress) -> None:
        sender = self.senders.pop(where, None)
        if sender is not None:
            sender.close()
            with contextlib.suppress(ValueError):
                self._endpoints.remove(sender)
        with contextlib.suppress(OSError):  # the interface may be gone already
            self._membership(where, join=False)

    def send(self, dgram: Datagram) -> None:
        """Send one datagram; an error on one interface stops neither the node nor the others."""
        receiver = self._receiver
        assert receiver is not None, "not open"
        if dgram.to is None:
            for where, tx in self.senders.items():
                target = (self.group6, self.port, 0, where.index) if where.ipv6 else (
                    self.group, self.port)  # fmt: skip
                try:
                    tx.sendto(dgram.data, target)
                except OSError as exc:  # asyncio reports most via _Sender.error_received
                    receiver.send_failed(str(where), exc)
            return
        if self._unicast is None:
            return
        ip, port = dgram.to
        if self._unicast_family == socket.AF_INET6 and ":" not in ip:
            ip = "::ffff:" + ip  # the dual-stack socket sends IPv4 as mapped addresses
        elif self._unicast_family == socket.AF_INET and ":" in ip:
            receiver.send_failed("unicast", None)  # an IPv6 peer, heard before --ipv4-only
            return
        try:
            self._unicast.sendto(dgram.data, (ip, port))
        except (OSError, ValueError) as exc:  # ValueError: a scope that names no interface
            receiver.send_failed("unicast", exc if isinstance(exc, OSError) else None)

    def watch(self, changed: asyncio.Event) -> Callable[[], None] | None:
        watch = _open_netlink()
        if watch is None:
            return None
        loop = asyncio.get_running_loop()
        loop.add_reader(watch.fileno(), _drain_netlink, watch, changed)

        def stop() -> None:
            loop.remove_reader(watch.fileno())
            watch.close()

        return stop

    def close(self) -> None:
        for endpoint in self._endpoints:
            endpoint.close()
        self._endpoints.clear()
        self.senders.clear()
        self._unicast = None
        self._rx = self._rx6 = None

    async def _wrap(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol: _Receiver
    ) -> asyncio.DatagramTransport:
        """An asyncio endpoint on `sock`, its datagrams and errors going to `protocol`."""
        try:
            sock.setblocking(False)
            transport, _ = await loop.create_datagram_endpoint(lambda: protocol, sock=sock)
        except BaseException:
            sock.close()
            raise
        self._endpoints.append(transport)
        return transport

    def _group_of(self, where: netif.InterfaceAddress) -> str:
        return self.group6 if where.ipv6 else self.group

    def _open_group_socket(self, family: socket.AddressFamily) -> socket.socket:
        """The socket receiving one family's group on the shared port (NetworkError if refused)."""
        name = "IPv6 group" if family == socket.AF_INET6 else "group"
        try:
            rx = socket.socket(family, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        except OSError as exc:
            raise os_error(f"open the {name} socket", exc, bind_hint(exc, self.port)) from exc
        try:
            rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):
                rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            with contextlib.suppress(OSError):
                rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECV_BUFFER)
            if family == socket.AF_INET6:
                rx.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if sys.platform.startswith("linux"):
                    with contextlib.suppress(OSError):  # older kernels deliver every group
                        rx.setsockopt(socket.IPPROTO_IPV6, _IPV6_MULTICAST_ALL, 0)
                # A link-local group cannot be bound without a scope (one interface):
                # bind the port; the joins choose the interfaces.
                rx.bind(("::", self.port))
            elif sys.platform.startswith("linux"):
                rx.setsockopt(socket.IPPROTO_IP, _IP_MULTICAST_ALL, 0)
                rx.bind((self.group, self.port))
            else:  # pragma: no cover - other systems cannot bind a group address
                rx.bind(("", self.port))
        except OSError as exc:
            rx.close()
            hint = bind_hint(exc, self.port)
            raise os_error(f"open the {name} port {self.port}", exc, hint) from exc
        return rx

    def _open_unicast_socket(self) -> socket.socket:
        """The unicast socket: dual-stack when IPv6 is on and the OS allows it."""
        families = [socket.AF_INET6] if self.ipv6 else []
        if self.ipv4:
            families.append(socket.AF_INET)
        error: OSError | None = None
        for family in families:
            try:
                sock = socket.socket(family, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
            except OSError as exc:  # IPv6 turned off in the kernel: IPv4 alone
                error = exc
                continue
            try:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECV_BUFFER)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(not self.ipv4))
                    sock.bind(("::", 0))
                else:
                    sock.bind(("0.0.0.0", 0))
            except OSError as exc:
                sock.close()
                error = exc
                continue
            self._unicast_family = family
            return sock
        assert error is not None
        raise os_error("open the unicast socket", error, bind_hint(error, 0))

    def _membership(self, where: netif.InterfaceAddress, *, join: bool) -> None:
        """Join or leave the group on one interface (OSError if the OS refuses)."""
        if where.ipv6:
            if self._rx6 is None:
                raise OSError(errno.EAFNOSUPPORT, "IPv6 is off")
            mreq = socket.inet_pton(socket.AF_INET6, self.group6) + struct.pack("@I", where.index)
            option = socket.IPV6_JOIN_GROUP if join else socket.IPV6_LEAVE_GROUP
            self._rx6.setsockopt(socket.IPPROTO_IPV6, option, mreq)
            return
        if self._rx is None:
            raise OSError(errno.EAFNOSUPPORT, "IPv4 is off")
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
        self, loop: asyncio.AbstractEventLoop, where: netif.InterfaceAddress
    ) -> asyncio.DatagramTransport:
        """A socket sending to the group from `where` (OSError if the OS refuses)."""
        assert self._receiver is not None
        address = where.address
        tx = socket.socket(_family(address), socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        try:
            if where.ipv6:
                tx.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                # Bound to the link-local address: a tentative one (duplicate address
                # detection, ~1-2 s after link up) refuses, and the next poll tries again.
                tx.bind((address, 0, 0, where.index))
                tx.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, where.index)
                tx.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, self.ttl)
                tx.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 1)
            else:
                tx.bind((address, 0))
                tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(address))
                tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, self.ttl)
                tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        except BaseException:
            tx.close()
            raise
        return await self._wrap(loop, tx, _Sender(self._receiver, str(where)))
