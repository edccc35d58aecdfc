"""Following interfaces: the pure diff, the core's re-announce, `lanchat interfaces`, and a
node on loopback that loses and regains its only interface (faked by the read, real sockets).

Nothing here sends beyond loopback: every node is pinned to ``lo``, and the interface
command only reads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import socket
import subprocess
import sys
from datetime import datetime
from typing import Any

import pytest
from click.testing import CliRunner

from lanchat import codec, netif
from lanchat import config as cfg
from lanchat import events as ev
from lanchat.cli import cli
from lanchat.core import Identity, NodeCore
from lanchat.netif import InterfaceAddress, InterfaceInfo, IPv4Net, choose_interfaces, diff
from lanchat.render import format_event
from lanchat.testing import FakeLan
from lanchat.transport import UdpTransport
from tests.loopback_helpers import node, until

LANCHAT = [sys.executable, "-m", "lanchat"]


def nic(name: str, address: str, index: int, *, up: bool = True, **kw: Any) -> InterfaceInfo:
    """A fake interface with one /24 address (or none when `address` is empty)."""
    nets = (IPv4Net(address, 24),) if address else ()
    return InterfaceInfo(
        name=name,
        index=index,
        up=up,
        loopback=kw.pop("loopback", False),
        multicast=kw.pop("multicast", True),
        point_to_point=kw.pop("point_to_point", False),
        virtual_kind=kw.pop("kind", None),
        ipv4=nets,
    )


LO = nic("lo", "127.0.0.1", 1, loopback=True, multicast=False)
ETH0 = nic("eth0", "10.0.0.5", 2)
ETH1 = nic("eth1", "10.0.1.5", 3)
DOCKER0 = nic("docker0", "172.17.0.1", 4, kind="docker")


def where(info: InterfaceInfo) -> InterfaceAddress:
    return InterfaceAddress(info.name, info.ipv4[0].address, info.index)


# --- the pure diff --------------------------------------------------------------------------


def test_no_change_is_an_empty_falsy_diff() -> None:
    before = choose_interfaces([LO, ETH0, ETH1]).joined
    change = diff(before, choose_interfaces([LO, ETH0, ETH1]).joined)
    assert change.added == () and change.removed == () and not change


def test_new_interface_is_added_and_vanished_one_removed_in_order() -> None:
    old = choose_interfaces([LO, ETH0, DOCKER0]).joined
    new = choose_interfaces([LO, ETH1, DOCKER0]).joined
    change = diff(old, new)
    assert change
    assert change.added == (where(ETH1),)
    assert change.removed == (where(ETH0),)
    assert [str(w) for w in change.added] == ["eth1 10.0.1.5"]


def test_interface_going_down_is_removed_and_the_rest_stay() -> None:
    old = choose_interfaces([LO, ETH0, ETH1]).joined
    new = choose_interfaces([LO, dataclasses.replace(ETH0, up=False), ETH1]).joined
    assert diff(old, new) == netif.InterfaceDiff(added=(), removed=(where(ETH0),))


def test_last_interface_down_falls_back_to_loopback_and_back() -> None:
    up = choose_interfaces([LO, ETH0]).joined
    down = choose_interfaces([LO, dataclasses.replace(ETH0, up=False)]).joined
    assert diff(up, down) == netif.InterfaceDiff(added=(where(LO),), removed=(where(ETH0),))
    assert diff(down, up) == netif.InterfaceDiff(added=(where(ETH0),), removed=(where(LO),))


def test_changed_address_or_index_is_a_new_interface_address() -> None:
    renumbered = dataclasses.replace(ETH0, ipv4=(IPv4Net("10.0.0.99", 24),))
    change = diff([where(ETH0)], [where(renumbered)])
    assert [str(w) for w in change.removed] == ["eth0 10.0.0.5"]
    assert [str(w) for w in change.added] == ["eth0 10.0.0.99"]
    recreated = dataclasses.replace(ETH0, index=9)  # deleted and made again between polls
    change = diff([where(ETH0)], [where(recreated)])
    assert change.added == (where(recreated),) and change.removed == (where(ETH0),)


def test_nothing_left_removes_everything_and_duplicates_count_once() -> None:
    change = diff([where(ETH0), where(ETH1), where(ETH0)], [])
    assert change.removed == (where(ETH0), where(ETH1)) and change.added == ()


def test_choice_joined_uses_the_first_address_and_the_index() -> None:
    two = dataclasses.replace(ETH0, ipv4=(IPv4Net("10.0.0.5", 24), IPv4Net("10.9.0.5", 16)))
    (joined,) = choose_interfaces([LO, two]).joined
    assert joined == InterfaceAddress("eth0", "10.0.0.5", 2)


# --- the core: network_changed --------------------------------------------------------------


def sent_kinds(core: NodeCore, start: float, end: float, step: float = 0.01) -> list[str]:
    """Step a core's timer from `start` to `end`; the kinds of multicast datagrams it sent."""
    kinds: list[str] = []
    now = start
    while now <= end:
        timer = core.get_timer()
        if timer is not None and timer <= now:
            core.handle_timer(now)
        for dgram in core.datagrams_to_send():
            msg = codec.decode(dgram.data)
            if dgram.to is None:
                kinds.append(type(msg).__name__)
        now = round(now + step, 6)
    return kinds


