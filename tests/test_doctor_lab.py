"""`lanchat doctor --json` in a namespace lab host with the default interface choice.

Hosts b and c run `lanchat listen`; host a runs the doctor: healthy, behind a firewall
dropping inbound UDP, with its link down, and with another key than the listeners'.
The human report of the healthy run is printed (``pytest -s``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lanchat.config import DEFAULT_GROUP, DEFAULT_PORT
from tests.e2e_helpers import LanchatNet, nick_of
from tests.lab import Host, Lab

pytestmark = pytest.mark.netns

Report = dict[str, Any]


@pytest.fixture
def net(lab: Lab, tmp_path: Path) -> Iterator[LanchatNet]:
    lanchat_net = LanchatNet(lab, tmp_path / "homes")
    yield lanchat_net
    lanchat_net.close()


def doctor(net: LanchatNet, host: Host, *args: str) -> tuple[int, Report]:
    """Run `lanchat doctor --json` in host: its exit status and report."""
    result = net.run(host, "doctor", "--json", *args, timeout=30)
    assert "Traceback" not in result.stderr, result.stderr
    report = json.loads(result.stdout)
    assert report["can_work"] is (result.returncode == 0)
    return result.returncode, report


def verdict(report: Report, text: str) -> dict[str, str]:
    """The one verdict whose finding contains text."""
    matches: list[dict[str, str]] = [v for v in report["verdicts"] if text in v["finding"]]
    assert len(matches) == 1, [v["finding"] for v in report["verdicts"]]
    return matches[0]


def eth0_of(report: Report) -> dict[str, Any]:
    interfaces: list[dict[str, Any]] = report["evidence"]["interfaces"]
    (eth0,) = [w for w in interfaces if w["name"] == "eth0"]
    return eth0


def keygen(path: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "lanchat", "keygen", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return path


def test_healthy_host_hears_both_listeners(lab: Lab, net: LanchatNet) -> None:
    a, b, c = lab.hosts(3)
    net.listen_all([b, c])
    code, report = doctor(net, a)
    assert code == 0
    assert report["interfaces"] == {"eth0": "ok"}
    assert {v["status"] for v in report["verdicts"]} == {"ok"}, report["verdicts"]
    heard = verdict(report, "peers heard")
    assert heard["interface"] == "eth0" and heard["finding"] == "2 peers heard"
    peers = {p["nick"]: p for p in eth0_of(report)["peers"]}
    assert set(peers) == {nick_of(b), nick_of(c)}
    assert peers[nick_of(b)]["address"] == b.address
    assert all(p["by_group"] >= 1 and p["by_unicast"] >= 1 for p in peers.values())
    assert (
        verdict(report, "default route")["finding"]
        == "default route via eth0 (gateway 10.213.1.254)"
    )
    human = net.run(a, "doctor", timeout=30)
    assert human.returncode == 0 and "2 peers heard" in human.stdout
    print("\n" + human.stdout)


def test_inbound_udp_dropped_is_the_firewall_verdict(lab: Lab, net: LanchatNet) -> None:
    a, b, c = lab.hosts(3)
    net.listen_all([b, c])
    a.set_loss(inbound=1.0)
    code, report = doctor(net, a)
    assert code == 1, "nothing can work behind that firewall"
    found = verdict(report, "own datagrams did not come back")
    assert found["interface"] == "eth0" and found["status"] == "problem"
    assert (
        f"sent to {DEFAULT_GROUP}:{DEFAULT_PORT} from {a.address}; none came back"
        in found["evidence"]
    )
    fix = found["fix"]
    assert f"iptables -I INPUT -p udp -d {DEFAULT_GROUP} --dport {DEFAULT_PORT} -j ACCEPT" in fix
    assert "iptables -I INPUT -p udp -s 10.213.1.0/24 -j ACCEPT" in fix
    nft = f"nft insert rule inet filter input ip daddr {DEFAULT_GROUP} udp dport {DEFAULT_PORT}"
    assert f"{nft} accept" in fix
    assert f"ufw allow proto udp from any to {DEFAULT_GROUP} port {DEFAULT_PORT}" in fix
    assert f"firewall-cmd --add-port={DEFAULT_PORT}/udp" in fix
    eth0 = eth0_of(report)
    assert eth0["own"] == 0 and eth0["sent"] > 0 and eth0["peers"] == []


def test_link_down_leaves_nothing_that_can_work(lab: Lab, net: LanchatNet) -> None:
    a, b = lab.hosts(2)
    net.listen(b)
    a.link_down("eth0")
    code, report = doctor(net, a)
    assert code == 1
    found = verdict(report, "only loopback is usable")
    assert found["interface"] is None and found["status"] == "problem"
    assert "eth0: down" in found["evidence"]
    assert report["evidence"]["loopback_fallback"] is True
    assert [w["name"] for w in report["evidence"]["interfaces"]] == ["lo"]
    route = verdict(report, "no default route")  # the kernel dropped it with the link
    assert route["status"] == "ok" and "needs no route" in route["evidence"]


def test_another_key_is_a_key_mismatch_naming_the_sources(
    lab: Lab, net: LanchatNet, tmp_path: Path
) -> None:
    theirs, mine = keygen(tmp_path / "theirs.key"), keygen(tmp_path / "mine.key")
    a, b, c = lab.hosts(3)
    net.listen_all([b, c], "--key-file", str(theirs))
    code, report = doctor(net, a, "--key-file", str(mine))
    assert code == 1, "no one can be heard with this key"
    found = verdict(report, "key mismatch")
    assert found["interface"] == "eth0" and found["status"] == "problem"
    for host in (b, c):
        assert f"{host.address} (" in found["evidence"], found["evidence"]
    assert "sealed with a key you do not hold" in found["evidence"]
    assert "--key-file" in found["fix"]
    drops = eth0_of(report)["drops"]
    assert {d["address"] for d in drops} == {b.address, c.address}
    assert {d["reason"] for d in drops} == {"unknown_key"}
    assert eth0_of(report)["peers"] == [] and eth0_of(report)["own"] > 0
