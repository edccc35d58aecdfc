"""A reproducible multi-host LAN in Linux network namespaces, for tests and for humans.

Each host is a network namespace; each LAN is a bridge (multicast snooping off, so multicast
floods) inside one more namespace, the lab's "switch". Nothing is added to the root namespace,
so no frame can leave the machine. Loss and partitions are nftables rules on the netdev
ingress/egress hooks of a host's own interfaces: a dropped datagram vanishes silently, as on a
real network, instead of making ``sendto`` fail with ``EPERM`` as an ``output`` hook would.

    with Lab() as lab:
        a, b, c = lab.hosts(3)
        b.set_loss(inbound=0.2)
        proc = a.spawn(["python3", "-m", "lanchat", "join"])

Hosts are IPv4-only unless made with ``ipv6=True`` (IPv6 on, duplicate address detection
off so link-local addresses are usable at once) and ``ipv4=False`` (no IPv4 address at all).

Names: an automatic prefix ``ll<pid>x<n>`` encodes the creating PID, so a later lab can delete
namespaces a crashed one left behind (`clean_stale`). Needs root, iproute2 and, for loss and
partitions, nftables. ``scripts/lan-lab --help`` (``python -m tests.lab`` from the repository root)
keeps a lab up across shell commands. Test and try-it tooling: not part of the installed package.

    LabError    a lab command failed, or the lab was misused
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import string
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

__all__ = [
    "Host",
    "Lab",
    "LabError",
    "Lan",
    "clean_stale",
    "list_namespaces",
    "main",
]

_AUTO_PREFIX = re.compile(r"^ll(\d+)x(\d+)-")
_PREFIX = re.compile(r"^[a-z][a-z0-9]{0,19}$")
_HOST_NAME = re.compile(r"^[a-z][a-z0-9_]{0,19}$")
_SWITCH = "switch"
_NET_BASE = "10.213"
_GATEWAY_OCTET = 254  # the on-link default gateway nobody owns
_SPARE_OCTETS = range(100, 254)  # for a second address of one host in one LAN
_MAX_HOSTS = 99  # host N prefers .N in every LAN; .100 and up are spare
_KILL_GRACE = 2.0  # seconds from SIGTERM to SIGKILL at close: room for a clean exit
_COMMAND_TIMEOUT = 15.0  # seconds for one ip/nft command; they take milliseconds
_LOSS_TABLE = "lanchat_lab_loss"
_PARTITION_TABLE = "lanchat_lab_partition"
_LOSS_SCALE = 10_000  # numgen modulus: loss resolution of 0.01 %
_PERSISTENT_PREFIX = "lclab"
_prefix_counter = itertools.count()

_PING_SCRIPT = """
import os, socket, struct, sys, time
address, timeout = sys.argv[1], float(sys.argv[2])
ident = os.getpid() & 0xFFFF
def checksum(data):
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF
payload = b"lanchat-lab-ping"
header = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
packet = struct.pack("!BBHHH", 8, 0, checksum(header + payload), ident, 1) + payload
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
deadline = time.monotonic() + timeout
try:
    sock.sendto(packet, (address, 0))
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        data = sock.recv(2048)
        icmp = data[(data[0] & 15) * 4 :]
        if icmp[0] == 0 and struct.unpack("!H", icmp[4:6])[0] == ident:
            sys.exit(0)
except OSError:
    pass
sys.exit(1)
"""


class LabError(Exception):
    """A lab command failed, or the lab was misused."""


class LabUnsupported(LabError):
    """This machine lacks a kernel feature or tool the lab needs (nftables, IPv6)."""


def _tool(name: str) -> str:
    """The absolute path of a system tool, also searching sbin (not on every user's PATH)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if found is None:
        package = {"ip": "iproute2", "nft": "nftables"}.get(name, name)
        raise LabError(f"{name} not found: install {package}")
    return found


def _command(
    argv: Sequence[str], *, stdin: str | None = None, timeout: float = _COMMAND_TIMEOUT
) -> str:
    """Run a setup command and return its stdout; any failure is a LabError."""
    try:
        result = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"{' '.join(argv)}: {exc}") from exc
    if result.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {result.stderr.strip() or result.returncode}")
    return result.stdout