def a_core(member: bool = True) -> NodeCore:
    config = cfg.NodeConfig(
        "alice", heartbeat_interval=60.0, unreachable_after=180, remove_after=600, member=member
    )
    return NodeCore(config, Identity(b"A" * 8, 1), uport=40001, rng=random.Random(0))


def test_network_changed_sends_what_a_start_sends() -> None:
    core = a_core()
    core.start(0.0)
    at_start = sent_kinds(core, 0.0, 2.0)
    assert sent_kinds(core, 2.0, 10.0) == []  # quiet: the next heartbeat is ~a minute away
    core.network_changed(10.0)
    assert core.get_timer() == 10.0  # at once, not at the next heartbeat
    again = sent_kinds(core, 10.0, 12.0)
    assert sorted(again) == sorted(at_start)
    assert again.count("Beat") == len(cfg.ANNOUNCE_DELAYS)
    assert again.count("Query") == len(cfg.QUERY_DELAYS)


def test_network_changed_of_a_one_shot_tool_only_queries() -> None:
    core = a_core(member=False)
    core.start(0.0)
    sent_kinds(core, 0.0, 2.0)
    core.network_changed(5.0)
    assert sent_kinds(core, 5.0, 7.0) == ["Query"] * len(cfg.QUERY_DELAYS_ONESHOT)


def test_network_changed_before_start_or_after_leaving_sends_nothing() -> None:
    core = a_core()
    core.network_changed(0.0)
    assert core.get_timer() is None and core.datagrams_to_send() == []
    core.start(1.0)
    sent_kinds(core, 1.0, 3.0)
    core.leave(3.0)
    core.network_changed(3.0)
    assert set(sent_kinds(core, 3.0, 5.0)) == {"Bye"}
    core.network_changed(5.0)
    assert core.closed and core.get_timer() is None and core.datagrams_to_send() == []


def test_network_changed_makes_a_cut_off_node_reachable_at_once() -> None:
    lan = FakeLan(seed=3)
    a, b = lan.add_node("a"), lan.add_node("b")
    lan.run(2)
    lan.partition(a)
    lan.run(5)
    assert [e.peer.nick for e in b.of_type(ev.PeerUnreachable)] == ["a"]
    lan.heal(a)
    lan.call(a, lambda core, now: core.network_changed(now))
    healed = lan.now
    assert lan.run_until(lambda: bool(b.of_type(ev.PeerReachable)), timeout=2)
    assert lan.now - healed < 0.01  # the announcement, not the next heartbeat or ping


# --- lanchat interfaces ---------------------------------------------------------------------


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A CLI runner with lanchat's default interface choice (the tests pin `lo` otherwise)."""
    monkeypatch.delenv("LANCHAT_INTERFACE", raising=False)
    monkeypatch.delenv("LANCHAT_EXCLUDE_INTERFACE", raising=False)
    return CliRunner()


def fake_machine(monkeypatch: pytest.MonkeyPatch, infos: list[InterfaceInfo]) -> None:
    monkeypatch.setattr(netif, "read_interfaces", lambda: list(infos))


