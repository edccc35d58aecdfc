"""`lanchat doctor`: the pure verdicts on made-up evidence, doctor on a fake LAN, and on lo."""

from __future__ import annotations

import dataclasses
import errno
import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lanchat import doctor, netif, trace
from lanchat.core import Datagram, Identity
from lanchat.doctor import (
    Drop,
    Evidence,
    Finding,
    InterfaceEvidence,
    PeerSeen,
    Route,
    SkippedInterface,
    can_work,
    diagnose,
)
from lanchat.errors import ConfigError
from lanchat.node import Node
from lanchat.testing import FakeLan, FakeTransport, run
from tests.loopback_helpers import cli

GROUP, PORT = "239.255.76.67", 47667
NFT_GROUP_RULE = f"nft insert rule inet filter input ip daddr {GROUP} udp dport {PORT} accept"
IPTABLES_GROUP_RULE = f"iptables -I INPUT -p udp -d {GROUP} --dport {PORT} -j ACCEPT"
IPTABLES_LAN_RULE = "iptables -I INPUT -p udp -s 192.168.1.0/24 -j ACCEPT"
UFW_GROUP_RULE = f"ufw allow proto udp from any to {GROUP} port {PORT}"
FIREWALLD_RULE = f"firewall-cmd --add-port={PORT}/udp"


def peer(nick: str, address: str, *, group: int = 3, unicast: int = 1) -> PeerSeen:
    return PeerSeen(nick, nick[:8].ljust(8, "0"), f"{nick}-pc", address, 1.0, group, unicast)


def eth0(**changes: Any) -> InterfaceEvidence:
    """eth0 on 192.168.1.7/24, joined, 7 queries sent, all looped back, nothing else heard."""
    base = InterfaceEvidence("eth0", "192.168.1.7", "192.168.1.7/24", False, sent=7, own=7)
    return dataclasses.replace(base, **changes)


def evidence(*interfaces: InterfaceEvidence, **changes: Any) -> Evidence:
    base = Evidence(
        group=GROUP,
        port=PORT,
        ttl=1,
        wait=2.0,
        interfaces=interfaces,
        local_addresses=("127.0.0.1", *(w.address for w in interfaces)),
        default_routes=(Route("eth0", "192.168.1.1"),),
    )
    return dataclasses.replace(base, **changes)


def on(findings: list[Finding], interface: str | None) -> list[Finding]:
    return [f for f in findings if f.interface == interface]


def one(findings: list[Finding], text: str) -> Finding:
    matches = [f for f in findings if text in f.finding]
    assert len(matches) == 1, f"{text!r} in {[f.finding for f in findings]}"
    return matches[0]


def statuses(findings: list[Finding]) -> set[str]:
    return {f.status for f in findings}


# ----------------------------------------------------------------- verdicts


def test_healthy_interface_with_two_peers_is_ok_everywhere() -> None:
    found = diagnose(
        evidence(eth0(peers=(peer("bob", "192.168.1.8"), peer("carol", "192.168.1.9"))))
    )
    assert statuses(found) == {"ok"}
    heard = one(found, "peers heard")
    assert heard.interface == "eth0" and heard.finding == "2 peers heard"
    assert "bob at 192.168.1.8 (host bob-pc)" in heard.evidence
    assert one(found, "own datagrams came back").evidence.endswith("7 came back")
    assert can_work(found)


def test_nothing_looped_back_nor_heard_is_the_firewall_with_exact_rules() -> None:
    found = diagnose(evidence(eth0(own=0)))
    verdict = one(found, "own datagrams did not come back")
    assert verdict.status == "problem" and verdict.interface == "eth0"
    assert "7 datagrams sent to 239.255.76.67:47667 from 192.168.1.7; none came back" in (
        verdict.evidence
    )
    for rule in (NFT_GROUP_RULE, IPTABLES_GROUP_RULE, IPTABLES_LAN_RULE, UFW_GROUP_RULE):
        assert rule in verdict.fix
    assert FIREWALLD_RULE in verdict.fix
    assert "ufw allow proto udp from 192.168.1.0/24 to any" in verdict.fix
    assert "random ports" in verdict.fix  # why the LAN rule: unicast ports are ephemeral
    assert not can_work(found)


