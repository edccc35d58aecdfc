"""`lanchat doctor`: why can't I see anyone? A thin read (`gather`) and a pure decide (`diagnose`).

The read runs one one-shot node (member=False: it asks who is there and never
announces itself) per chosen interface for a couple of seconds, so whatever it
hears belongs to that interface. The node's core tells the doctor's tracer
(lanchat.trace) of every datagram: its source, the socket it came in on (the
group socket or the unicast one, where peers answer the node's queries) and
what the core made of it: our own multicast looped back, a lanchat datagram it
accepted, or a drop (key mismatch, another protocol version, not lanchat at
all). It also reads the interfaces, their addresses and the default routes
(/proc/net/route). `gather(transport=...)` runs it on a fake LAN instead.

The decide is a pure function from that `Evidence` to `Finding`s, each with a
status ("ok", "warning", "problem"), what was found, the evidence and the fix;
it is tested with made-up evidence. `can_work` says whether at least one
interface can work: the CLI exits 1 when none can.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import ipaddress
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from lanchat import config as cfg
from lanchat import events as ev
from lanchat import netif
from lanchat.core import Address
from lanchat.errors import InterfaceError, LanchatError
from lanchat.node import Node
from lanchat.render import sanitize
from lanchat.trace import GROUP, UNICAST
from lanchat.transport import Transport, UdpTransport

__all__ = [
    "DEFAULT_WAIT",
    "Drop",
    "Evidence",
    "Finding",
    "GroupScope",
    "InterfaceEvidence",
    "PeerSeen",
    "Route",
    "SkippedInterface",
    "can_work",
    "diagnose",
    "firewall_fix",
    "gather",
    "group_scope",
    "parse_default_routes",
    "read_default_routes",
    "render",
    "report_json",
]

Status = Literal["ok", "warning", "problem"]
OK: Final = "ok"
WARNING: Final = "warning"
PROBLEM: Final = "problem"
_RANK: Final = {OK: 0, WARNING: 1, PROBLEM: 2}

# Two seconds cover the start-up queries (sent over 0.85 s, config.QUERY_DELAYS),
# the answers (spread over at most 0.5 s) and at least one heartbeat of every
# member (jittered over 0.5-1.5 s at the default 1 s interval).
DEFAULT_WAIT: Final = 2.0
# A heartbeat is due within 1.5 intervals (config.PROBE_AFTER_INTERVALS); this much
# more covers scheduling. Only a wait this long says a peer's multicast went missing.
_BEAT_SLACK: Final = 0.25
# Sources and (source, reason) pairs remembered per interface: a flood of spoofed
# sources cannot grow the tables, and a report lists far fewer.
_MAX_SOURCES: Final = 256
# Names listed in one line of evidence before "and N more".
_MAX_LISTED: Final = 8

# Drop reasons (Stats counters) the tap notes; a datagram dropped for another is heard.
_NOTED: Final = frozenset(
    ("own", "foreign", "wrong_version", "sealed", "unknown_key", "forged", "unsealed",
     "replayed", "malformed")
)  # fmt: skip
_KEY_MISMATCH: Final = {
    "sealed": "sealed with a key, and you have none",
    "unknown_key": "sealed with a key you do not hold",
    "forged": "failing authentication with your key",
    "unsealed": "without a key, while you require one",
}
_ROUTE_UP: Final = 0x1  # RTF_UP in /proc/net/route flags
_PROC_ROUTE: Final = Path("/proc/net/route")


# --- evidence ---------------------------------------------------------------


@dataclass(frozen=True)
class Drop:
    """Datagrams from one source that the core dropped for one reason (a Stats counter name)."""

    address: str
    reason: str  # foreign, wrong_version, sealed, unknown_key, forged, unsealed, malformed
    count: int


@dataclass(frozen=True)
class PeerSeen:
    """A lanchat member heard on one interface, and by which socket its datagrams came."""

    nick: str
    short_id: str
    host: str
    address: str
    heartbeat_interval: float
    by_group: int  # datagrams to the group (heartbeats, chat)
    by_unicast: int  # datagrams to our unicast port (answers to our query)


@dataclass(frozen=True)
class InterfaceEvidence:
    """What one interface showed while the doctor listened on it."""

    name: str
    address: str  # the IPv4 address lanchat joins and sends with
    cidr: str
    loopback: bool
    error: str | None = None  # the OS refused to join or open a socket here
    error_number: int = 0  # the errno, 0 if none
    sent: int = 0  # datagrams sent to the group from here
    send_errors: int = 0
    own: int = 0  # of them, how many came back (multicast loopback)
    peers: tuple[PeerSeen, ...] = ()
    others: tuple[str, ...] = ()  # sources of accepted lanchat datagrams that are no member
    drops: tuple[Drop, ...] = ()


@dataclass(frozen=True)
class SkippedInterface:
    """An interface lanchat does not use, and why."""

    name: str
    reason: str
    has_ipv4: bool  # up with an IPv4 address: peers might be behind it


@dataclass(frozen=True)
class Route:
    """A default route: the interface it leaves by, and the gateway (None: on-link)."""

    interface: str
    gateway: str | None


@dataclass(frozen=True)
class Evidence:
    """Everything `gather` read; `diagnose` decides from this alone."""

    group: str
    port: int
    ttl: int
    wait: float
    keys: int = 0  # group keys in use (0: none)
    named: tuple[str, ...] = ()  # --interface values
    choice_error: str | None = None  # no usable interface, or a named one unusable
    loopback_fallback: bool = False  # nothing but loopback was usable by default
    interfaces: tuple[InterfaceEvidence, ...] = ()
    skipped: tuple[SkippedInterface, ...] = ()
    local_addresses: tuple[str, ...] = ()  # every IPv4 address of this host
    default_routes: tuple[Route, ...] | None = None  # None: not known (no /proc/net/route)
    platform: str = "linux"


@dataclass(frozen=True)
class Finding:
    """One verdict: on an interface (or None: the host or the group), with evidence and fix."""

    interface: str | None
    status: Status
    finding: str
    evidence: str = ""
    fix: str = ""


# --- pure helpers -----------------------------------------------------------


def parse_default_routes(text: str) -> tuple[Route, ...]:
    """The default routes in the text of Linux /proc/net/route (little-endian hex fields)."""
    routes = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            destination, gateway, flags, mask = (int(fields[i], 16) for i in (1, 2, 3, 7))
        except ValueError:
            continue
        if destination or mask or not flags & _ROUTE_UP:
            continue
        via = str(ipaddress.IPv4Address(gateway.to_bytes(4, "little"))) if gateway else None
        routes.append(Route(fields[0], via))
    return tuple(routes)


@dataclass(frozen=True)
class GroupScope:
    """Where a multicast group is meant to reach, and why it may be a poor choice."""

    name: str
    block: str
    reference: str
    routed: bool  # routers may forward it (TTL permitting)
    concern: str | None = None


_SCOPES: Final = (
    GroupScope(
        "link-local (Local Network Control Block)",
        "224.0.0.0/24",
        "RFC 5771",
        routed=False,
        concern="reserved for network protocols (OSPF, mDNS, ...), which may already use it",
    ),
    GroupScope(
        "Internetwork Control Block",
        "224.0.1.0/24",
        "RFC 5771",
        routed=True,
        concern="reserved for network protocols (NTP, ...)",
    ),
    GroupScope(
        "source-specific multicast",
        "232.0.0.0/8",
        "RFC 4607",
        routed=True,
        concern="lanchat joins any source; hosts and switches may deliver nothing here",
    ),
    GroupScope(
        "GLOP",
        "233.0.0.0/8",
        "RFC 3180",
        routed=True,
        concern="globally scoped, assigned by AS number: not for private use",
    ),
    GroupScope(
        "unicast-prefix-based",
        "234.0.0.0/8",
        "RFC 6034",
        routed=True,
        concern="globally scoped, belongs to the owner of a unicast prefix",
    ),
    GroupScope("IPv4 local scope", "239.255.0.0/16", "RFC 2365", routed=True),
    GroupScope("organization-local scope", "239.192.0.0/14", "RFC 2365", routed=True),
    GroupScope("administratively scoped", "239.0.0.0/8", "RFC 2365", routed=True),
    GroupScope(
        "globally scoped",
        "224.0.0.0/4",
        "RFC 5771",
        routed=True,
        concern="globally scoped, assigned by IANA: not for private use",
    ),
)


def group_scope(group: str) -> GroupScope:
    """The scope of an IPv4 multicast group (ConfigError if it is not one)."""
    address = ipaddress.IPv4Address(cfg.check_group(group))
    return next(s for s in _SCOPES if address in ipaddress.IPv4Network(s.block))


def firewall_fix(group: str, port: int, subnets: Sequence[str], platform: str = "linux") -> str:
    """How to let lanchat in: the group port, and UDP from the LAN (unicast ports are random)."""
    if platform.startswith("win"):
        return (
            "allow Python (or lanchat) on private networks in Windows Defender Firewall "
            "(Allow an app through firewall), and make this network Private, not Public"
        )
    if platform == "darwin":
        return (
            "System Settings > Network > Firewall > Options: allow incoming connections "
            "for Python (or turn off 'Block all incoming connections')"
        )
    lans = tuple(subnets) or ("YOUR-LAN/24",)
    rich = 'rule family="ipv4" source address="{}" protocol value="udp" accept'
    rules = {
        "nftables:": (
            f"nft insert rule inet filter input ip daddr {group} udp dport {port} accept",
            *(f"nft insert rule inet filter input ip saddr {lan} meta l4proto udp accept"
              for lan in lans),
        ),
        "iptables:": (
            f"iptables -I INPUT -p udp -d {group} --dport {port} -j ACCEPT",
            *(f"iptables -I INPUT -p udp -s {lan} -j ACCEPT" for lan in lans),
        ),
        "ufw:": (
            f"ufw allow proto udp from any to {group} port {port}",
            *(f"ufw allow proto udp from {lan} to any" for lan in lans),
        ),
        "firewalld:": (
            f"firewall-cmd --add-port={port}/udp",
            *(f"firewall-cmd --add-rich-rule='{rich.format(lan)}'" for lan in lans),
        ),
    }  # fmt: skip
    lines = [
        f"allow UDP to {group} port {port}, and UDP from your LAN ({', '.join(lans)}): "
        "answers and direct messages come from random ports. One of:",
    ]
    for tool, commands in rules.items():
        lines.extend(f"  {tool if i == 0 else '':10} {line}" for i, line in enumerate(commands))
    lines.append("(nft: use your table and chain, see `nft list ruleset`; add --permanent to")
    lines.append(" firewall-cmd to keep the rules; a firewall on the peers needs the same)")
    return "\n".join(lines)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _listed(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    if len(items) > _MAX_LISTED:
        shown += f", and {len(items) - _MAX_LISTED} more"
    return shown


def _is_local(address: str, local_addresses: Sequence[str]) -> bool:
    try:
        return address in local_addresses or ipaddress.IPv4Address(address).is_loopback
    except ValueError:
        return False


def _subnet(cidr: str) -> str:
    return str(ipaddress.IPv4Interface(cidr).network)


# --- the pure decision ------------------------------------------------------


def diagnose(evidence: Evidence) -> list[Finding]:
    """Every finding, interface by interface, then those about the host and the group."""
    findings: list[Finding] = []
    for where in evidence.interfaces:
        findings.extend(_interface_findings(evidence, where))
    findings.extend(_general_findings(evidence))
    return findings


def can_work(findings: Sequence[Finding]) -> bool:
    """Whether lanchat can work: no general problem, and one interface without a problem."""
    if any(f.interface is None and f.status == PROBLEM for f in findings):
        return False
    names = dict.fromkeys(f.interface for f in findings if f.interface is not None)
    return any(
        not any(f.status == PROBLEM for f in findings if f.interface == name) for name in names
    )


def worst(findings: Sequence[Finding]) -> Status:
    """The worst status among findings ("ok" for none)."""
    statuses = [f.status for f in findings] or [OK]
    return max(statuses, key=lambda status: _RANK[status])


def _interface_findings(evidence: Evidence, where: InterfaceEvidence) -> list[Finding]:
    name, group, port = where.name, evidence.group, evidence.port
    found: list[Finding] = []

    def add(status: Status, finding: str, proof: str = "", fix: str = "") -> None:
        found.append(Finding(name, status, finding, proof, fix))

    if where.error is not None:
        add(PROBLEM, f"cannot join {group} here", where.error, _join_fix(where, port))
        return found
    firewall = firewall_fix(group, port, (_subnet(where.cidr),), evidence.platform)
    remote = [p for p in where.peers if not _is_local(p.address, evidence.local_addresses)]
    local = [p for p in where.peers if _is_local(p.address, evidence.local_addresses)]
    sent = f"{_plural(where.sent, 'datagram')} sent to {group}:{port} from {where.address}"
    if where.own:
        add(OK, "joined the group; our own datagrams came back", f"{sent}, {where.own} came back")
    elif where.send_errors:
        add(
            PROBLEM,
            "sending to the group fails here",
            f"{sent}; the OS refused {where.send_errors}, none came back",
            "check the interface is up and has its address; a firewall rule that rejects "
            "outgoing UDP looks like this too (allow UDP out to the group)",
        )
    elif where.peers:
        add(
            WARNING,
            "our own datagrams did not come back, yet peers are heard",
            f"{sent}; none came back",
            "harmless for chatting with other hosts; multicast loopback seems off on this "
            "system, so other lanchat processes here cannot hear this one",
        )
    else:
        add(
            PROBLEM,
            "our own datagrams did not come back: this host drops the group's UDP",
            f"{sent}; none came back (the kernel loops multicast back to members on this "
            "host, unless a firewall drops it)",
            firewall,
        )

    if where.peers:
        on_host = f" ({len(local)} on this host)" if local else ""
        add(
            OK,
            f"{_plural(len(where.peers), 'peer')} heard{on_host}",
            _listed([_describe(p, evidence.local_addresses) for p in where.peers]),
        )
    found.extend(_channel_findings(evidence, where, remote, firewall))
    found.extend(_drop_findings(evidence, where, heard_peers=bool(where.peers)))
    explained = any(d.reason in _KEY_MISMATCH or d.reason == "wrong_version" for d in where.drops)
    if not remote and not where.loopback and where.own and not explained:
        found.append(_nobody_finding(evidence, where, firewall))
    return found


def _describe(peer: PeerSeen, local_addresses: Sequence[str]) -> str:
    where = "this host" if _is_local(peer.address, local_addresses) else f"host {peer.host}"
    return f"{peer.nick} at {peer.address} ({where})"


def _join_fix(where: InterfaceEvidence, port: int) -> str:
    if where.error_number == errno.EADDRINUSE:
        return (
            f"another program holds UDP port {port} without address reuse: find it with "
            f"`ss -ulpn 'sport = :{port}'`, or use another --port on every peer"
        )
    if where.error_number == errno.EACCES:
        return "ports below 1024 need privileges: use the default port or another one above 1023"
    if where.error_number in (errno.ENODEV, errno.EADDRNOTAVAIL):
        return "the interface or its address went away: run `lanchat interfaces` and try again"
    if where.error_number == errno.ENOBUFS:
        return "the kernel's limit of group memberships is reached (net.ipv4.igmp_max_memberships)"
    return (
        "check `lanchat interfaces`; bring the interface up, or leave it out "
        "with --exclude-interface"
    )


def _channel_findings(
    evidence: Evidence, where: InterfaceEvidence, remote: Sequence[PeerSeen], firewall: str
) -> list[Finding]:
    """Peers heard by one socket only: one direction of the traffic is filtered."""
    found = []
    group_only = [p for p in remote if p.by_group and not p.by_unicast]
    if group_only:
        found.append(
            Finding(
                where.name,
                WARNING,
                "peers' multicast arrives, but none answered our query by unicast",
                f"heard only on the group: {_listed([p.nick for p in group_only])}; either "
                "our query did not reach them or their answers (to a random port) were dropped",
                f"{firewall}\nAlso allow outgoing UDP to the group, here and on the peers. "
                "Until then, direct messages to you fail",
            )
        )
    unicast_only = [
        p
        for p in remote
        if p.by_unicast
        and not p.by_group
        and evidence.wait >= cfg.PROBE_AFTER_INTERVALS * p.heartbeat_interval + _BEAT_SLACK
    ]
    if unicast_only and where.own:
        found.append(
            Finding(
                where.name,
                PROBLEM,
                "peers answer us, but their multicast never reaches this host",
                f"{_listed([p.nick for p in unicast_only])} answered our query by unicast, yet "
                f"sent no heartbeat to the group in {evidence.wait:g} s, while our own "
                "multicast came back: the group port is open here, so most likely the network "
                "does not deliver their multicast (or a rule here filters it by source)",
                "until then you see no chat. On a managed switch: enable an IGMP querier (or "
                "turn IGMP snooping off); on Wi-Fi: turn off client (AP) isolation and check "
                "the access point's multicast settings; put every peer in the same VLAN; a "
                "firewall rule here that filters by source must allow the LAN's UDP",
            )
        )
    return found


def _drop_findings(
    evidence: Evidence, where: InterfaceEvidence, *, heard_peers: bool
) -> list[Finding]:
    """Datagrams that arrived and could not be used: keys, versions, other programs."""
    found = []
    severe: Status = WARNING if heard_peers else PROBLEM
    mismatched = [d for d in where.drops if d.reason in _KEY_MISMATCH]
    if mismatched:
        sources = _listed(
            [f"{d.address} ({d.count} {_KEY_MISMATCH[d.reason]})" for d in mismatched]
        )
        if evidence.keys:
            fix = (
                "use the same key as these peers: the same --key-file (one made by "
                "`lanchat keygen`, copied to every member) or the same LANCHAT_KEY passphrase "
                "with the same --group and --port (the key is derived from all three)"
            )
        else:
            fix = (
                "these peers use a group key: get it and pass --key-file FILE "
                "(or LANCHAT_KEY=passphrase)"
            )
        count = sum(d.count for d in mismatched)
        found.append(
            Finding(
                where.name,
                severe,
                "lanchat datagrams arrive that cannot be authenticated (key mismatch)",
                f"{_plural(count, 'datagram')} dropped, from {sources}",
                fix,
            )
        )
    # Other drops, by reason: (reason, status, finding, evidence prefix, fix).
    for reason, status, what, prefix, fix in (
        (
            "wrong_version",
            severe,
            "peers speak another lanchat protocol version",
            "from ",
            "run the same lanchat version everywhere (`lanchat --version`)",
        ),
        (
            "malformed",
            WARNING,
            "lanchat datagrams arrive that do not decode",
            "from ",
            "a newer lanchat sends message types this one does not know: upgrade "
            "(`lanchat --version` on both sides)",
        ),
        (
            "foreign",
            WARNING,
            f"another program sends to {evidence.group}:{evidence.port}",
            "not lanchat, from ",
            "choose another --port (or --group) for lanchat, the same on every peer",
        ),
    ):
        drops = [d for d in where.drops if d.reason == reason]
        if drops:
            sources = _listed([f"{d.address} ({d.count})" for d in drops])
            found.append(Finding(where.name, status, what, prefix + sources, fix))
    return found


def _nobody_finding(evidence: Evidence, where: InterfaceEvidence, firewall: str) -> Finding:
    """Our multicast loops back, yet no other host's lanchat member was heard."""
    others = [a for a in where.others if not _is_local(a, evidence.local_addresses)]
    if where.drops:
        proof = "datagrams from other hosts arrive (see above), but no usable member"
    elif others:
        proof = (
            f"lanchat queries arrive from {_listed(others)} (one-shot tools such as "
            "`lanchat peers`), so multicast reaches this host; no member answered"
        )
    else:
        proof = (
            f"asked who is there and listened {evidence.wait:g} s: nothing from any other "
            "host, not even a datagram we could not use"
        )
    return Finding(
        where.name,
        WARNING,
        "no lanchat peer heard from another host",
        proof,
        "if nobody runs `lanchat join` or `lanchat listen` on this network with the same "
        "--group and --port, that is all. If someone does, run `lanchat doctor` there: a "
        "firewall on either side drops the group's UDP, or the network does not carry "
        "multicast between hosts (Wi-Fi client isolation, IGMP snooping without a querier, "
        f"another VLAN). On the peers: {firewall}",
    )


