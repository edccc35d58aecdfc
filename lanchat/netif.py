"""Network interfaces: a thin read (`read_interfaces`) and a pure choice (`choose_interfaces`).

lanchat joins its IPv4 multicast group on each chosen interface *by address*,
and its link-local IPv6 group by interface index, never through the default
route, so the wrong NIC next to docker0, a VPN or a VM adapter is the usual
cause of "I can't see anyone". The choice is therefore made by a pure function
over plain data, and every interface gets a `Verdict` with a short human
reason. Shape after python-zeroconf `_utils/net.py`.

Default rules (no interface named): use every interface that is up, has an
address of a family turned on (IPv4, or an IPv6 link-local one), is
multicast-capable, and is not loopback, point-to-point, a container/VM bridge,
a veth or a VPN, nor excluded. If that leaves nothing, fall back to loopback.
Naming interfaces (by name or address) uses exactly those, whatever their kind,
and raises `InterfaceError` for a name that matches nothing, or an interface
that is down or has no address of a family in use. Each used interface is
joined once per family it has: IPv4 with its first IPv4 address, IPv6 with its
first link-local address (fe80::/10) and its index.

A running node re-reads and re-chooses every few seconds; `diff` (pure) says
which `InterfaceAddress`es to join and which to leave.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import netifaces

from lanchat.errors import InterfaceError

__all__ = [
    "Choice",
    "IPv4Net",
    "IPv6Addr",
    "InterfaceAddress",
    "InterfaceDiff",
    "InterfaceInfo",
    "Verdict",
    "choose_interfaces",
    "diff",
    "interface_for_source",
    "is_on_link",
    "read_interfaces",
]

# Linux <net/if.h> flag bits, as printed in /sys/class/net/<name>/flags.
_IFF_UP = 0x1
_IFF_LOOPBACK = 0x8
_IFF_POINTOPOINT = 0x10
_IFF_MULTICAST = 0x1000
# <linux/if_tun.h>: tun_flags bit of a TAP (Ethernet-level) device.
_IFF_TAP = 0x2
# <linux/if_arp.h> link types from /sys/class/net/<name>/type.
_ARPHRD_PPP = 512
_ARPHRD_NONE = 65534  # layer-3 tunnels (tun, wireguard)

_SYS_CLASS_NET = Path("/sys/class/net")

# Kinds skipped unless named, with the reason shown to the user.
_SKIPPED_KINDS: Mapping[str, str] = {
    "docker": "Docker bridge",
    "container": "container network",
    "virtual bridge": "virtual bridge (VMs or containers)",
    "veth": "veth (container link)",
    "vpn": "VPN",
    "tun": "tunnel (VPN)",
}
_CHOOSE_HINT = "; choose it with --interface"

# Name prefixes of virtual adapters, first match wins; /sys hints come second.
_NAME_KINDS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"docker|br-[0-9a-f]{12}$"), "docker"),
    (re.compile(r"veth"), "veth"),
    (re.compile(r"virbr|vboxnet|vmnet|lxcbr|lxdbr|bridge1\d\d$"), "virtual bridge"),
    (re.compile(r"cni|flannel|cali|cilium|weave|podman|kube-"), "container"),
    (re.compile(r"tailscale|wg|zt|nordlynx"), "vpn"),
    (re.compile(r"u?tun"), "tun"),
    (re.compile(r"tap|vnet|vif"), "tap"),
)
# Bridge ports that lead to a VM or container rather than to the LAN.
_GUEST_PORT_PREFIXES = ("veth", "tap", "vnet", "vif")


@dataclass(frozen=True)
class IPv4Net:
    """One IPv4 address of an interface, with its subnet (and point-to-point peer)."""

    address: str
    prefixlen: int
    peer: str | None = None

    def __post_init__(self) -> None:
        ipaddress.IPv4Interface(f"{self.address}/{self.prefixlen}")  # ValueError if malformed
        if self.peer is not None:
            ipaddress.IPv4Address(self.peer)

    @cached_property
    def network(self) -> ipaddress.IPv4Network:
        """The subnet this address is in."""
        return ipaddress.IPv4Network(f"{self.address}/{self.prefixlen}", strict=False)

    @property
    def netmask(self) -> str:
        """The subnet mask in dotted form, e.g. 255.255.255.0."""
        return str(self.network.netmask)

    @property
    def cidr(self) -> str:
        """The address with its prefix length, e.g. 192.168.1.7/24."""
        return f"{self.address}/{self.prefixlen}"

    def contains(self, ip: str) -> bool:
        """Whether `ip` is in this subnet or is the peer; False for anything not IPv4."""
        address = _parse_ipv4(ip)
        return address is not None and _net_holds(self, address)


@dataclass(frozen=True)
class IPv6Addr:
    """One IPv6 address of an interface, without its %scope suffix."""

    address: str
    scope_id: int
    link_local: bool
    prefixlen: int = 64  # the on-link prefix (RFC 4291 unicast addresses are /64 as a rule)

    def contains(self, address: ipaddress.IPv6Address) -> bool:
        """Whether `address` is in this address's on-link prefix."""
        network = ipaddress.IPv6Network(f"{self.address}/{self.prefixlen}", strict=False)
        return address in network