def test_own_loopback_but_nobody_else_is_a_warning_that_still_names_the_firewall() -> None:
    found = diagnose(evidence(eth0()))
    verdict = one(found, "no lanchat peer heard from another host")
    assert verdict.status == "warning"
    assert "nothing from any other host" in verdict.evidence
    assert "Wi-Fi client isolation" in verdict.fix and IPTABLES_GROUP_RULE in verdict.fix
    assert can_work(found), "nobody else may be running lanchat: that is no failure"


def test_queries_of_one_shot_tools_prove_multicast_arrives() -> None:
    found = diagnose(evidence(eth0(others=("192.168.1.20",))))
    assert "lanchat queries arrive from 192.168.1.20" in one(found, "no lanchat peer").evidence


def test_send_errors_without_loopback_say_sending_fails() -> None:
    found = diagnose(evidence(eth0(own=0, send_errors=7)))
    verdict = one(found, "sending to the group fails")
    assert verdict.status == "problem" and "the OS refused 7" in verdict.evidence


def test_no_loopback_while_peers_are_heard_is_only_a_warning() -> None:
    found = diagnose(evidence(eth0(own=0, peers=(peer("bob", "192.168.1.8"),))))
    assert one(found, "did not come back, yet peers are heard").status == "warning"
    assert can_work(found)


def test_peers_heard_only_on_the_group_mean_unicast_is_blocked() -> None:
    found = diagnose(evidence(eth0(peers=(peer("bob", "192.168.1.8", unicast=0),))))
    verdict = one(found, "none answered our query by unicast")
    assert verdict.status == "warning" and "bob" in verdict.evidence
    assert IPTABLES_LAN_RULE in verdict.fix and "direct messages to you fail" in verdict.fix


def test_peers_answering_only_by_unicast_mean_their_multicast_is_not_delivered() -> None:
    deaf = eth0(peers=(peer("bob", "192.168.1.8", group=0),))
    found = diagnose(evidence(deaf))
    verdict = one(found, "their multicast never reaches this host")
    assert verdict.status == "problem" and verdict.evidence.startswith("bob answered")
    assert "IGMP" in verdict.fix
    # Listening shorter than a heartbeat can take proves nothing.
    assert not [f for f in diagnose(evidence(deaf, wait=1.0)) if "never reaches" in f.finding]


def test_key_mismatch_names_the_sources_and_the_key_to_use() -> None:
    drops = (Drop("192.168.1.8", "unknown_key", 5), Drop("192.168.1.9", "forged", 2))
    found = diagnose(evidence(eth0(drops=drops), keys=1))
    verdict = one(found, "key mismatch")
    assert verdict.status == "problem"
    assert verdict.evidence == (
        "7 datagrams dropped, from 192.168.1.8 (5 sealed with a key you do not hold), "
        "192.168.1.9 (2 failing authentication with your key)"
    )
    assert "--key-file" in verdict.fix and "lanchat keygen" in verdict.fix
    assert not [f for f in found if "no lanchat peer heard" in f.finding], "explained already"
    assert not can_work(found)


def test_key_mismatch_without_a_key_says_get_one_and_is_a_warning_beside_peers() -> None:
    sealed = (Drop("192.168.1.8", "sealed", 3),)
    alone = one(diagnose(evidence(eth0(drops=sealed))), "key mismatch")
    assert "3 sealed with a key, and you have none" in alone.evidence
    assert alone.fix.startswith("these peers use a group key")
    beside = eth0(drops=sealed, peers=(peer("carol", "192.168.1.9"),))
    assert one(diagnose(evidence(beside)), "key mismatch").status == "warning"


def test_plain_peers_reaching_a_keyed_node_are_a_key_mismatch() -> None:
    found = diagnose(evidence(eth0(drops=(Drop("192.168.1.8", "unsealed", 4),)), keys=1))
    assert "without a key, while you require one" in one(found, "key mismatch").evidence


def test_other_version_malformed_and_foreign_datagrams() -> None:
    drops = (
        Drop("192.168.1.8", "wrong_version", 3),
        Drop("192.168.1.9", "malformed", 1),
        Drop("192.168.1.30", "foreign", 12),
    )
    found = diagnose(evidence(eth0(drops=drops)))
    version = one(found, "another lanchat protocol version")
    assert version.status == "problem" and version.evidence == "from 192.168.1.8 (3)"
    assert one(found, "do not decode").status == "warning"
    foreign = one(found, "another program sends to 239.255.76.67:47667")
    assert foreign.status == "warning" and "192.168.1.30 (12)" in foreign.evidence
    assert "--port" in foreign.fix


