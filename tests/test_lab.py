"""Tests of the namespace lab itself: reachability, multicast, loss, partitions, cleanup."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import uuid

import pytest

from tests.lab import Host, Lab, list_namespaces

pytest_plugins = ["tests.lab_fixtures"]
pytestmark = pytest.mark.netns

GROUP = "239.255.77.1"
PORT = 47_701
NOBODY = "10.213.1.77"  # in lan1's /24, owned by no host

MULTICAST_RECEIVE = """
import socket, sys
group, port, local, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind((group, port))
membership = socket.inet_aton(group) + socket.inet_aton(local)
sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
print("ready", flush=True)
sock.settimeout(timeout)
try:
    data, source = sock.recvfrom(1500)
except TimeoutError:
    sys.exit(3)
print(data.decode(), source[0], flush=True)
"""

MULTICAST_SEND = """
import socket, sys, time
group, port, local, payload = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(local))
sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
for _ in range(3):
    sock.sendto(payload.encode(), (group, port))
    time.sleep(0.02)
"""

COUNT_RECEIVE = """
import socket, sys
port, first_wait, idle = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE: no overflow drops
sock.bind(("0.0.0.0", port))
print("ready", flush=True)
sock.settimeout(first_wait)
count = 0
try:
    while True:
        sock.recv(64)
        count += 1
        sock.settimeout(idle)
except TimeoutError:
    pass
print(count, flush=True)
"""

BURST_SEND = """
import socket, sys, time
address, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
errors = 0
for n in range(count):
    try:
        sock.sendto(b"lab-burst-%d" % n, (address, port))
    except OSError:
        errors += 1
    if n % 200 == 199:
        time.sleep(0.001)
