"""A host floods a victim at >= 20,000 datagrams/s: nobody is falsely gone, chat gets through.

Four lab hosts: a victim and two honest peers run `lanchat listen --json`; the
fourth floods for 8 s, round-robin, with (a) junk to the group, (b) valid Beats
and Chat of invented peers to the group and (c) junk unicast to the victim's
port. Meanwhile an honest host says a line and sends the victim a direct message.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lanchat import config as cfg
from tests.e2e_helpers import LanchatNet, wait_mesh
from tests.lab import Host, Lab

pytest_plugins = ["tests.lab_fixtures"]
pytestmark = pytest.mark.netns

FLOOD_SECONDS = 8.0
FLOOD_PROCESSES = 2  # two tight sendto loops: one Python loop alone makes ~15-30k/s here
MAX_PER_PROCESS = 400_000  # bounded by count as well as by time

# The flooder: bounded by count and by time; prints what it sent and how fast.
FLOOD_SCRIPT = r"""
import json, os, socket, sys, time
import msgpack
group, port, victim, uport, seconds, limit = sys.argv[1:7]
port, uport, seconds, limit = int(port), int(uport), float(seconds), int(limit)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
header = b"LC\x01\x00"
inst = (int(time.time() * 1000) << 16) | os.getpid()
def ghost(i):
    pid = (0xF000_0000_0000_0000 | (os.getpid() << 24) | i).to_bytes(8, "big")
    beat = [1, pid, inst, f"ghost{i}", "h", 40000, 0, "", ["lobby"], 0, 1000]
    chat = [4, pid, inst, 1 + i, f"ghost{i}", "lobby", "spam " * 8]
    return header + msgpack.packb(beat), header + msgpack.packb(chat)
forged = [d for i in range(4096) for d in ghost(i)]
junk = [header + os.urandom(40 + i % 200) for i in range(512)]
to_group, to_victim = (group, port), (victim, uport)
sent = errors = 0
start = time.monotonic()
end = start + seconds
while sent < limit:
    try:
        for i in range(sent, sent + 300, 3):
            sock.sendto(junk[i % 512], to_group)
            sock.sendto(forged[i % 8192], to_group)
            sock.sendto(junk[(i + 1) % 512], to_victim)
    except OSError:
        errors += 1
    sent += 300
    if time.monotonic() >= end:
        break
elapsed = time.monotonic() - start
print(json.dumps({"sent": sent, "seconds": elapsed, "errors": errors}))
"""


@pytest.fixture
def net(lab: Lab, tmp_path: Path) -> Iterator[LanchatNet]:
    lanchat_net = LanchatNet(lab, tmp_path)
    try:
        yield lanchat_net
    finally:
        lanchat_net.close()


def udp_counters(host: Host) -> dict[str, int]:
    """The kernel's UDP counters in the host's namespace (RcvbufErrors: buffer overflows)."""
    lines = host.run(["cat", "/proc/net/snmp"], timeout=10).stdout.splitlines()
    names, values = [line.split()[1:] for line in lines if line.startswith("Udp:")][:2]
    return dict(zip(names, map(int, values), strict=True))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0


def test_a_flooding_host_causes_no_false_departure_and_chat_still_arrives(
    lab: Lab, net: LanchatNet
) -> None:
    victim_host, alice_host, bob_host, flooder = lab.hosts(4)
    victim, alice, bob = net.listen_all([victim_host, alice_host, bob_host])
    assert wait_mesh([victim, alice, bob], timeout=10), "no mesh before the flood"
    honest = {alice.peer_id, bob.peer_id}
    time.sleep(1.0)
    udp_before = udp_counters(victim_host)
    cpu_before = cpu_seconds(victim.proc.pid)
    flood_args = [cfg.DEFAULT_GROUP, str(cfg.DEFAULT_PORT), victim_host.address, str(victim.port)]
    flood_args += [str(FLOOD_SECONDS), str(MAX_PER_PROCESS)]
    flood_args = [cfg.DEFAULT_GROUP, str(cfg.DEFAULT_PORT), victim_host.address, str(victim.port)]
    flood_args += [str(FLOOD_SECONDS), str(MAX_PER_PROCESS)]
    floods = [
        flooder.spawn([sys.executable, "-c", FLOOD_SCRIPT, *flood_args], stdout=subprocess.PIPE)
        for _ in range(FLOOD_PROCESSES)
    ]
    t0 = time.monotonic()
    time.sleep(2.0)
    said = net.run(alice_host, "join", "--nick", "alice-says", stdin="said during the flood\n")
    sent_at = time.monotonic()
    direct = net.run(bob_host, "send", "--to", victim.nick, "direct during the flood")
    direct_seconds = time.monotonic() - sent_at
    direct_done = time.monotonic() - t0
    reports = [json.loads(proc.communicate(timeout=FLOOD_SECONDS + 30)[0]) for proc in floods]
    cpu = (cpu_seconds(victim.proc.pid) - cpu_before) / (time.monotonic() - t0)
    udp_after = udp_counters(victim_host)
    time.sleep(3.0)  # past the flood: any departure it caused would show by now

    rate = sum(r["sent"] for r in reports) / max(r["seconds"] for r in reports)
    dropped_by_kernel = udp_after["RcvbufErrors"] - udp_before["RcvbufErrors"]
    delivered = victim.of("chat_received")
    gone = [e for e in victim.snapshot() if e["event"] in ("peer_left", "peer_unreachable")]
    false_departures = [e for e in gone if e["peer"]["peer_id"] in honest]
    figures = (
        f"flood {rate:,.0f} datagrams/s for {max(r['seconds'] for r in reports):.1f} s "
        f"({sum(r['sent'] for r in reports):,} sent); victim: kernel buffer drops "
        f"{dropped_by_kernel:,} of {udp_after['InDatagrams'] - udp_before['InDatagrams']:,} "
        f"taken in, CPU {cpu:.0%}; direct acked in {direct_seconds:.2f} s "
        f"(done {direct_done:.1f} s into the flood); chat delivered "
        f"{[e['text'] for e in delivered if e['text'] != 'spam ' * 8]}"
    )
    print(figures)
    assert rate >= 20_000, figures
    assert direct_done < FLOOD_SECONDS, f"the checks ran after the flood: {figures}"
    assert false_departures == [], figures
    assert said.returncode == 0, said.stderr
    assert any(e["text"] == "said during the flood" for e in delivered), figures
    assert direct.returncode == 0, f"direct message not acknowledged: {direct.stderr} {figures}"
    assert direct_seconds < 3.0, figures  # the victim's loop kept answering
    spam = sum(1 for e in delivered if e["text"] == "spam " * 8)
    assert spam <= cfg.SOURCE_BURST + cfg.SOURCE_RATE * FLOOD_SECONDS, figures
    for listener in (alice, bob):  # the honest peers were flooded too (multicast)
        assert [e for e in listener.snapshot() if e["event"] == "peer_left"
                and e["peer"]["peer_id"] in honest | {victim.peer_id}] == [], figures  # fmt: skip