def test_join_failure_gives_the_fix_for_its_errno() -> None:
    busy = eth0(
        own=0, sent=0, error="another program holds the port", error_number=errno.EADDRINUSE
    )
    found = diagnose(evidence(busy))
    verdict = one(found, "cannot join 239.255.76.67 here")
    assert verdict.status == "problem" and "ss -ulpn 'sport = :47667'" in verdict.fix
    assert on(found, "eth0") == [verdict], "nothing else is said about an interface not joined"
    assert not can_work(found)
    wlan0 = InterfaceEvidence("wlan0", "10.0.0.5", "10.0.0.5/24", False, sent=7, own=7)
    assert can_work(diagnose(evidence(busy, wlan0))), "one working interface is enough"


def test_no_usable_interface_is_a_problem_and_nothing_can_work() -> None:
    found = diagnose(evidence(choice_error="no usable network interface: eth0: down"))
    verdict = one(found, "no interface lanchat can use")
    assert verdict.status == "problem" and verdict.interface is None
    assert "eth0: down" in verdict.evidence
    assert not can_work(found)
    assert not can_work([]), "no interface at all cannot work"


def test_loopback_fallback_is_a_problem_even_though_loopback_works() -> None:
    lo = InterfaceEvidence("lo", "127.0.0.1", "127.0.0.1/8", True, sent=7, own=7)
    skipped = (SkippedInterface("eth0", "down", False),)
    found = diagnose(evidence(lo, loopback_fallback=True, skipped=skipped, default_routes=()))
    verdict = one(found, "only loopback is usable")
    assert verdict.status == "problem" and verdict.evidence == "eth0: down"
    assert [f.status for f in on(found, "lo")] == ["ok"]
    assert not can_work(found)
    assert one(found, "no default route").status == "ok"


def test_other_lanchat_processes_on_this_host() -> None:
    lo = InterfaceEvidence("lo", "127.0.0.1", "127.0.0.1/8", True, sent=7, own=7)
    local = dataclasses.replace(lo, peers=(peer("lis", "127.0.0.1"),))
    found = diagnose(evidence(local, named=("lo",)))
    assert one(found, "peer heard").finding == "1 peer heard (1 on this host)"
    processes = one(found, "other lanchat process")
    assert processes.finding == "1 other lanchat process on this host"
    assert processes.evidence.startswith("lis (lis00000)") and processes.status == "ok"
    assert statuses(found) == {"ok"}, "loopback chosen by name: nobody else was expected"
    lonely = diagnose(evidence(eth0(peers=(peer("me2", "192.168.1.7"),))))
    assert one(lonely, "no lanchat peer heard from another host").status == "warning"
    assert one(lonely, "other lanchat process").finding == "1 other lanchat process on this host"


def test_interfaces_left_out_are_named_when_nobody_is_heard() -> None:
    skipped = (
        SkippedInterface("tun0", "VPN; choose it with --interface", True),
        SkippedInterface("eth1", "down", False),
    )
    verdict = one(diagnose(evidence(eth0(), skipped=skipped)), "leaves out interfaces")
    assert verdict.status == "warning" and verdict.evidence == "tun0 (VPN)"
    assert verdict.fix.endswith("lanchat doctor --interface eth0 --interface tun0")
    heard = eth0(peers=(peer("bob", "192.168.1.8"),))
    assert one(diagnose(evidence(heard, skipped=skipped)), "not used").status == "ok"


def test_default_route_findings() -> None:
    assert one(diagnose(evidence(eth0(), default_routes=())), "no default route").status == "ok"
    assert not [f for f in diagnose(evidence(eth0(), default_routes=None)) if "route" in f.finding]
    via_vpn = diagnose(evidence(eth0(), default_routes=(Route("tun0", None),)))
    assert "allow LAN access" in one(via_vpn, "default route goes via tun0").fix
    assert one(diagnose(evidence(eth0())), "default route").finding == (
        "default route via eth0 (gateway 192.168.1.1)"
    )


# ------------------------------------------------------- routes and scopes