@dataclass(frozen=True)
class InterfaceInfo:
    """What lanchat knows about one network interface."""

    name: str
    index: int  # 0 when the OS gives no index for this name
    up: bool
    loopback: bool
    multicast: bool
    point_to_point: bool
    virtual_kind: str | None  # "docker", "veth", "tun", "virtual bridge"…; None: physical/unknown
    ipv4: tuple[IPv4Net, ...]
    ipv6: tuple[IPv6Addr, ...] = ()

    @property
    def primary_ipv4(self) -> IPv4Net | None:
        """The IPv4 address lanchat joins and sends with: the first one."""
        return self.ipv4[0] if self.ipv4 else None

    @property
    def link_local_ipv6(self) -> IPv6Addr | None:
        """The IPv6 address lanchat sends with: the first link-local one (None without an index)."""
        if not self.index:  # IPv6 multicast is joined and sent by interface index
            return None
        return next((addr for addr in self.ipv6 if addr.link_local), None)


@dataclass(frozen=True)
class Verdict:
    """Whether one interface is used, and why, in words for the user."""

    name: str
    used: bool
    reason: str


@dataclass(frozen=True)
class Choice:
    """The interfaces lanchat will use, and a verdict for every interface seen."""

    used: tuple[InterfaceInfo, ...]
    verdicts: tuple[Verdict, ...]
    loopback_only: bool  # only loopback is used: only this machine is reachable
    ipv4: bool = True  # the families turned on (--ipv4-only / --ipv6-only turn one off)
    ipv6: bool = False

    @property
    def addresses(self) -> tuple[str, ...]:
        """The IPv4 address to join with on each interface using IPv4, in order."""
        return tuple(info.ipv4[0].address for info in self.used if self.uses_ipv4(info))

    @property
    def joined(self) -> tuple[InterfaceAddress, ...]:
        """Where the groups are joined: the IPv4 ones first, then the IPv6 ones."""
        ipv4 = [
            InterfaceAddress(info.name, info.ipv4[0].address, info.index)
            for info in self.used
            if self.uses_ipv4(info)
        ]
        ipv6 = [
            InterfaceAddress(info.name, addr.address, info.index)
            for info in self.used
            if self.uses_ipv6(info) and (addr := info.link_local_ipv6) is not None
        ]
        return (*ipv4, *ipv6)

    def uses_ipv4(self, info: InterfaceInfo) -> bool:
        """Whether lanchat uses IPv4 on this interface."""
        return self.ipv4 and info in self.used and bool(info.ipv4)

    def uses_ipv6(self, info: InterfaceInfo) -> bool:
        """Whether lanchat uses IPv6 (link-local multicast) on this interface."""
        return self.ipv6 and info in self.used and info.link_local_ipv6 is not None