def test_interfaces_json_on_this_machine(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["interfaces", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == [i.name for i in netif.read_interfaces()]
    by_name = {r["name"]: r for r in rows}
    lo = by_name["lo"]
    others_used = any(r["used"] for r in rows if r["name"] != "lo")
    assert lo["used"] is not others_used  # loopback only as the last resort
    assert lo["reason"].startswith("loopback")
    assert lo["ipv4"] == ["127.0.0.1/8"] and lo["loopback"] is True
    assert all(isinstance(r["reason"], str) and r["reason"] for r in rows)


def test_interfaces_json_with_interface_lo(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["interfaces", "--json", "--interface", "lo"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["name"], r["used"]) for r in rows if r["used"]] == [("lo", True)]
    assert {r["reason"] for r in rows if r["name"] != "lo"} <= {"not chosen (--interface given)"}


def test_interfaces_reads_the_environment_and_opens_no_socket(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_socket(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("lanchat interfaces opened a socket")

    monkeypatch.setattr(socket, "socket", no_socket)
    monkeypatch.setenv("LANCHAT_INTERFACE", "lo")
    result = runner.invoke(cli, ["interfaces"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() in (  # IPV6 when this machine has a link-local address
        ["INTERFACE", "USED", "IPV4", "WHY"],
        ["INTERFACE", "USED", "IPV4", "IPV6", "WHY"],
    )
    lo_line = next(line for line in lines if line.startswith("lo "))
    assert lo_line.split()[:3] == ["lo", "yes", "127.0.0.1/8"]


def test_interfaces_table_gives_every_verdict(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_machine(
        monkeypatch,
        [
            LO,
            ETH0,
            nic("eth1", "", 3),
            nic("wlan0", "10.0.2.5", 4, up=False),
            DOCKER0,
            nic("tun0", "10.8.0.6", 6, point_to_point=True, kind="tun"),
            nic("eth2", "10.0.3.5", 7),
        ],
    )
    result = runner.invoke(cli, ["interfaces", "--exclude-interface", "eth2"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "INTERFACE  USED  IPV4           WHY",
        "lo         no    127.0.0.1/24   "
        "loopback (used only when chosen or when nothing else exists)",
        "eth0       yes   10.0.0.5/24    up, multicast, 10.0.0.5/24",
        "eth1       no    -              no IPv4 address",
        "wlan0      no    10.0.2.5/24    down",
        "docker0    no    172.17.0.1/24  Docker bridge; choose it with --interface",
        "tun0       no    10.8.0.6/24    point-to-point (VPN); choose it with --interface",
        "eth2       no    10.0.3.5/24    excluded by option",
    ]
    chosen = runner.invoke(cli, ["interfaces", "--json", "-i", "docker0"])
    rows = {r["name"]: r for r in json.loads(chosen.stdout)}
    assert rows["docker0"]["used"] and rows["docker0"]["kind"] == "docker"
    assert rows["eth0"] == {
        "name": "eth0",
        "index": 2,
        "used": False,
        "reason": "not chosen (--interface given)",
        "up": True,
        "ipv4": ["10.0.0.5/24"],
        "ipv6": [],
        "ipv6_used": False,
        "loopback": False,
        "point_to_point": False,
        "multicast": True,
        "kind": None,
    }


def test_interfaces_exits_1_with_one_line_when_nothing_is_usable(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_machine(monkeypatch, [dataclasses.replace(LO, up=False), nic("eth0", "", 2)])
    for args in (["interfaces"], ["interfaces", "--json"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 1
        assert result.stdout == ""
        assert result.stderr == (
            "lanchat: no usable network interface: lo: down; eth0: no IPv4 address\n"
        )


def test_interfaces_command_unknown_name_fails_in_one_line() -> None:
    result = subprocess.run(
        [*LANCHAT, "interfaces", "--json", "--interface", "no-such-nic0"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("lanchat: no interface is named or has the address")
    assert len(result.stderr.splitlines()) == 1


# --- chat shows the change ------------------------------------------------------------------

NOW = datetime(2026, 1, 2, 12, 34, 56)


def test_chat_shows_interface_changes() -> None:
    change = ev.InterfacesChanged(("eth1 10.0.1.5",), ("eth0 10.0.0.5",), ("eth1 10.0.1.5",))
    assert format_event(change, NOW) == (
        "12:34:56 --- network: eth1 10.0.1.5 joined; eth0 10.0.0.5 removed"
    )
    gone = ev.InterfacesChanged((), ("eth0 10.0.0.5",), ())
    assert format_event(gone, NOW) == (
        "12:34:56 --- network: eth0 10.0.0.5 removed (no usable interface left: waiting for one)"
    )


# --- a node on loopback following its (faked) interfaces ------------------------------------


def real_lo() -> InterfaceInfo:
    return next(info for info in netif.read_interfaces() if info.name == "lo")


class FakeRead:
    """Stands in for `netif.read_interfaces`: these interfaces, or (None) the real ones."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.infos: list[InterfaceInfo] | None = None
        self._real = netif.read_interfaces
        monkeypatch.setattr(netif, "read_interfaces", self)

    def __call__(self) -> list[InterfaceInfo]:
        return self._real() if self.infos is None else list(self.infos)


@pytest.mark.loopback
def test_node_leaves_and_rejoins_its_only_interface(
    lo_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    lo = real_lo()
    lo_address = f"lo {lo.ipv4[0].address}"
    read = FakeRead(monkeypatch)

    async def main() -> None:
        async with node("alice", lo_port, interface_poll_interval=None) as a:
            events = a.subscribe()
            assert await a.refresh_interfaces() is None  # nothing changed
            read.infos = [dataclasses.replace(lo, up=False)]
            gone = await a.refresh_interfaces()
            assert gone == ev.InterfacesChanged((), (lo_address,), ())
            assert a.choice.used == () and a._senders == {}
            transport = a._transport
            assert isinstance(transport, UdpTransport)
            with pytest.raises(OSError):  # really left: the kernel has no membership to drop
                transport._membership(
                    InterfaceAddress("lo", lo.ipv4[0].address, lo.index), join=False
                )
            await a.say("lobby", "into the void")  # nothing to send on: no error either
            assert await a.refresh_interfaces() is None  # still nothing: no new event
            read.infos = None
            back = await a.refresh_interfaces()
            assert back == ev.InterfacesChanged((lo_address,), (), (lo_address,))
            assert [e for e in drain(events) if isinstance(e, ev.InterfacesChanged)] == [
                gone,
                back,
            ]
            async with node("bob", lo_port) as b:  # the rejoined group works both ways
                await until(lambda: len(a.peers()) == 1 and len(b.peers()) == 1)
                await a.say("lobby", "back again")
                chat = await b.wait_for(lambda e: isinstance(e, ev.ChatReceived), 2)
                assert isinstance(chat, ev.ChatReceived) and chat.text == "back again"

    asyncio.run(main())


@pytest.mark.loopback
def test_node_polls_by_itself_and_survives_an_address_it_cannot_join(
    lo_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    lo = real_lo()
    # lo renumbered to an address this machine does not have: joining and binding fail.
    # (198.51.100.0/24 is TEST-NET-2; the membership would be on lo by index anyway.)
    odd = dataclasses.replace(lo, ipv4=(IPv4Net("198.51.100.7", 8),))
    read = FakeRead(monkeypatch)

    async def main() -> None:
        async with node("alice", lo_port, interface_poll_interval=0.05, netlink=False) as a:
            read.infos = [odd]
            change = await a.wait_for(lambda e: isinstance(e, ev.InterfacesChanged), 2)
            assert change == ev.InterfacesChanged((), (f"lo {lo.ipv4[0].address}",), ())
            await until(lambda: a.interface_errors >= 2)  # retried at every poll, quietly
            read.infos = None
            back = await a.wait_for(lambda e: isinstance(e, ev.InterfacesChanged), 2)
            assert isinstance(back, ev.InterfacesChanged) and back.active == back.added
            watcher = a._watcher
            assert watcher is not None and not watcher.done()
        assert watcher.done() and a._senders == {}

    asyncio.run(main())


def drain(queue: asyncio.Queue[ev.Event]) -> list[ev.Event]:
    return [queue.get_nowait() for _ in range(queue.qsize())]