def _general_findings(evidence: Evidence) -> list[Finding]:
    found: list[Finding] = []
    if evidence.choice_error is not None:
        found.append(
            Finding(
                None,
                PROBLEM,
                "no interface lanchat can use",
                evidence.choice_error,
                "connect to a network (cable or Wi-Fi), or name an interface that is up "
                "and has an IPv4 address with --interface; `lanchat interfaces` shows them all",
            )
        )
    elif evidence.loopback_fallback:
        found.append(
            Finding(
                None,
                PROBLEM,
                "only loopback is usable: lanchat reaches this machine only",
                "; ".join(f"{s.name}: {s.reason}" for s in evidence.skipped) or "no interface",
                "connect to a network or bring an interface up; to use one lanchat leaves out "
                "(VPN, bridge), name it with --interface",
            )
        )
    found.extend(_skipped_finding(evidence))
    found.append(_scope_finding(evidence))
    found.append(_processes_finding(evidence))
    route = _route_finding(evidence)
    if route is not None:
        found.append(route)
    return found


def _remote_peers(evidence: Evidence) -> list[PeerSeen]:
    return [
        p
        for where in evidence.interfaces
        for p in where.peers
        if not _is_local(p.address, evidence.local_addresses)
    ]


def _skipped_finding(evidence: Evidence) -> list[Finding]:
    candidates = [s for s in evidence.skipped if s.has_ipv4 and s.name != "lo"]
    if not candidates or evidence.loopback_fallback or evidence.named:
        return []
    listed = _listed([f"{s.name} ({s.reason.split(';')[0]})" for s in candidates])
    if _remote_peers(evidence):
        return [Finding(None, OK, "interfaces not used", listed)]
    used = [f"--interface {w.name}" for w in evidence.interfaces]
    example = " ".join([*used, f"--interface {candidates[0].name}"])
    return [
        Finding(
            None,
            WARNING,
            "no peer heard, and lanchat leaves out interfaces that have an address",
            listed,
            f"if your peers are behind one of them, name it: lanchat doctor {example}",
        )
    ]