@dataclass(frozen=True)
class InterfaceAddress:
    """Where the group is joined: an interface and the IPv4 address used on it.

    The index is part of the identity: an interface deleted and made again under
    the same name and address between two reads is a new one to join.
    """

    name: str
    address: str  # IPv4, or the IPv6 link-local address without its %scope
    index: int = 0  # 0 when the OS gives no index

    @property
    def ipv6(self) -> bool:
        """Whether this is the IPv6 (link-local, joined by index) side of the interface."""
        return ":" in self.address

    def __str__(self) -> str:
        return f"{self.name} {self.address}"


@dataclass(frozen=True)
class InterfaceDiff:
    """What changed between two sets of `InterfaceAddress`es."""

    added: tuple[InterfaceAddress, ...]
    removed: tuple[InterfaceAddress, ...]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed)


def diff(old: Iterable[InterfaceAddress], new: Iterable[InterfaceAddress]) -> InterfaceDiff:
    """What to join (in `new`, not in `old`, in new's order) and leave (the reverse)."""
    before, after = dict.fromkeys(old), dict.fromkeys(new)  # ordered sets
    return InterfaceDiff(
        added=tuple(where for where in after if where not in before),
        removed=tuple(where for where in before if where not in after),
    )


# --- the pure decision ------------------------------------------------------


@dataclass(frozen=True)
class _Families:
    """The address families turned on; the choice is made per family."""

    ipv4: bool
    ipv6: bool

    def usable(self, info: InterfaceInfo) -> bool:
        """Whether the interface has an address of a family turned on."""
        return (self.ipv4 and bool(info.ipv4)) or (self.ipv6 and info.link_local_ipv6 is not None)

    def missing(self, info: InterfaceInfo) -> str:
        """Why an interface has nothing to join with, naming the option that would help."""
        if self.ipv4 and not self.ipv6:
            if info.link_local_ipv6 is not None:
                return "no IPv4 address (IPv6 link-local only: drop --ipv4-only)"
            return "no IPv4 address"
        if self.ipv6 and not self.ipv4:
            if info.ipv4:
                return "no IPv6 link-local address (IPv4 only: drop --ipv6-only)"
            return "no IPv6 link-local address"
        if info.ipv6:  # only global IPv6 addresses: IPv6 multicast needs a link-local one
            return "no IPv4 or IPv6 link-local address"
        return "no IPv4 address"

    def addresses(self, info: InterfaceInfo) -> str:
        """The addresses used on the interface, the ones joined with first."""
        parts = [net.cidr for net in info.ipv4] if self.ipv4 else []
        link_local = info.link_local_ipv6 if self.ipv6 else None
        if link_local is not None:
            parts.append(f"{link_local.address}%{info.name}")
        return ", ".join(parts)


def choose_interfaces(
    infos: Iterable[InterfaceInfo],
    wanted: Iterable[str] = (),
    excluded: Iterable[str] = (),
    *,
    ipv4: bool = True,
    ipv6: bool = True,
) -> Choice:
    """Choose the interfaces to use; `wanted`/`excluded` hold interface names or addresses.

    `ipv4` / `ipv6` turn a family on or off (--ipv4-only, --ipv6-only); an
    interface is usable with an address of a family that is on.
    """
    if not (ipv4 or ipv6):
        raise InterfaceError("IPv4 and IPv6 are both turned off: nothing to send with")
    families = _Families(ipv4, ipv6)
    candidates = tuple(infos)
    wanted_items = _items(wanted)
    excluded_flags = tuple(_matches_any(info, _items(excluded)) for info in candidates)
    if wanted_items:
        return _choose_wanted(candidates, wanted_items, excluded_flags, families)
    verdicts: list[Verdict] = []
    for info, is_excluded in zip(candidates, excluded_flags, strict=True):
        reason = "excluded by option" if is_excluded else _skip_reason(info, families)
        if reason is None:
            addresses = families.addresses(info)
            verdicts.append(Verdict(info.name, True, f"up, multicast, {_notes(info)}{addresses}"))
        else:
            verdicts.append(Verdict(info.name, False, reason))
    used = tuple(info for info, v in zip(candidates, verdicts, strict=True) if v.used)
    if not used:
        used = tuple(
            info
            for info, is_excluded in zip(candidates, excluded_flags, strict=True)
            if info.loopback and info.up and families.usable(info) and not is_excluded
        )
        verdicts = [
            Verdict(
                v.name,
                True,
                f"loopback, used because nothing else is usable, {families.addresses(info)}",
            )
            if info in used
            else v
            for info, v in zip(candidates, verdicts, strict=True)
        ]
    if not used:
        raise InterfaceError(f"no usable network interface: {_summary(verdicts)}")
    return Choice(used, tuple(verdicts), all(info.loopback for info in used), ipv4, ipv6)