def _ip(netns: str, *args: str) -> str:
    """Run ``ip -n netns ...``: configuration never touches the root namespace."""
    return _command([_tool("ip"), "-n", netns, *args])


def _in_netns(netns: str, argv: Sequence[str]) -> list[str]:
    """The argv that runs ``argv`` inside ``netns``."""
    return [_tool("ip"), "netns", "exec", netns, *argv]


def list_namespaces() -> list[str]:
    """Names of all named network namespaces (``ip netns list``)."""
    out = _command([_tool("ip"), "netns", "list"])
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _delete_namespace(netns: str) -> None:
    _command([_tool("ip"), "netns", "delete", netns])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale() -> list[str]:
    """Delete namespaces of crashed labs (auto-named, creator PID dead); return their names."""
    deleted = []
    for netns in sorted(list_namespaces(), key=lambda name: name.endswith("-" + _SWITCH)):
        match = _AUTO_PREFIX.match(netns)
        if match is None or _pid_alive(int(match.group(1))):
            continue
        try:
            _delete_namespace(netns)
        except LabError:
            continue  # another lab may be cleaning the same namespace right now
        deleted.append(netns)
    return deleted


def _devices(netns: str) -> list[str]:
    """The namespace's interfaces other than ``lo``."""
    links = json.loads(_ip(netns, "-j", "link", "show") or "[]")
    return [str(link["ifname"]) for link in links if link["ifname"] != "lo"]


_nft_verdict: dict[str, str | None] = {}  # the probe's answer, asked once per process


def nft_problem(netns: str) -> str | None:
    """Why netdev nftables rules (loss, partitions) cannot work here, or None if they can.

    Probed once, in ``netns`` (never in the root namespace), then remembered.
    """
    if "nft" not in _nft_verdict:
        _nft_verdict["nft"] = _probe_nft(netns)
    return _nft_verdict["nft"]


def _probe_nft(netns: str) -> str | None:
    try:
        nft = _tool("nft")
    except LabError as exc:
        return str(exc)
    probe = f"table netdev {_LOSS_TABLE}_probe\ndelete table netdev {_LOSS_TABLE}_probe\n"
    try:
        _command(_in_netns(netns, [nft, "-f", "-"]), stdin=probe)
    except LabError as exc:
        return f"this kernel cannot run netdev nftables rules ({exc})"
    return None


def _replace_nft_table(netns: str, table: str, chains: Mapping[str, str]) -> None:
    """Atomically replace netdev ``table`` with a chain per hook in ``chains`` on all devices.

    Empty ``chains`` (or no devices) just deletes the table. LabUnsupported if this
    machine has no usable nftables (a missing kernel feature, not a lab failure).
    """
    problem = nft_problem(netns)
    if problem is not None:
        raise LabUnsupported(f"loss and partitions need nftables: {problem}")
    devices = _devices(netns)
    lines = [f"table netdev {table}", f"delete table netdev {table}"]
    if chains and devices:
        names = ", ".join(f'"{device}"' for device in devices)
        lines.append(f"table netdev {table} {{")
        for hook, rule in chains.items():
            lines.append(
                f"  chain {hook} {{ type filter hook {hook} devices = {{ {names} }} priority 0;"
                f" policy accept; {rule}; }}"
            )
        lines.append("}")
    _command(_in_netns(netns, [_tool("nft"), "-f", "-"]), stdin="\n".join(lines) + "\n")


def _apply_loss(netns: str, inbound: float, outbound: float) -> None:
    chains = {}
    for hook, fraction in (("ingress", inbound), ("egress", outbound)):
        threshold = round(fraction * _LOSS_SCALE)
        if threshold >= _LOSS_SCALE:
            chains[hook] = "meta l4proto udp drop"
        elif threshold > 0:
            chains[hook] = f"meta l4proto udp numgen random mod {_LOSS_SCALE} < {threshold} drop"
    _replace_nft_table(netns, _LOSS_TABLE, chains)


