"""Network errors a user can hit, provoked for real on this machine (loopback only): each
becomes one line naming what failed and the fix, never a traceback, and a node that can
go on (other interfaces) keeps running.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from lanchat import events as ev
from lanchat import netif
from lanchat.errors import ConfigError, NetworkError
from lanchat.netif import InterfaceInfo, IPv4Net
from lanchat.node import Node
from tests.loopback_helpers import LANCHAT, cli, node, until


def one_line(stderr: str) -> str:
    """The only line of stderr (no traceback, no second line)."""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_port_held_without_reuse_is_one_line(lo_port: int) -> None:
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("0.0.0.0", lo_port))  # no SO_REUSEADDR: nobody may share it
    try:

        async def start() -> None:
            async with node("x", lo_port):
                pass

        with pytest.raises(NetworkError) as caught:
            asyncio.run(start())
        assert caught.value.errno == errno.EADDRINUSE
        result = cli("peers", port=lo_port)
    finally:
        holder.close()
    assert result.returncode == 1
    assert one_line(result.stderr) == (
        f"lanchat: cannot open the group port {lo_port}: another program holds UDP port "
        f"{lo_port} without address reuse (find it: ss -ulpn 'sport = :{lo_port}'; "
        "or choose another --port)"
    )


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_privileged_port_without_the_capability_is_one_line() -> None:
    if int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text()) <= 80:
        pytest.skip("this machine lets anyone bind port 80")
    # As root, drop CAP_NET_BIND_SERVICE for the child; as anyone else it is absent anyway.
    prefix = ["setpriv", "--bounding-set", "-net_bind_service"] if os.geteuid() == 0 else []
    result = subprocess.run(
        [*prefix, *LANCHAT, "peers", "--port", "80"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1, result.stderr
    assert one_line(result.stderr) == (
        "lanchat: cannot open the group port 80: permission denied for UDP port 80 (ports "
        "below 1024 need root or CAP_NET_BIND_SERVICE: choose --port 1024 or above)"
    )


def test_both_family_options_are_refused(lo_port: int) -> None:
    result = cli("peers", "--ipv4-only", "--ipv6-only", port=lo_port)
    assert result.returncode == 2
    assert "--ipv4-only and --ipv6-only exclude each other" in result.stderr
    env_result = subprocess.run(
        [*LANCHAT, "peers"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "LANCHAT_IPV4_ONLY": "1", "LANCHAT_IPV6_ONLY": "1"},
    )
    assert env_result.returncode == 2 and "exclude each other" in env_result.stderr
    with pytest.raises(ConfigError, match="exclude each other"):
        Node("x", ipv4_only=True, ipv6_only=True)


# A stale read: an interface that was there when read and is gone when joined.
GHOST = InterfaceInfo(
    name="ghost0",
    index=0x7FFF_FFF0,
    up=True,
    loopback=False,
    multicast=True,
    point_to_point=False,
    virtual_kind=None,
    ipv4=(IPv4Net("10.255.254.1", 24),),
)


@pytest.fixture
def ghost(monkeypatch: pytest.MonkeyPatch) -> None:
    """Interface reads list `GHOST` beside the real interfaces."""
    real = netif.read_interfaces
    monkeypatch.setattr(netif, "read_interfaces", lambda: [*real(), GHOST])


@pytest.mark.usefixtures("ghost")
def test_join_on_a_vanished_interface_is_reported_and_the_node_keeps_running(
    lo_port: int,
) -> None:
    async def go() -> None:
        a = Node("a", interfaces=["lo", "ghost0"], port=lo_port, interface_poll_interval=None)
        reports = a.subscribe()
        async with a, node("b", lo_port) as b:
            report = reports.get_nowait()
            assert isinstance(report, ev.NetworkErrorReported)
            assert report.errno == errno.ENODEV and report.interface == "ghost0 10.255.254.1"
            assert report.message == (
                "cannot join 239.255.76.67 on ghost0 10.255.254.1: the interface or its "
                "address is gone (see `lanchat interfaces`)"
            )
            # The node runs on loopback: it meets b and hears its chat.
            await until(lambda: any(p.nick == "b" for p in a.peers()))
            await b.say("lobby", "still here")
            got = await a.wait_for(lambda e: isinstance(e, ev.ChatReceived), 2.0)
            assert isinstance(got, ev.ChatReceived) and got.text == "still here"

    asyncio.run(go())


@pytest.mark.usefixtures("ghost")
def test_join_on_the_only_interface_vanished_is_one_line(lo_port: int) -> None:
    async def go() -> None:
        async with Node("a", interfaces=["ghost0"], port=lo_port, interface_poll_interval=None):
            pass

    with pytest.raises(NetworkError) as caught:
        asyncio.run(go())
    assert str(caught.value) == (
        "cannot join 239.255.76.67 on ghost0 10.255.254.1: the interface or its address "
        "is gone (see `lanchat interfaces`)"
    )


def test_send_errors_are_reported_once_per_interface_and_error_then_counted(
    lo_port: int,
) -> None:
    """A failing sender is reported at once, then every 10 s with a count; others go on."""

    async def go() -> None:
        async with node("a", lo_port, interface_poll_interval=None) as a:
            queue = a.subscribe()
            failing = OSError(errno.ENETUNREACH, "Network is unreachable")
            for _ in range(5):
                a._report_send_error("eth9 10.9.9.9", failing)
            events = [queue.get_nowait() for _ in range(queue.qsize())]
            reports = [e for e in events if isinstance(e, ev.NetworkErrorReported)]
            assert reports == [
                ev.NetworkErrorReported(
                    "eth9 10.9.9.9",
                    errno.ENETUNREACH,
                    1,
                    "cannot send to the group on eth9 10.9.9.9: the network is unreachable "
                    "(link down or interface gone? see `lanchat doctor`)",
                )
            ]
            assert a._error_reports[("eth9 10.9.9.9", errno.ENETUNREACH)][1] == 4
            await a.say("lobby", "the node still sends")

    asyncio.run(go())