PROC_NET_ROUTE = """\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
wg0\t00000000\t00000000\t0001\t0\t0\t50\t00000000\t0\t0\t0
eth1\t00000000\t0100000A\t0002\t0\t0\t0\t00000000\t0\t0\t0
garbage line
eth2\tzzzzzzzz\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0
"""


def test_default_routes_are_parsed_from_proc_net_route() -> None:
    assert doctor.parse_default_routes(PROC_NET_ROUTE) == (
        Route("eth0", "192.168.1.1"),  # little-endian hex
        Route("wg0", None),  # on-link default: no gateway
    )  # eth1's default is not up (no RTF_UP); the subnet route is no default
    assert doctor.parse_default_routes("") == ()


def test_read_default_routes_is_none_without_proc(tmp_path: Path) -> None:
    assert doctor.read_default_routes(tmp_path / "missing") is None
    (tmp_path / "route").write_text(PROC_NET_ROUTE)
    assert len(doctor.read_default_routes(tmp_path / "route") or ()) == 2


@pytest.mark.parametrize(
    ("group", "block", "concern"),
    [
        ("239.255.76.67", "239.255.0.0/16", False),
        ("239.192.1.2", "239.192.0.0/14", False),
        ("239.1.2.3", "239.0.0.0/8", False),
        ("224.0.0.251", "224.0.0.0/24", True),
        ("224.0.1.1", "224.0.1.0/24", True),
        ("232.1.2.3", "232.0.0.0/8", True),
        ("233.252.0.1", "233.0.0.0/8", True),
        ("234.1.2.3", "234.0.0.0/8", True),
        ("225.1.2.3", "224.0.0.0/4", True),
    ],
)
def test_group_scope(group: str, block: str, concern: bool) -> None:
    scope = doctor.group_scope(group)
    assert scope.block == block and (scope.concern is not None) == concern


def test_group_scope_rejects_a_unicast_address() -> None:
    with pytest.raises(ConfigError):
        doctor.group_scope("10.0.0.1")


def test_scope_and_ttl_findings() -> None:
    default = one(diagnose(evidence(eth0())), "group 239.255.76.67")
    assert default.status == "ok" and default.finding.endswith(
        "is IPv4 local scope (239.255.0.0/16, RFC 2365)"
    )
    assert default.evidence.startswith("TTL 1: datagrams stay on the local network")
    routed = one(diagnose(evidence(eth0(), ttl=4)), "group 239.255.76.67")
    assert routed.status == "ok" and "up to 3 multicast router(s)" in routed.evidence
    global_group = one(diagnose(evidence(eth0(), group="225.1.2.3", ttl=8)), "group 225.1.2.3")
    assert global_group.status == "warning" and "not for private use" in global_group.evidence
    assert "--ttl 1" in global_group.fix and "239.255.0.0/16" in global_group.fix
    mdns = one(diagnose(evidence(eth0(), group="224.0.0.251", ttl=8)), "group 224.0.0.251")
    assert "TTL 8 has no effect" in mdns.evidence and "--ttl" not in mdns.fix


def test_firewall_advice_per_platform() -> None:
    assert "Windows Defender Firewall" in doctor.firewall_fix(GROUP, PORT, (), "win32")
    assert "Firewall > Options" in doctor.firewall_fix(GROUP, PORT, (), "darwin")
    linux = doctor.firewall_fix(GROUP, PORT, ("10.0.0.0/24", "10.0.1.0/24"))
    assert linux.count(NFT_GROUP_RULE) == 1, "the group rule once, a LAN rule per subnet"
    assert "-s 10.0.0.0/24" in linux and "-s 10.0.1.0/24" in linux
    assert "YOUR-LAN/24" in doctor.firewall_fix(GROUP, PORT, ())


# ------------------------------------------------------------------- output


def test_render_has_a_block_per_interface_and_an_outcome() -> None:
    ev = evidence(
        eth0(own=0), InterfaceEvidence("wlan0", "10.0.0.5", "10.0.0.5/24", False, sent=7, own=7)
    )
    text = doctor.render(ev, diagnose(ev))
    assert text.startswith("lanchat doctor: group 239.255.76.67 port 47667, TTL 1; listened 2 s")
    assert "\neth0 192.168.1.7/24: problem\n" in text and "\nwlan0 10.0.0.5/24: warning\n" in text
    assert "  [problem] our own datagrams did not come back" in text
    assert "            fix: allow UDP to 239.255.76.67 port 47667" in text
    assert text.endswith("result: lanchat can work here (wlan0)")
    failed = evidence(choice_error="no usable network interface: none found")
    assert doctor.render(failed, diagnose(failed)).endswith(
        "result: nothing can work as things are: see the problems above"
    )