def _apply_partition(netns: str, partitioned: bool) -> None:
    chains = {"ingress": "drop", "egress": "drop"} if partitioned else {}
    _replace_nft_table(netns, _PARTITION_TABLE, chains)


def _check_fraction(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a fraction from 0 to 1, not {value!r}")
    return value


class Lan:
    """One broadcast domain: a bridge in the lab's switch namespace, with its own /24."""

    def __init__(self, name: str, index: int) -> None:
        self.name = name
        self.index = index
        self.bridge = f"br{index}"
        self.network = f"{_NET_BASE}.{index}.0/24"
        self.gateway = f"{_NET_BASE}.{index}.{_GATEWAY_OCTET}"
        self._used: set[int] = set()

    def __repr__(self) -> str:
        return f"Lan({self.name!r}, {self.network})"

    def _allocate(self, preferred: int) -> int:
        """Host N's octet: N if free, else the lowest free spare one."""
        for octet in itertools.chain([preferred], _SPARE_OCTETS):
            if octet not in self._used:
                self._used.add(octet)
                return octet
        raise LabError(f"{self.name}: no free address")

    def _address(self, octet: int) -> str:
        return f"{_NET_BASE}.{self.index}.{octet}"


@dataclass
class _Interface:
    lan: Lan
    port: str  # the veth end on the bridge, in the switch namespace
    octet: int | None  # the lab-assigned address, if any
    cidrs: list[str] = field(default_factory=list)


class Host:
    """One machine: a network namespace with one veth per LAN, named eth0, eth1, ..."""

    def __init__(
        self, lab: Lab, name: str, netns: str, index: int, *, ipv4: bool = True, ipv6: bool = False
    ) -> None:
        self.name = name
        self.netns = netns
        self.index = index
        self.ipv4 = ipv4  # attach gives each new interface an IPv4 address
        self.ipv6 = ipv6  # IPv6 is on: each interface has a link-local address
        self._lab = lab
        self._interfaces: dict[str, _Interface] = {}
        self._ports = itertools.count()
        self._default_route: tuple[str, str] | None = None  # (iface, gateway)
        self._loss = (0.0, 0.0)
        self._partitioned = False

    def __repr__(self) -> str:
        return f"Host({self.name!r}, {self.addresses})"

    @property
    def interfaces(self) -> list[str]:
        """Interface names, in the order they were attached."""
        return list(self._interfaces)

    @property
    def addresses(self) -> list[str]:
        """The first IPv4 address of each interface that has one, in interface order."""
        return [i.cidrs[0].split("/")[0] for i in self._interfaces.values() if i.cidrs]

    def link_local(self, iface: str = "eth0") -> str:
        """The interface's IPv6 link-local address with its scope, e.g. ``fe80::1%eth0``."""
        self._interface(iface)
        out = _ip(self.netns, "-6", "-o", "address", "show", "dev", iface, "scope", "link")
        match = re.search(r"inet6 (fe80:[0-9a-f:]+)/", out)
        if match is None:
            raise LabError(f"host {self.name} has no link-local address on {iface}")
        return f"{match.group(1)}%{iface}"

    @property
    def address(self) -> str:
        """The first address (of eth0, normally)."""
        if not self.addresses:
            raise LabError(f"host {self.name} has no address")
        return self.addresses[0]

    def spawn(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None, **popen_kwargs: Any
    ) -> subprocess.Popen[Any]:
        """Start ``argv`` in this host; the lab ends it at close.

        ``env`` adds to the current environment. The process leads a new session
        (unless ``start_new_session=False``), so close ends its whole process group.
        """
        self._lab._check_open()
        popen_kwargs.setdefault("start_new_session", True)
        full_env = None if env is None else {**os.environ, **env}
        proc: subprocess.Popen[Any] = subprocess.Popen(
            _in_netns(self.netns, argv), env=full_env, **popen_kwargs
        )
        self._lab._track(proc, group=bool(popen_kwargs["start_new_session"]))
        return proc

    def run(
        self,
        argv: Sequence[str],
        timeout: float,
        check: bool = True,
        *,
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in this host to completion, text output captured.

        Raises ``subprocess.TimeoutExpired`` (after killing it) and, if ``check``,
        ``subprocess.CalledProcessError`` with stderr attached as a note.
        """
        self._lab._check_open()
        full_env = None if env is None else {**os.environ, **env}
        result = subprocess.run(
            _in_netns(self.netns, argv),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
            check=False,
        )
        result.args = list(argv)
        if check and result.returncode != 0:
            error = subprocess.CalledProcessError(
                result.returncode, list(argv), result.stdout, result.stderr
            )
            error.add_note(f"in lab host {self.name}; stderr:\n{result.stderr.rstrip()}")
            raise error
        return result

    def ping(self, address: str, timeout: float = 1.0) -> bool:
        """Whether one ICMP echo to ``address`` is answered within ``timeout`` seconds."""
        result = self.run(
            [sys.executable, "-c", _PING_SCRIPT, address, str(timeout)],
            timeout=timeout + 10.0,
            check=False,
        )
        if result.returncode not in (0, 1):
            raise LabError(f"ping from {self.name} failed: {result.stderr.strip()}")
        return result.returncode == 0

    def set_loss(self, inbound: float = 0.0, outbound: float = 0.0) -> None:
        """Drop these fractions (0 to 1) of UDP in and out, at random; replaces earlier loss."""
        self._lab._check_open()
        loss = (_check_fraction("inbound", inbound), _check_fraction("outbound", outbound))
        _apply_loss(self.netns, *loss)
        self._loss = loss

    def partition(self) -> None:
        """Drop every frame in and out of every interface but ``lo``, silently."""
        self._lab._check_open()
        _apply_partition(self.netns, True)
        self._partitioned = True

    def heal(self) -> None:
        """Undo `partition`."""
        self._lab._check_open()
        _apply_partition(self.netns, False)
        self._partitioned = False

    def link_down(self, iface: str = "eth0") -> None:
        """Set the interface administratively down (the kernel drops its routes)."""
        _ip(self.netns, "link", "set", iface, "down")

    def link_up(self, iface: str = "eth0") -> None:
        """Set the interface up again, restoring the default route if it went through it."""
        _ip(self.netns, "link", "set", iface, "up")
        if self._default_route is not None and self._default_route[0] == iface:
            gateway = self._default_route[1]
            _ip(self.netns, "route", "replace", "default", "via", gateway, "dev", iface)

    def unplug(self, iface: str = "eth0") -> None:
        """Pull the cable: the switch port goes down, the host sees NO-CARRIER, keeps its routes."""
        _ip(self._lab.switch_netns, "link", "set", self._interface(iface).port, "down")

    def plug(self, iface: str = "eth0") -> None:
        """Undo `unplug`."""
        _ip(self._lab.switch_netns, "link", "set", self._interface(iface).port, "up")

    def add_address(self, iface: str, cidr: str) -> None:
        """Add an address such as ``10.213.1.50/24`` to the interface."""
        info = self._interface(iface)
        _ip(self.netns, "address", "add", cidr, "dev", iface)
        info.cidrs.append(cidr)

    def del_address(self, iface: str, cidr: str) -> None:
        """Remove an address added by the lab or by `add_address`."""
        info = self._interface(iface)
        _ip(self.netns, "address", "del", cidr, "dev", iface)
        if cidr in info.cidrs:
            info.cidrs.remove(cidr)

    def attach(self, lan: str, *, address: bool | None = None) -> str:
        """Plug a new interface into ``lan`` (made if missing) and return its name.

        ``address`` (default: the host's ``ipv4``) gives it the lab's IPv4 address.
        """
        if address is None:
            address = self.ipv4
        lab = self._lab
        lab._check_open()
        the_lan = lab.lan(lan) if lan in lab.lans else lab.add_lan(lan)
        iface = next(f"eth{n}" for n in itertools.count() if f"eth{n}" not in self._interfaces)
        port = f"h{self.index}p{next(self._ports)}"
        sw = lab.switch_netns
        _ip(sw, "link", "add", port, "type", "veth", "peer", "name", iface, "netns", self.netns)
        _ip(sw, "link", "set", port, "master", the_lan.bridge, "up")
        info = _Interface(the_lan, port, None)
        self._interfaces[iface] = info
        if address:
            info.octet = the_lan._allocate(self.index)
            cidr = f"{the_lan._address(info.octet)}/24"
            _ip(self.netns, "address", "add", cidr, "dev", iface)
            info.cidrs.append(cidr)
        _ip(self.netns, "link", "set", iface, "up")
        self._reapply_rules()
        return iface

    def detach(self, iface: str) -> None:
        """Remove an interface (and its switch port) made by `attach` or `Lab.add_host`."""
        info = self._interface(iface)
        _ip(self.netns, "link", "delete", iface)
        del self._interfaces[iface]
        if info.octet is not None:
            info.lan._used.discard(info.octet)
        if self._default_route is not None and self._default_route[0] == iface:
            self._default_route = None
        self._reapply_rules()

    def _interface(self, iface: str) -> _Interface:
        try:
            return self._interfaces[iface]
        except KeyError:
            raise LabError(f"host {self.name} has no interface {iface}") from None

    def _set_default_route(self, iface: str) -> None:
        gateway = self._interfaces[iface].lan.gateway
        _ip(self.netns, "route", "add", "default", "via", gateway, "dev", iface)
        self._default_route = (iface, gateway)

    def _reapply_rules(self) -> None:
        """Cover the current interface set with the loss and partition rules in force."""
        if self._loss != (0.0, 0.0):
            _apply_loss(self.netns, *self._loss)
        if self._partitioned:
            _apply_partition(self.netns, True)


class Lab:
    """A set of hosts and LANs in namespaces; close (or leave the ``with``) to delete them."""

    def __init__(self, prefix: str | None = None) -> None:
        self._closed = False
        self._keep = False
        self._procs: list[tuple[subprocess.Popen[Any], bool]] = []
        self._namespaces: list[str] = []
        self._lans: dict[str, Lan] = {}
        self._hosts: dict[str, Host] = {}
        clean_stale()
        existing = list_namespaces()
        if prefix is None:
            while True:
                prefix = f"ll{os.getpid()}x{next(_prefix_counter)}"
                if not any(name.startswith(prefix + "-") for name in existing):
                    break
        elif not _PREFIX.match(prefix) or re.match(r"^ll\d+x\d+$", prefix):
            raise LabError(f"bad prefix {prefix!r}: [a-z][a-z0-9]*, not ll<pid>x<n>")
        elif any(name.startswith(prefix + "-") for name in existing):
            raise LabError(f"namespaces with prefix {prefix!r} exist already")
        self.prefix = prefix
        self.switch_netns = f"{prefix}-{_SWITCH}"
        atexit.register(self.close)
        try:
            self._add_namespace(self.switch_netns)
            # A switch has no IP stack of its own: no link-local addresses, DAD or MLD noise.
            sysctl = "/proc/sys/net/ipv6/conf"
            script = f"echo 1 > {sysctl}/default/disable_ipv6; echo 1 > {sysctl}/all/disable_ipv6"
            if os.path.exists(sysctl):
                _command(_in_netns(self.switch_netns, ["sh", "-c", script]))
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"Lab({self.prefix!r}, hosts={list(self._hosts)}, lans={list(self._lans)})"

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def namespaces(self) -> list[str]:
        """Every namespace this lab created and has not deleted yet."""
        return list(self._namespaces)

    @property
    def lans(self) -> dict[str, Lan]:
        """LANs by name."""
        return dict(self._lans)

    def lan(self, name: str) -> Lan:
        """The LAN called ``name``."""
        try:
            return self._lans[name]
        except KeyError:
            raise LabError(f"no LAN {name!r}") from None

    def host(self, name: str) -> Host:
        """The host called ``name``."""
        try:
            return self._hosts[name]
        except KeyError:
            raise LabError(f"no host {name!r}") from None

    def add_lan(self, name: str = "lan1") -> Lan:
        """Add a bridge with multicast snooping off (multicast floods), on its own /24."""
        self._check_open()
        if name in self._lans:
            raise LabError(f"LAN {name!r} exists already")
        if len(self._lans) >= 250:
            raise LabError("too many LANs")
        lan = Lan(name, len(self._lans) + 1)
        sw = self.switch_netns
        bridge_options = ["mcast_snooping", "0", "stp_state", "0", "forward_delay", "0"]
        _ip(sw, "link", "add", lan.bridge, "type", "bridge", *bridge_options)
        _ip(sw, "link", "set", lan.bridge, "up")
        self._lans[name] = lan
        return lan

    def add_host(
        self,
        name: str,
        lans: Sequence[str] = ("lan1",),
        default_route: bool = True,
        *,
        ipv4: bool = True,
        ipv6: bool = False,
    ) -> Host:
        """Add a host with eth0, eth1, ... on ``lans`` (made if missing), host N at .N.

        The default route, unless turned off, goes via the first LAN's unowned .254
        (IPv4 hosts only). ``ipv6`` turns IPv6 on (link-local addresses, no duplicate
        address detection); ``ipv4=False`` gives the interfaces no IPv4 address.
        """
        if not (ipv4 or ipv6):
            raise LabError(f"host {name!r} needs IPv4 or IPv6")
        self._check_open()
        if not _HOST_NAME.match(name) or name == _SWITCH:
            raise LabError(f"bad host name {name!r}: [a-z][a-z0-9_]*, not {_SWITCH!r}")
        if name in self._hosts:
            raise LabError(f"host {name!r} exists already")
        if len(self._hosts) >= _MAX_HOSTS:
            raise LabError(f"at most {_MAX_HOSTS} hosts")
        if default_route and not lans:
            raise LabError("a default route needs a LAN")
        netns = f"{self.prefix}-{name}"
        self._add_namespace(netns)
        host = Host(self, name, netns, len(self._hosts) + 1, ipv4=ipv4, ipv6=ipv6)
        self._hosts[name] = host
        _set_ipv6(netns, ipv6)
        _ip(netns, "link", "set", "lo", "up")
        for lan in lans:
            host.attach(lan)
        if default_route and ipv4:
            host._set_default_route("eth0")
        return host

    def hosts(
        self, count: int, lan: str = "lan1", *, ipv4: bool = True, ipv6: bool = False
    ) -> list[Host]:
        """Add ``count`` hosts named a, b, c, ... (the next free letters) on ``lan``."""
        names = [letter for letter in string.ascii_lowercase if letter not in self._hosts]
        if count > len(names):
            raise LabError(f"only {len(names)} single-letter host names left")
        if lan not in self._lans:
            self.add_lan(lan)
        return [self.add_host(name, lans=(lan,), ipv4=ipv4, ipv6=ipv6) for name in names[:count]]

    def keep(self) -> None:
        """Leave the namespaces in place at close (the CLI's persistent lab)."""
        self._keep = True

    def close(self) -> None:
        """End every spawned process (SIGTERM, then SIGKILL) and delete every namespace.

        Idempotent. Raises LabError if a namespace could not be deleted.
        """
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        self._stop_processes()
        if self._keep:
            self._namespaces.clear()
            return
        failed = []
        for netns in reversed(self._namespaces):  # hosts first, the switch last
            try:
                _delete_namespace(netns)
            except LabError as exc:
                failed.append(str(exc))
        self._namespaces.clear()
        if failed:
            raise LabError("; ".join(failed))

    def _check_open(self) -> None:
        if self._closed:
            raise LabError("the lab is closed")

    def _add_namespace(self, netns: str) -> None:
        _command([_tool("ip"), "netns", "add", netns])
        self._namespaces.append(netns)

    def _track(self, proc: subprocess.Popen[Any], group: bool) -> None:
        self._procs.append((proc, group))

    def _stop_processes(self) -> None:
        """SIGTERM every live spawned process (its group if it leads one), SIGKILL stragglers.

        Signals go only to processes not yet reaped, so their PIDs cannot have been reused.
        """
        live = [(proc, group) for proc, group in self._procs if proc.poll() is None]
        for proc, group in live:
            _signal(proc, group, signal.SIGTERM)
        deadline = time.monotonic() + _KILL_GRACE
        for proc, group in live:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(proc, group, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):  # stuck in the kernel
                    proc.wait(_KILL_GRACE)
        for proc, _ in self._procs:
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        self._procs.clear()


def _signal(proc: subprocess.Popen[Any], group: bool, signum: signal.Signals) -> None:
    try:
        if group:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
    except ProcessLookupError:
        pass


# The CLI: a persistent lab, re-derived from `ip netns list` on every command.


def _set_ipv6(netns: str, on: bool) -> None:
    """Turn IPv6 on (without duplicate address detection) or off for the namespace's interfaces.

    Set before any interface is made: ``default`` covers the new ones. Without
    detection a link-local address is usable at once instead of after ~1-2 s
    (RFC 4862 section 5.4: one probe, RetransTimer 1 s), and lab addresses are unique anyway.
    """
    sysctl = "/proc/sys/net/ipv6/conf"
    if not os.path.exists(sysctl):
        if on:
            raise LabUnsupported("this kernel has no IPv6 (no /proc/sys/net/ipv6)")
        return
    values = {"disable_ipv6": "0", "accept_dad": "0"} if on else {"disable_ipv6": "1"}
    script = "; ".join(
        f"echo {value} > {sysctl}/{scope}/{key}"
        for key, value in values.items()
        for scope in ("all", "default")
    )
    _command(_in_netns(netns, ["sh", "-c", script]))


def _lab_namespaces(prefix: str) -> list[str]:
    """The persistent lab's namespaces, hosts sorted first, the switch last."""
    names = [name for name in list_namespaces() if name.startswith(prefix + "-")]
    return sorted(names, key=lambda name: (name == f"{prefix}-{_SWITCH}", name))


def _host_netns(prefix: str, host: str) -> str:
    netns = f"{prefix}-{host}"
    if host == _SWITCH or netns not in list_namespaces():
        raise LabError(f"no host {host!r} in lab {prefix!r} (scripts/lan-lab status)")
    return netns


def _loss_percent(netns: str) -> dict[str, float]:
    """Loss percent per hook, read back from the nft table."""
    try:
        text = _command(_in_netns(netns, [_tool("nft"), "list", "table", "netdev", _LOSS_TABLE]))
    except LabError:
        return {}
    found = {}
    for chunk in text.split("chain ")[1:]:
        match = re.search(rf"udp (?:numgen random mod {_LOSS_SCALE} < (\d+) )?drop", chunk)
        if match:
            threshold = int(match.group(1) or _LOSS_SCALE)
            found[chunk.split()[0]] = threshold * 100 / _LOSS_SCALE
    return found


def _partitioned(netns: str) -> bool:
    tables = _command(_in_netns(netns, [_tool("nft"), "list", "tables"]))
    return _PARTITION_TABLE in tables


def _cli_up(prefix: str, count: int) -> None:
    if not 1 <= count <= len(string.ascii_lowercase):
        raise LabError("up takes 1 to 26 hosts")
    with Lab(prefix=prefix) as lab:
        hosts = lab.hosts(count)
        lab.keep()
    lan = lab.lan("lan1")
    print(f"lab {prefix} up: lan1 {lan.network}, bridge {lan.bridge} in netns {lab.switch_netns}")
    for host in hosts:
        print(f"  {host.name}  {host.address:<12}  netns {host.netns}")
    flag = "" if prefix == _PERSISTENT_PREFIX else f" --prefix {prefix}"
    print(f"enter a host:  scripts/lan-lab exec{flag} a     (or: ip netns exec {prefix}-a sh)")
    print(f"run a command: scripts/lan-lab exec{flag} a lanchat join")
    print(f"tear down:     scripts/lan-lab down{flag}")


def _cli_link(netns: str, iface: str, state: str) -> None:
    """Set a link down or up; up on eth0 restores the lab's default route the kernel dropped."""
    _ip(netns, "link", "set", iface, state)
    if state == "up" and iface == "eth0" and not _ip(netns, "route", "show", "default").strip():
        links = json.loads(_ip(netns, "-j", "-4", "address", "show", "dev", iface) or "[]")
        for info in (a for link in links for a in link.get("addr_info", [])):
            gateway = info["local"].rsplit(".", 1)[0] + f".{_GATEWAY_OCTET}"
            _ip(netns, "route", "replace", "default", "via", gateway, "dev", iface)
            break


def _cli_status(prefix: str) -> None:
    names = _lab_namespaces(prefix)
    if not names:
        print(f"no lab {prefix!r} is up")
        return
    for netns in names:
        host = netns[len(prefix) + 1 :]
        if host == _SWITCH:
            print(f"{netns}: bridge and ports {' '.join(_devices(netns)) or '-'}")
            continue
        flags = [f"loss {hook} {pct:g}%" for hook, pct in _loss_percent(netns).items()]
        if _partitioned(netns):
            flags.append("PARTITIONED")
        lines = _ip(netns, "-br", "-4", "address", "show").splitlines()
        addrs = ", ".join(" ".join(line.split()) for line in lines if not line.startswith("lo "))
        print(f"{host}: {addrs}  {' '.join(flags)}".rstrip())


def _cli_down(prefix: str) -> None:
    names = _lab_namespaces(prefix)
    for netns in names:
        _delete_namespace(netns)
    print(f"deleted {' '.join(names)}" if names else f"no lab {prefix!r} is up")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.lab``: a lab that stays up across shell commands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--prefix", default=_PERSISTENT_PREFIX, help="namespace name prefix (default: %(default)s)"
    )
    parser = argparse.ArgumentParser(
        prog="lan-lab",
        description="A LAN of hosts in network namespaces that stays up until 'down' (as root).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = commands.add_parser("up", parents=[common], help="create hosts a, b, c, ... on lan1")
    up.add_argument("count", type=int, metavar="N")
    run = commands.add_parser("exec", parents=[common], help="run a command (default: a shell)")
    run.add_argument("host")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="CMD")
    loss = commands.add_parser("loss", parents=[common], help="random UDP loss, in percent")
    loss.add_argument("host")
    loss.add_argument("--in", dest="inbound", type=float, default=0.0, metavar="PCT")
    loss.add_argument("--out", dest="outbound", type=float, default=0.0, metavar="PCT")
    for name, text in (("partition", "drop all traffic of a host"), ("heal", "undo partition")):
        commands.add_parser(name, parents=[common], help=text).add_argument("host")
    link = commands.add_parser("link", parents=[common], help="set eth0 (or --iface) down/up")
    link.add_argument("host")
    link.add_argument("state", choices=["down", "up"])
    link.add_argument("--iface", default="eth0")
    commands.add_parser("status", parents=[common], help="list hosts, addresses, loss")
    commands.add_parser("down", parents=[common], help="delete the lab's namespaces")
    args = parser.parse_args(argv)
    prefix: str = args.prefix
    try:
        if args.command == "up":
            _cli_up(prefix, args.count)
        elif args.command == "exec":
            netns = _host_netns(prefix, args.host)
            command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
            command = command or [os.environ.get("SHELL", "/bin/sh")]
            os.execv(_tool("ip"), _in_netns(netns, command))
        elif args.command == "loss":
            netns = _host_netns(prefix, args.host)
            fractions = (args.inbound / 100, args.outbound / 100)
            _apply_loss(netns, *(_check_fraction("loss", f) for f in fractions))
        elif args.command in ("partition", "heal"):
            _apply_partition(_host_netns(prefix, args.host), args.command == "partition")
        elif args.command == "link":
            _cli_link(_host_netns(prefix, args.host), args.iface, args.state)
        elif args.command == "status":
            _cli_status(prefix)
        elif args.command == "down":
            _cli_down(prefix)
    except (LabError, ValueError) as exc:
        print(f"lan-lab: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