def _scope_finding(evidence: Evidence) -> Finding:
    scope = group_scope(evidence.group)
    what = f"group {evidence.group} is {scope.name} ({scope.block}, {scope.reference})"
    ttl = evidence.ttl
    if ttl == 1:
        reach = "TTL 1: datagrams stay on the local network (routers never forward them)"
    elif not scope.routed:
        reach = f"TTL {ttl} has no effect: routers never forward this block"
    else:
        reach = f"TTL {ttl}: datagrams may cross up to {ttl - 1} multicast router(s)"
    if scope.concern is None:
        return Finding(None, OK, what, reach)
    fix = f"use a group in 239.255.0.0/16 (IPv4 local scope), e.g. the default {cfg.DEFAULT_GROUP}"
    if ttl > 1 and scope.routed:
        fix += ", and --ttl 1 unless peers are behind routers"
    return Finding(None, WARNING, what, f"{scope.concern}; {reach}", fix + ", on every peer")


def _processes_finding(evidence: Evidence) -> Finding:
    local = {
        (p.short_id, p.nick)
        for where in evidence.interfaces
        for p in where.peers
        if _is_local(p.address, evidence.local_addresses)
    }
    if not local:
        return Finding(None, OK, "no other lanchat process heard on this host")
    names = _listed(sorted(f"{nick} ({short_id})" for short_id, nick in local))
    return Finding(
        None,
        OK,
        f"{len(local)} other lanchat {'process' if len(local) == 1 else 'processes'} on this host",
        f"{names}; fine: they share the group port, each with a peer id of its own",
    )