def _choose_wanted(
    candidates: tuple[InterfaceInfo, ...],
    wanted: tuple[str, ...],
    excluded_flags: tuple[bool, ...],
    families: _Families,
) -> Choice:
    """Use exactly the named interfaces, or raise `InterfaceError` naming the first problem."""
    chosen = [False] * len(candidates)
    for item in wanted:
        positions = [i for i, info in enumerate(candidates) if _matches(info, item)]
        if not positions:
            raise InterfaceError(
                f"no interface is named or has the address {item!r} "
                f"(have: {_inventory(candidates)})"
            )
        for i in positions:
            info = candidates[i]
            if excluded_flags[i]:
                raise InterfaceError(f"interface {info.name} is both chosen and excluded")
            if not info.up:
                raise InterfaceError(f"interface {info.name} is down")
            if not families.usable(info):
                raise InterfaceError(f"interface {info.name} has {families.missing(info)}")
            chosen[i] = True
    verdicts = tuple(
        Verdict(
            info.name,
            True,
            f"chosen with --interface, {_notes(info)}{families.addresses(info)}",
        )
        if is_chosen
        else Verdict(
            info.name,
            False,
            "excluded by option" if is_excluded else "not chosen (--interface given)",
        )
        for info, is_chosen, is_excluded in zip(candidates, chosen, excluded_flags, strict=True)
    )
    used = tuple(info for info, is_chosen in zip(candidates, chosen, strict=True) if is_chosen)
    loopback_only = all(info.loopback for info in used)
    return Choice(used, verdicts, loopback_only, families.ipv4, families.ipv6)


def _skip_reason(info: InterfaceInfo, families: _Families) -> str | None:
    """Why the default choice skips this interface, or None to use it."""
    if not info.up:
        return "down"
    if not families.usable(info):
        return families.missing(info)
    if info.loopback:
        return "loopback (used only when chosen or when nothing else exists)"
    if info.point_to_point:
        return "point-to-point (VPN)" + _CHOOSE_HINT
    skipped_kind = _SKIPPED_KINDS.get(info.virtual_kind or "")
    if skipped_kind is not None:
        return skipped_kind + _CHOOSE_HINT
    if not info.multicast:
        return "no multicast flag" + _CHOOSE_HINT
    return None


def _items(values: Iterable[str]) -> tuple[str, ...]:
    """The option values as a tuple; a lone string is one value, not its characters."""
    return (values,) if isinstance(values, str) else tuple(values)


def _matches(info: InterfaceInfo, item: str) -> bool:
    """Whether `item` is this interface's name or one of its addresses (IPv6 without %scope)."""
    if item == info.name:
        return True
    address = _parse_ipv4(item)
    if address is not None:
        return any(ipaddress.IPv4Address(net.address) == address for net in info.ipv4)
    address6 = _parse_ipv6(item)
    return address6 is not None and any(
        ipaddress.IPv6Address(addr.address) == address6 for addr in info.ipv6
    )