print(errors, flush=True)
"""


def _start_receiver(host: Host, script: str, *args: str) -> subprocess.Popen[bytes]:
    """Spawn a receiver script and wait until it prints ``ready``."""
    proc: subprocess.Popen[bytes] = host.spawn(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
    )
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], 5.0)
    line = proc.stdout.readline() if readable else b""
    if line.strip() != b"ready":
        proc.kill()
        _, err = proc.communicate(timeout=5)
        raise AssertionError(f"receiver on {host.name} not ready: {line!r} {err.decode()}")
    return proc


def _finish(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=10)
    return proc.returncode, out.decode().strip()


def _multicast(sender: Host, receivers: list[Host], timeout: float) -> dict[str, str | None]:
    """Send one payload to GROUP from ``sender``; what each receiver got (None: nothing)."""
    procs = {
        host.name: _start_receiver(
            host, MULTICAST_RECEIVE, GROUP, str(PORT), host.address, str(timeout)
        )
        for host in receivers
    }
    payload = uuid.uuid4().hex
    sender.run(
        [sys.executable, "-c", MULTICAST_SEND, GROUP, str(PORT), sender.address, payload],
        timeout=10,
    )
    got: dict[str, str | None] = {}
    for name, proc in procs.items():
        code, out = _finish(proc)
        assert code in (0, 3), out  # 3: timed out
        got[name] = out.replace(payload, "PAYLOAD") if code == 0 else None
    return got


def _burst(sender: Host, receiver: Host, count: int) -> int:
    """Send ``count`` unicast datagrams; how many arrived. Sending must never fail."""
    proc = _start_receiver(receiver, COUNT_RECEIVE, str(PORT), "2.0", "0.3")
    sent = sender.run(
        [sys.executable, "-c", BURST_SEND, receiver.address, str(PORT), str(count)], timeout=20
    )
    assert sent.stdout.strip() == "0", "a lossy link must drop silently, not fail sendto"
    code, out = _finish(proc)
    assert code == 0
    return int(out)


def test_two_hosts_ping_each_other(lab: Lab) -> None:
    a, b = lab.hosts(2)
    assert (a.address, b.address) == ("10.213.1.1", "10.213.1.2")
    assert a.ping(b.address)
    assert b.ping(a.address)
    assert not a.ping(NOBODY, timeout=0.3)


def test_multicast_reaches_every_host_on_the_lan(lab: Lab) -> None:
    a, b, c = lab.hosts(3)
    got = _multicast(a, [b, c], timeout=3.0)
    assert got == {"b": f"PAYLOAD {a.address}", "c": f"PAYLOAD {a.address}"}


def test_inbound_loss_drops_about_that_fraction_and_zero_restores(lab: Lab) -> None:
    a, b = lab.hosts(2)
    assert a.ping(b.address)  # resolve ARP first: no datagram waits in the neighbour queue
    b.set_loss(inbound=0.2)
    received = _burst(a, b, 2000)
    assert 1400 <= received <= 1800  # 10-30 % lost; expected 400 +- 18 (one sigma)
    b.set_loss(0)
    assert _burst(a, b, 500) == 500


def test_outbound_loss_is_silent_and_replaces_the_earlier_setting(lab: Lab) -> None:
    a, b = lab.hosts(2)
    assert a.ping(b.address)
    a.set_loss(inbound=1.0, outbound=1.0)
    a.set_loss(outbound=0.5)  # replaces: inbound loss is gone
    assert 350 <= _burst(a, b, 1000) <= 650
    assert _burst(b, a, 300) == 300


def test_loss_fraction_out_of_range_is_refused(lab: Lab) -> None:
    (a,) = lab.hosts(1)
    with pytest.raises(ValueError, match="fraction"):
        a.set_loss(inbound=20)


def test_partition_blocks_everything_and_heal_restores(lab: Lab) -> None:
    a, b, c = lab.hosts(3)
    assert a.ping(b.address)
    b.partition()
    assert not a.ping(b.address, timeout=0.3)
    assert not b.ping(c.address, timeout=0.3)
    assert b.ping("127.0.0.1")  # loopback is spared
    assert a.ping(c.address)  # only b is cut off
    b.heal()
    assert a.ping(b.address)
    assert b.ping(c.address)


def test_multi_nic_host_reaches_both_lans(lab: Lab) -> None:
    a = lab.add_host("a", lans=("lan1",))
    x = lab.add_host("x", lans=("lan2",))
    m = lab.add_host("m", lans=("lan1", "lan2"))
    assert m.interfaces == ["eth0", "eth1"]
    assert m.addresses == ["10.213.1.3", "10.213.2.3"]
    assert m.ping(a.address)
    assert m.ping(x.address)


def test_two_lans_cannot_reach_each_other(lab: Lab) -> None:
    a, b = lab.hosts(2, lan="lan1")
    (c,) = lab.hosts(1, lan="lan2")
    assert c.address == "10.213.2.3"
    assert not a.ping(c.address, timeout=0.3)
    assert not c.ping(a.address, timeout=0.3)
    got = _multicast(a, [b, c], timeout=0.5)
    assert got == {"b": f"PAYLOAD {a.address}", "c": None}


def test_no_default_route_variant(lab: Lab) -> None:
    lab.add_lan("lan1")
    a = lab.add_host("a", default_route=False)
    b = lab.add_host("b")
    assert a.run(["ip", "route", "show", "default"], timeout=5).stdout.strip() == ""
    route = b.run(["ip", "route", "show", "default"], timeout=5).stdout
    assert route.split()[:5] == ["default", "via", "10.213.1.254", "dev", "eth0"]
    assert a.ping(b.address)  # on-link still works
    assert not a.ping("10.213.9.9", timeout=0.3)  # off-link: network unreachable


def test_link_down_up_and_cable_unplug(lab: Lab) -> None:
    a, b = lab.hosts(2)
    a.link_down()
    assert not b.ping(a.address, timeout=0.3)
    a.link_up()
    assert b.ping(a.address, timeout=2.0)
    assert "default via 10.213.1.254" in a.run(["ip", "route"], timeout=5).stdout
    a.unplug()
    assert "NO-CARRIER" in a.run(["ip", "link", "show", "eth0"], timeout=5).stdout
    assert not b.ping(a.address, timeout=0.3)
    a.plug()
    assert b.ping(a.address, timeout=2.0)


def test_attach_detach_and_addresses_while_running(lab: Lab) -> None:
    a, b = lab.hosts(2)
    a.partition()
    iface = a.attach("lan1")
    assert iface == "eth1"
    assert a.addresses == ["10.213.1.1", "10.213.1.100"]
    assert not b.ping("10.213.1.100", timeout=0.3)  # the partition covers the new interface
    a.heal()
    assert b.ping("10.213.1.100")
    a.detach(iface)
    assert a.interfaces == ["eth0"]
    assert not b.ping("10.213.1.100", timeout=0.3)
    a.add_address("eth0", "10.213.1.50/24")
    assert b.ping("10.213.1.50")
    a.del_address("eth0", "10.213.1.50/24")
    assert not b.ping("10.213.1.50", timeout=0.3)


def test_close_ends_processes_and_deletes_namespaces_even_when_the_body_raises(
    netns_required: None,
) -> None:
    with pytest.raises(RuntimeError, match="boom"), Lab() as lab:
        a, _ = lab.hosts(2)
        created = lab.namespaces
        proc = a.spawn(["sleep", "30"])
        raise RuntimeError("boom")
    assert len(created) == 3  # switch, a, b
    assert proc.returncode == -15
    assert not set(created) & set(list_namespaces())
    lab.close()  # idempotent


def test_stale_namespaces_of_dead_labs_are_removed_and_nothing_else(
    netns_required: None,
) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = f"ll{dead.pid}x0-a"
    live = f"ll{os.getpid()}x99999-a"  # a live PID: another lab of this process
    foreign = f"lanchat-test-keep-{os.getpid()}"  # not the lab pattern at all
    mine = [stale, live, foreign]
    try:
        for netns in mine:
            subprocess.run(["ip", "netns", "add", netns], check=True, timeout=5)
        with Lab():
            remaining = set(list_namespaces())
        assert stale not in remaining
        assert live in remaining
        assert foreign in remaining
    finally:
        for netns in set(mine) & set(list_namespaces()):
            subprocess.run(["ip", "netns", "delete", netns], check=False, timeout=5)