def test_report_json_holds_verdicts_and_raw_evidence() -> None:
    ev = evidence(eth0(drops=(Drop("192.168.1.8", "sealed", 2),)), keys=1)
    report = json.loads(json.dumps(doctor.report_json(ev, diagnose(ev))))
    assert report["can_work"] is False and report["interfaces"] == {"eth0": "problem"}
    assert {tuple(v) for v in report["verdicts"]} == {
        ("interface", "status", "finding", "evidence", "fix")
    }
    assert report["evidence"]["interfaces"][0]["drops"] == [
        {"address": "192.168.1.8", "reason": "sealed", "count": 2}
    ]
    assert report["evidence"]["keys"] == 1 and report["evidence"]["group"] == GROUP


def test_tap_tables_are_bounded() -> None:
    tap = doctor._Tap()
    for i in range(doctor._MAX_SOURCES + 50):
        tap.note(f"10.0.{i // 256}.{i % 256}", trace.GROUP, "accepted")
        tap.note(f"10.1.{i // 256}.{i % 256}", trace.GROUP, "forged")
    tap.note("10.0.0.0", trace.GROUP, "accepted")  # a known source still counts
    tap.note("10.0.0.0", trace.GROUP, "own")
    tap.note("10.0.0.0", trace.GROUP, "replayed")  # a copy heard twice: not a problem
    assert len(tap.accepted) == len(tap.drops) == doctor._MAX_SOURCES
    assert tap.accepted[("10.0.0.0", trace.GROUP)] == 2 and tap.own == 1


# ------------------------------------------------------ doctor on a fake LAN

DOCTOR_IP = "10.0.0.200"


@pytest.fixture
def no_real_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Records every IP socket opened and every read of the host's interfaces or routes."""
    touched: list[str] = []
    real_init = socket.socket.__init__

    def guarded(self: socket.socket, family: Any = -1, *args: Any, **kwargs: Any) -> None:
        if family in (-1, socket.AF_INET, socket.AF_INET6):
            touched.append(f"socket {family}")
        real_init(self, family, *args, **kwargs)

    def no_read(*args: Any) -> Any:
        touched.append("host read")
        return []

    monkeypatch.setattr(socket.socket, "__init__", guarded)
    monkeypatch.setattr(netif, "read_interfaces", no_read)
    monkeypatch.setattr(doctor, "read_default_routes", no_read)
    yield touched


class MulticastDropped(FakeTransport):
    """A host whose multicast the network never delivers (IGMP snooping without a querier)."""

    def send(self, dgram: Datagram) -> None:
        if dgram.to is not None:
            super().send(dgram)


def test_doctor_on_a_fake_lan_hears_both_peers(no_real_network: list[str]) -> None:
    lan = FakeLan(seed=5)

    async def main() -> Evidence:
        async with lan.node("bob"), lan.node("carol"):
            return await doctor.gather(transport=lambda: lan.transport("doctor", ips=[DOCTOR_IP]))

    ev = run(main())
    assert no_real_network == [], "doctor on the fake LAN touched the host's network"
    found = diagnose(ev)
    assert statuses(found) == {"ok"}, [(f.finding, f.evidence) for f in found]
    assert one(found, "peers heard").finding == "2 peers heard"
    (fake0,) = ev.interfaces
    assert (fake0.name, fake0.address, fake0.cidr) == ("fake0", DOCTOR_IP, f"{DOCTOR_IP}/24")
    assert fake0.own == fake0.sent > 0 and fake0.drops == () and fake0.others == ()
    assert {p.nick for p in fake0.peers} == {"bob", "carol"}
    assert all(p.by_group >= 1 and p.by_unicast >= 1 for p in fake0.peers), fake0.peers
    assert ev.local_addresses == (DOCTOR_IP,) and ev.default_routes is None
    assert doctor.render(ev, found).endswith("result: lanchat can work here (fake0)")