def _matches_any(info: InterfaceInfo, items: Sequence[str]) -> bool:
    """Whether any of `items` names or addresses this interface."""
    return any(_matches(info, item) for item in items)


def _notes(info: InterfaceInfo) -> str:
    """Traits worth repeating when the user chose an unusual interface."""
    notes = [
        note
        for note, present in (
            ("loopback", info.loopback),
            ("point-to-point", info.point_to_point),
            (info.virtual_kind or "", info.virtual_kind is not None),
            ("no multicast flag", not info.multicast and not info.loopback),
        )
        if present
    ]
    return "".join(f"{note}, " for note in notes)


def _inventory(infos: Sequence[InterfaceInfo]) -> str:
    """A one-line list of interfaces and their first IPv4 address."""
    if not infos:
        return "none"
    return ", ".join(
        f"{info.name} {info.ipv4[0].address}"
        if info.ipv4
        else f"{info.name} {ll.address}"
        if (ll := info.link_local_ipv6) is not None
        else f"{info.name} (no address)"
        for info in infos
    )


def _summary(verdicts: Sequence[Verdict]) -> str:
    """The reasons nothing is usable, without the hints."""
    if not verdicts:
        return "none found"
    return "; ".join(f"{v.name}: {v.reason.split(';')[0]}" for v in verdicts)


# --- source addresses -------------------------------------------------------


def interface_for_source(used: Iterable[InterfaceInfo], source_ip: str) -> InterfaceInfo | None:
    """The used interface `source_ip` is on, or None (also for invalid sources).

    IPv4: the interface whose subnet holds it. IPv6 ("fe80::1%eth0", as the node
    reports link-local sources): a link-local source is on the interface its
    scope names (name or index); any other on the interface with its prefix.
    """
    interfaces = tuple(used)
    if ":" in source_ip:
        return _interface_for_ipv6(interfaces, source_ip)
    address = _parse_ipv4(source_ip)
    if address is None or address.is_multicast or address.is_unspecified:
        return None
    for info in interfaces:
        for net in info.ipv4:
            if _net_holds(net, address) and not _is_subnet_edge(net, address):
                return info
    return None


def is_on_link(used: Iterable[InterfaceInfo], source_ip: str) -> bool:
    """Whether `source_ip` is a host on a used link (loopback counts when loopback is used).

    IPv4: a host on a used subnet. IPv6: a link-local (fe80::/10) source scoped
    to a used interface, or an address in a used interface's on-link prefix.
    """
    interfaces = tuple(used)
    if interface_for_source(interfaces, source_ip) is not None:
        return True
    text = source_ip.partition("%")[0]
    address = _parse_ipv4(text) or _parse_ipv6(text)
    return address is not None and address.is_loopback and any(info.loopback for info in interfaces)


def _interface_for_ipv6(
    interfaces: Sequence[InterfaceInfo], source_ip: str
) -> InterfaceInfo | None:
    text, _, scope = source_ip.partition("%")
    address = _parse_ipv6(text)
    if address is None or address.is_multicast or address.is_unspecified:
        return None
    if address.ipv4_mapped is not None:
        return interface_for_source(interfaces, str(address.ipv4_mapped))
    if address.is_link_local:
        for info in interfaces:
            if scope and scope in (info.name, str(info.index)) and info.link_local_ipv6:
                return info
        return None  # a link-local address means nothing without its link
    for info in interfaces:
        if any(not addr.link_local and addr.contains(address) for addr in info.ipv6):
            return info
    return None


def _net_holds(net: IPv4Net, address: ipaddress.IPv4Address) -> bool:
    """Whether a parsed address is in the subnet of `net` or is its peer."""
    return address in net.network or (
        net.peer is not None and address == ipaddress.IPv4Address(net.peer)
    )


def _is_subnet_edge(net: IPv4Net, address: ipaddress.IPv4Address) -> bool:
    """Whether `address` is the network or broadcast address, never a real source."""
    if net.prefixlen >= 31:  # RFC 3021: /31 and /32 have no such addresses
        return False
    return address in (net.network.network_address, net.network.broadcast_address)