def _route_finding(evidence: Evidence) -> Finding | None:
    routes = evidence.default_routes
    if routes is None:
        return None
    if not routes:
        return Finding(
            None,
            OK,
            "no default route: fine",
            "/proc/net/route has no default entry; lanchat joins and sends on each interface "
            "by its address and needs no route (only the internet is out of reach)",
        )
    used = {w.name for w in evidence.interfaces}
    vias = _listed(
        [f"{r.interface} (gateway {r.gateway})" if r.gateway else r.interface for r in routes]
    )
    if used & {r.interface for r in routes}:
        return Finding(None, OK, f"default route via {vias}")
    proof = "lanchat sends on each interface by its address, not by the default route"
    if evidence.named or _remote_peers(evidence):
        return Finding(None, OK, f"default route via {vias}, which lanchat does not use", proof)
    return Finding(
        None,
        WARNING,
        f"no peer heard, and the default route goes via {vias}, which lanchat does not use",
        proof,
        "if that is a VPN, allow LAN access in its client: a full tunnel may block the "
        "local network",
    )


# --- output (pure) ----------------------------------------------------------


def render(evidence: Evidence, findings: Sequence[Finding]) -> str:
    """The human report: a block per interface, then the general lines and the outcome."""
    keyed = f"; {_plural(evidence.keys, 'key')}" if evidence.keys else ""
    lines = [
        f"lanchat doctor: group {evidence.group} port {evidence.port}, TTL {evidence.ttl}"
        f"{keyed}; listened {evidence.wait:g} s",
    ]
    for where in evidence.interfaces:
        own = [f for f in findings if f.interface == where.name]
        lines += ["", f"{where.name} {where.cidr}: {worst(own)}"]
        lines += [line for f in own for line in _finding_lines(f)]
    general = [f for f in findings if f.interface is None]
    lines += ["", "this host and the group:"]
    lines += [line for f in general for line in _finding_lines(f)]
    working = [
        w.name
        for w in evidence.interfaces
        if not any(f.status == PROBLEM for f in findings if f.interface == w.name)
    ]
    lines.append("")
    if can_work(findings):
        lines.append(f"result: lanchat can work here ({', '.join(working)})")
    else:
        lines.append("result: nothing can work as things are: see the problems above")
    return "\n".join(lines)