def test_doctor_on_a_fake_lan_sees_a_peer_whose_multicast_is_dropped() -> None:
    lan = FakeLan(seed=6)
    identity = Identity(lan.rng.randbytes(8), lan.new_instance())
    bob = Node("bob", transport=MulticastDropped(lan, "bob"), identity=identity, host="bob-pc")

    async def main() -> Evidence:
        async with bob, lan.node("carol"):
            return await doctor.gather(transport=lambda: lan.transport("doctor", ips=[DOCTOR_IP]))

    ev = run(main())
    peers = {p.nick: p for p in ev.interfaces[0].peers}
    assert peers["bob"].by_group == 0 and peers["bob"].by_unicast >= 1, "bob answered our query"
    assert peers["carol"].by_group >= 1
    found = diagnose(ev)
    verdict = one(found, "their multicast never reaches this host")
    assert verdict.status == "problem" and verdict.interface == "fake0"
    assert verdict.evidence.startswith("bob answered our query by unicast")
    assert not can_work(found)


def test_doctor_on_a_fake_lan_names_a_key_mismatch() -> None:
    lan = FakeLan(seed=7)
    key = bytes(range(32))

    async def main() -> Evidence:
        async with lan.node("bob", keys=[key]):
            return await doctor.gather(transport=lambda: lan.transport("doctor", ips=[DOCTOR_IP]))

    ev = run(main())
    (fake0,) = ev.interfaces
    assert fake0.peers == () and [d.reason for d in fake0.drops] == ["sealed"]
    assert fake0.drops[0].address == lan.stations[0].ips[0]
    verdict = one(diagnose(ev), "key mismatch")
    assert verdict.status == "problem" and "sealed with a key, and you have none" in (
        verdict.evidence
    )


# --------------------------------------------------------- the command on lo


@pytest.mark.loopback
def test_cli_doctor_on_loopback_hears_the_listener(
    listener: subprocess.Popen[str], lo_port: int
) -> None:
    result = cli("doctor", "--interface", "lo", "--port", str(lo_port), port=lo_port)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    text = result.stdout
    assert "\nlo 127.0.0.1/8: ok\n" in text
    assert "1 peer heard (1 on this host)" in text and "lis at 127.0.0.1 (this host)" in text
    assert "1 other lanchat process on this host" in text
    assert "result: lanchat can work here (lo)" in text


@pytest.mark.loopback
def test_cli_doctor_json_shape(listener: subprocess.Popen[str], lo_port: int) -> None:
    result = cli("doctor", "--json", "--wait", "2", port=lo_port)  # LANCHAT_INTERFACE=lo
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {"can_work", "verdicts", "interfaces", "evidence"}
    assert report["can_work"] is True and report["interfaces"] == {"lo": "ok"}
    for verdict in report["verdicts"]:
        assert set(verdict) == {"interface", "status", "finding", "evidence", "fix"}
        assert verdict["status"] in ("ok", "warning", "problem")
    lo = report["evidence"]["interfaces"][0]
    assert lo["name"] == "lo" and lo["error"] is None and lo["own"] == lo["sent"] > 0
    (lis,) = lo["peers"]
    assert lis["nick"] == "lis" and lis["address"] == "127.0.0.1"
    assert lis["by_unicast"] >= 1, "the listener answered our query"
    assert lis["by_group"] >= 1, "and its heartbeats came to the group"
    assert report["evidence"]["port"] == lo_port and report["evidence"]["named"] == ["lo"]


@pytest.mark.loopback
def test_cli_doctor_alone_on_loopback_exits_0_with_nobody_heard(lo_port: int) -> None:
    result = cli("doctor", "--json", "--wait", "0.5", port=lo_port)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["evidence"]["interfaces"][0]["peers"] == []
    assert report["evidence"]["interfaces"][0]["own"] > 0


def test_cli_doctor_unknown_interface_is_a_verdict_and_exit_1(lo_port: int) -> None:
    result = cli("doctor", "--interface", "nosuch0", port=lo_port)
    assert result.returncode == 1
    assert "[problem] no interface lanchat can use" in result.stdout
    assert "nosuch0" in result.stdout and "Traceback" not in result.stderr
    assert result.stdout.rstrip().endswith(
        "result: nothing can work as things are: see the problems above"
    )


def test_cli_doctor_bad_key_file_is_one_line(lo_port: int, tmp_path: Path) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    result = cli("doctor", "--key-file", str(bad), port=lo_port)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("lanchat: ") and result.stderr.count("\n") == 1