def _parse_ipv4(text: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address in `text`, or None for anything else."""
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        return None


def _parse_ipv6(text: str) -> ipaddress.IPv6Address | None:
    """The IPv6 address in `text` (no %scope), or None for anything else."""
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        return None


# --- the thin read ----------------------------------------------------------


@dataclass(frozen=True)
class _SysHints:
    """What Linux /sys/class/net/<name>/ says about one interface."""

    flags: int
    link_type: int | None = None  # ARPHRD_* from `type`
    has_device: bool = True  # a `device` link: hardware or a paravirtual NIC
    devtype: str | None = None  # DEVTYPE= from `uevent`: bridge, vlan, wireguard…
    tun_flags: int | None = None  # present only on tun/tap devices
    bridge: bool = False
    bridge_uplink: bool = False  # the bridge has a port that is not a VM/container port


def read_interfaces() -> list[InterfaceInfo]:
    """Read this machine's interfaces, flags and addresses; the only I/O in this module."""
    indexes = _read_indexes()
    infos: list[InterfaceInfo] = []
    for name in netifaces.interfaces():
        try:
            addresses = netifaces.ifaddresses(name)
        except (ValueError, OSError):  # vanished since interfaces() listed it
            continue
        infos.append(
            _interface_from_raw(
                name,
                indexes.get(name, 0),
                addresses.get(netifaces.AF_INET, []),
                addresses.get(netifaces.AF_INET6, []),
                _read_sys_hints(name),
            )
        )
    infos.sort(key=lambda info: (info.index == 0, info.index, info.name))
    return infos


def _read_indexes() -> dict[str, int]:
    """Interface indexes by name; empty where the OS cannot list them."""
    try:
        return {name: index for index, name in socket.if_nameindex()}
    except OSError:
        return {}


def _read_sys_hints(name: str, root: Path = _SYS_CLASS_NET) -> _SysHints | None:
    """Read /sys/class/net/<name>/; None where there is no /sys (macOS, Windows)."""
    base = root / name
    flags = _parse_int(_read_text(base / "flags"), 16)
    if flags is None:
        return None
    devtype = None
    for line in (_read_text(base / "uevent") or "").splitlines():
        key, _, value = line.partition("=")
        if key == "DEVTYPE":
            devtype = value.strip() or None
    bridge = (base / "bridge").is_dir()
    ports = _list_dir(base / "brif") if bridge else []
    return _SysHints(
        flags=flags,
        link_type=_parse_int(_read_text(base / "type"), 10),
        has_device=(base / "device").exists(),
        devtype=devtype,
        tun_flags=_parse_int(_read_text(base / "tun_flags"), 16),
        bridge=bridge,
        bridge_uplink=any(
            not _is_guest_port(port, (root / port / "tun_flags").exists()) for port in ports
        ),
    )


def _read_text(path: Path) -> str | None:
    """A small /sys file's text, or None if it cannot be read."""
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None


def _list_dir(path: Path) -> list[str]:
    """The names in a directory, or none if it cannot be listed."""
    try:
        return sorted(entry.name for entry in path.iterdir())
    except OSError:
        return []


def _parse_int(text: str | None, base: int) -> int | None:
    """An integer from /sys text such as 0x1003 or 772, or None."""
    if text is None:
        return None
    try:
        return int(text, base)
    except ValueError:
        return None


def _is_guest_port(name: str, is_tun: bool) -> bool:
    """Whether a bridge port leads to a VM or container rather than to the LAN."""
    return is_tun or name.startswith(_GUEST_PORT_PREFIXES)


def _interface_from_raw(
    name: str,
    index: int,
    inet: Sequence[Mapping[str, str]],
    inet6: Sequence[Mapping[str, str]],
    hints: _SysHints | None,
) -> InterfaceInfo:
    """Build an `InterfaceInfo` from netifaces entries and /sys hints (None: no /sys)."""
    ipv4 = tuple(net for entry in inet if (net := _ipv4_from_entry(entry)) is not None)
    ipv6 = tuple(addr for entry in inet6 if (addr := _ipv6_from_entry(entry, index)) is not None)
    if hints is None:  # no /sys: assume up and multicast-capable, judge by address
        loopback = any(ipaddress.IPv4Address(net.address).is_loopback for net in ipv4)
        up, multicast = True, True
        point_to_point = not loopback and any(net.peer is not None for net in ipv4)
    else:
        loopback = bool(hints.flags & _IFF_LOOPBACK)
        up = bool(hints.flags & _IFF_UP)
        multicast = bool(hints.flags & _IFF_MULTICAST)
        point_to_point = bool(hints.flags & _IFF_POINTOPOINT)
    return InterfaceInfo(
        name=name,
        index=index,
        up=up,
        loopback=loopback,
        multicast=multicast,
        point_to_point=point_to_point,
        virtual_kind=None if loopback else _virtual_kind(name, hints),
        ipv4=ipv4,
        ipv6=ipv6,
    )


def _virtual_kind(name: str, hints: _SysHints | None) -> str | None:
    """Classify an adapter by its name, then by /sys; None for physical or unknown."""
    for pattern, kind in _NAME_KINDS:
        if pattern.match(name):
            return kind
    if hints is None:
        return None
    if hints.tun_flags is not None:
        return "tap" if hints.tun_flags & _IFF_TAP else "tun"
    if hints.bridge or hints.devtype == "bridge":
        return "bridge" if hints.bridge_uplink else "virtual bridge"
    if hints.devtype == "wireguard":
        return "vpn"
    if hints.link_type == _ARPHRD_NONE:
        return "tun"
    if hints.link_type == _ARPHRD_PPP:
        return "ppp"
    if hints.devtype is not None:
        return hints.devtype  # vlan, bond, vxlan…: used unless other rules say no
    # No device link: virtual, but a container's own eth0 looks just like this.
    return None if hints.has_device else "virtual"


def _ipv4_from_entry(entry: Mapping[str, str]) -> IPv4Net | None:
    """An `IPv4Net` from one netifaces AF_INET entry, or None if unusable."""
    address = _parse_ipv4(entry.get("addr", ""))
    if address is None or address.is_unspecified:
        return None
    peer = _parse_ipv4(entry.get("peer", ""))
    return IPv4Net(
        str(address),
        _prefixlen(entry.get("netmask")),
        str(peer) if peer is not None and peer != address else None,
    )


def _ipv6_from_entry(entry: Mapping[str, str], index: int) -> IPv6Addr | None:
    """An `IPv6Addr` from one netifaces AF_INET6 entry ("fe80::1%eth0"), or None."""
    text, _, scope = entry.get("addr", "").partition("%")
    try:
        address = ipaddress.IPv6Address(text)
    except ValueError:
        return None
    prefixlen = _prefixlen6(entry.get("netmask"))
    if not address.is_link_local:
        return IPv6Addr(str(address), 0, False, prefixlen)
    return IPv6Addr(str(address), int(scope) if scope.isdigit() else index, True, prefixlen)


def _prefixlen6(netmask: str | None) -> int:
    """The prefix length of an IPv6 netmask ("ffff:ffff:ffff:ffff::/64" or "64"); 64 if unknown."""
    if not netmask:
        return 64
    text = netmask.rpartition("/")[2] if "/" in netmask else netmask
    if text.isdigit() and 0 <= int(text) <= 128:
        return int(text)
    try:
        return ipaddress.IPv6Network(f"::/{text}").prefixlen
    except ValueError:
        return 64


def _prefixlen(netmask: str | None) -> int:
    """The prefix length of a netmask ("255.255.255.0" or "24"); 32 when unknown."""
    if not netmask:
        return 32
    try:
        return ipaddress.IPv4Network(f"0.0.0.0/{netmask.lstrip('/')}").prefixlen
    except ValueError:
        return 32