def _finding_lines(finding: Finding) -> list[str]:
    pad = " " * 12
    lines = [f"  {'[' + finding.status + ']':<9} {finding.finding}"]
    if finding.evidence:
        lines.append(f"{pad}evidence: {finding.evidence}")
    if finding.fix:
        first, *rest = finding.fix.splitlines()
        lines.append(f"{pad}fix: {first}")
        lines.extend(f"{pad}  {line}" for line in rest)
    return lines


def report_json(evidence: Evidence, findings: Sequence[Finding]) -> dict[str, Any]:
    """One JSON-ready object: whether lanchat can work, the verdicts, and the raw evidence."""
    return {
        "can_work": can_work(findings),
        "verdicts": [dataclasses.asdict(f) for f in findings],
        "interfaces": {
            w.name: worst([f for f in findings if f.interface == w.name])
            for w in evidence.interfaces
        },
        "evidence": dataclasses.asdict(evidence),
    }


# --- the thin read ----------------------------------------------------------


def read_default_routes(path: Path = _PROC_ROUTE) -> tuple[Route, ...] | None:
    """This host's default routes, or None where /proc/net/route cannot be read."""
    try:
        return parse_default_routes(path.read_text(encoding="ascii", errors="replace"))
    except OSError:
        return None


@dataclass
class _Tap:
    """A node's tracer (lanchat.trace): what it heard, by source and socket, and its fate."""

    group_sent: int = 0  # datagrams the core sent to the group (once per joined interface)
    own: int = 0
    accepted: Counter[tuple[str, str]] = field(default_factory=Counter)  # (ip, channel)
    drops: Counter[tuple[str, str]] = field(default_factory=Counter)  # (ip, reason)

    def note(self, ip: str, channel: str, outcome: str) -> None:
        if outcome == "own":
            self.own += 1
        elif outcome == "accepted":
            _bounded_add(self.accepted, (ip, channel))
        elif outcome != "replayed":  # a copy heard twice: nothing wrong
            _bounded_add(self.drops, (ip, outcome))

    def datagram_accepted(
        self, source: Address, channel: str, kind: str, sender: bytes, now: float
    ) -> None:
        self.note(source[0], channel, "accepted")

    def datagram_dropped(self, source: Address, channel: str, reason: str, now: float) -> None:
        # The doctor asks what arrives: a datagram dropped for the node's own reasons
        # (a rate limit, a stale instance, off link) arrived all the same.
        self.note(source[0], channel, reason if reason in _NOTED else "accepted")

    def datagram_queued(self, to: Address | None, kind: str) -> None:
        if to is None:
            self.group_sent += 1


def _bounded_add(counter: Counter[tuple[str, str]], key: tuple[str, str]) -> None:
    if key in counter or len(counter) < _MAX_SOURCES:
        counter[key] += 1


def _peer_seen(peer: ev.PeerInfo, tap: _Tap) -> PeerSeen:
    addresses = set(peer.addresses) | {peer.address}
    return PeerSeen(  # the peer's own strings, terminal-safe before any report uses them
        nick=sanitize(peer.nick),
        short_id=peer.short_id,
        host=sanitize(peer.host),
        address=peer.address,
        heartbeat_interval=peer.heartbeat_interval,
        by_group=sum(tap.accepted[(a, GROUP)] for a in addresses),
        by_unicast=sum(tap.accepted[(a, UNICAST)] for a in addresses),
    )


@dataclass(frozen=True)
class _Listener:
    """The one-shot node listening on one interface, its transport and its tracer."""

    node: Node
    transport: Transport
    tap: _Tap


def _observed(info: netif.InterfaceInfo, listener: _Listener) -> InterfaceEvidence:
    node, tap = listener.node, listener.tap
    peers = tuple(_peer_seen(p, tap) for p in node.peers())
    peer_addresses = {a for p in node.peers() for a in (*p.addresses, p.address)}
    others = sorted({ip for ip, _ in tap.accepted} - peer_addresses)
    return InterfaceEvidence(
        name=info.name,
        address=info.ipv4[0].address,
        cidr=info.ipv4[0].cidr,
        loopback=info.loopback,
        sent=tap.group_sent * len(listener.transport.joined),  # a copy out of each one
        send_errors=node.send_errors,
        own=tap.own,
        peers=peers,
        others=tuple(others),
        drops=tuple(Drop(ip, reason, n) for (ip, reason), n in sorted(tap.drops.items())),
    )


def _failed(info: netif.InterfaceInfo, exc: LanchatError | OSError) -> InterfaceEvidence:
    message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return InterfaceEvidence(
        name=info.name,
        address=info.ipv4[0].address,
        cidr=info.ipv4[0].cidr,
        loopback=info.loopback,
        error=message,
        error_number=(exc.errno or 0) if isinstance(exc, OSError) else 0,
    )


_IPV6_ONLY_HINT = "drop --ipv4-only"
_IPV6_ONLY_DOCTOR = "lanchat uses IPv6 there; the doctor checks IPv4 only"


# Makes a node's transport: `UdpTransport` (the default), or a fake LAN's in tests.
MakeTransport = Callable[[], Transport]


async def gather(
    *,
    group: str = cfg.DEFAULT_GROUP,
    port: int = cfg.DEFAULT_PORT,
    ttl: int = cfg.DEFAULT_TTL,
    interfaces: Sequence[str] = (),
    exclude: Sequence[str] = (),
    keys: Sequence[bytes] = (),
    wait: float = DEFAULT_WAIT,
    transport: MakeTransport | None = None,
) -> Evidence:
    """Listen `wait` seconds on every chosen interface (one one-shot node each); the evidence.

    `transport` makes each node's transport, and the interfaces are read through
    one (`lanchat.testing.FakeLan.transport` runs the doctor on a fake LAN, in
    virtual time); by default real UDP sockets, and the host's default routes too.
    """
    make = transport or _udp_transport(group, port, ttl)
    base = Evidence(
        group=group,
        port=port,
        ttl=ttl,
        wait=wait,
        keys=len(keys),
        named=tuple(interfaces),
        default_routes=read_default_routes() if transport is None else None,
        platform=sys.platform,
    )
    try:
        # A transport of its own reads them: unopened, it holds nothing (a fake LAN's
        # stays down), and each node then opens a fresh one.
        infos = netif.read_interfaces() if transport is None else transport().read_interfaces()
    except OSError as exc:
        return dataclasses.replace(
            base, choice_error=f"cannot read the network interfaces: {exc.strerror or exc}"
        )
    local = tuple(net.address for info in infos for net in info.ipv4)
    try:  # the doctor checks IPv4 only (its evidence is per IPv4 address)
        choice = netif.choose_interfaces(infos, interfaces, exclude, ipv6=False)
    except InterfaceError as exc:
        message = str(exc).replace(_IPV6_ONLY_HINT, _IPV6_ONLY_DOCTOR)
        return dataclasses.replace(base, choice_error=message, local_addresses=local)
    by_name = {info.name: info for info in infos}
    skipped = tuple(
        SkippedInterface(
            v.name,
            v.reason.replace(_IPV6_ONLY_HINT, _IPV6_ONLY_DOCTOR),
            bool(by_name[v.name].up and by_name[v.name].ipv4),
        )
        for v in choice.verdicts
        if not v.used and v.name in by_name
    )
    observed: dict[str, InterfaceEvidence] = {}
    listeners: list[tuple[netif.InterfaceInfo, _Listener]] = []
    try:
        for info in choice.used:
            tap = _Tap()
            try:
                carrier = make()
                node = Node(
                    "doctor",
                    group=group,
                    port=port,
                    ttl=ttl,
                    interfaces=[info.name],
                    member=False,
                    keys=keys,
                    interface_poll_interval=None,
                    ipv4_only=True,
                    transport=carrier,
                    tracer=tap,
                )
                await node.start()
            except (LanchatError, OSError) as exc:
                observed[info.name] = _failed(info, exc)
                continue
            listeners.append((info, _Listener(node, carrier, tap)))
        if listeners:
            await asyncio.sleep(wait)
        for info, listener in listeners:
            observed[info.name] = _observed(info, listener)
    finally:
        for _, listener in listeners:
            await listener.node.close()
    return dataclasses.replace(
        base,
        loopback_fallback=choice.loopback_only and not interfaces,
        interfaces=tuple(observed[info.name] for info in choice.used),
        skipped=skipped,
        local_addresses=local,
    )


def _udp_transport(group: str, port: int, ttl: int) -> MakeTransport:
    """Real sockets, as a Node makes them for itself with ipv4_only."""

    def make() -> Transport:
        return UdpTransport(
            group=cfg.check_group(group), group6=cfg.ipv6_group(group), port=port, ttl=ttl,
            ipv4=True, ipv6=False,
        )  # fmt: skip

    return make
