"""IPv6 in the namespace lab: an IPv6-only host and dual-stack hosts find each other over
the link-local group, chat and exchange acknowledged direct messages; a dual-stack peer is
one peer with both addresses; --ipv4-only and --ipv6-only keep to their family.

Hosts use lanchat's default interface choice and a LANCHAT_HOME each (`tests/e2e_helpers.py`);
lab hosts with IPv6 have duplicate address detection off, so link-local addresses are
usable at once. Measured times are printed (``pytest -s``).
"""

from __future__ import annotations

import time

import pytest

from tests.e2e_helpers import Event, LanchatNet, Listener, nick_of, wait_knows, wait_mesh
from tests.lab import Host, Lab

pytestmark = pytest.mark.netns

MESH_TIMEOUT = 5.0  # discovery takes milliseconds; this only bounds a failure
# Discovery across the two stacks is as fast as over IPv4 (answers within the
# 0.5 s query spread); the slack covers process wake-ups on a loaded machine.
DISCOVERY_LIMIT = 1.5


def joined(listener: Listener, peer_id: str) -> Event:
    events = listener.of("peer_joined", peer_id)
    assert events, listener.diagnosis()
    return events[0]


def discovery_time(first: Listener, second: Listener) -> float:
    """Seconds from the later listener's start line to both knowing each other."""
    start = max(first.started()["time"], second.started()["time"])
    end = max(joined(first, second.peer_id)["time"], joined(second, first.peer_id)["time"])
    return float(end - start)


def v6_only(lab: Lab, name: str) -> Host:
    return lab.add_host(name, ipv4=False, ipv6=True)


def dual(lab: Lab, name: str) -> Host:
    return lab.add_host(name, ipv6=True)


def test_ipv6_only_and_dual_stack_hosts_chat_and_exchange_directs(
    lab: Lab, net: LanchatNet
) -> None:
    a, b, sender = v6_only(lab, "a"), dual(lab, "b"), v6_only(lab, "s")
    assert a.addresses == [] and b.addresses
    alice, bob = net.listen_all([a, b])
    assert wait_mesh([alice, bob], MESH_TIMEOUT), alice.diagnosis() + bob.diagnosis()
    took = discovery_time(alice, bob)
    print(f"\ndiscovery IPv6-only <-> dual-stack: {took * 1000:.0f} ms")
    assert took < DISCOVERY_LIMIT
    # Each is heard at its link-local address, scoped to the interface it came in on.
    assert joined(bob, alice.peer_id)["peer"]["addresses"] == [a.link_local()]
    assert joined(alice, bob.peer_id)["peer"]["addresses"] == [b.link_local()]

    sent = net.run(sender, "join", "--nick", "chef", stdin="hello over ipv6\n")
    assert sent.returncode == 0, sent.stderr
    for x in (alice, bob):
        chat = x.wait_for(lambda e: e["event"] == "chat_received", 3.0)
        assert chat is not None and (chat["nick"], chat["text"]) == ("chef", "hello over ipv6")

    for target, listener in ((nick_of(b), bob), (nick_of(a), alice)):
        started = time.monotonic()
        result = net.run(sender, "send", "--nick", "sender", "--to", target, "direct v6")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"delivered to {target} "), result.stdout
        print(f"send to {target} (IPv6-only sender): {time.monotonic() - started:.2f} s")
        got = listener.wait_for(lambda e: e["event"] == "direct_received", 2.0)
        assert got is not None and got["text"] == "direct v6"


def test_a_dual_stack_peer_is_one_peer_with_both_addresses(lab: Lab, net: LanchatNet) -> None:
    a, b, c = dual(lab, "a"), dual(lab, "b"), dual(lab, "c")
    alice, bob = net.listen_all([a, b])
    assert wait_mesh([alice, bob], MESH_TIMEOUT)
    print(f"\ndiscovery dual-stack <-> dual-stack: {discovery_time(alice, bob) * 1000:.0f} ms")
    # Heard over both groups, each is joined once and ends up with both addresses.
    time.sleep(1.5)  # a heartbeat over each family; a second join would show by now
    assert len(alice.of("peer_joined", bob.peer_id)) == 1
    assert len(bob.of("peer_joined", alice.peer_id)) == 1

    peers = net.peers(c, "--wait", "1.5")
    by_nick = {p["nick"]: p for p in peers}
    assert sorted(p["nick"] for p in peers) == sorted([nick_of(a), nick_of(b)]), peers
    assert sorted(by_nick[nick_of(b)]["addresses"]) == sorted([b.address, b.link_local()])

    table = net.run(c, "peers", "--wait", "1.5")
    assert table.returncode == 0, table.stderr
    assert sum(nick_of(b) in line for line in table.stdout.splitlines()) == 1, table.stdout

    result = net.run(c, "send", "--nick", "sender", "--to", nick_of(b), "one copy")
    assert result.returncode == 0, result.stderr
    time.sleep(0.5)  # a duplicate sent to the second address would show by now
    assert [e["text"] for e in bob.of("direct_received")] == ["one copy"]


def test_ipv4_only_and_ipv6_only_keep_to_their_family(lab: Lab, net: LanchatNet) -> None:
    a, b = v6_only(lab, "a"), dual(lab, "b")
    alice = net.listen(a)
    bob = net.listen(b, "--ipv4-only", nick="user-b4")

    # The dual-stack host's IPv4-only node never meets the IPv6-only one...
    assert not wait_knows(bob, {alice.peer_id}, 2.0)
    assert nick_of(a) not in {p["nick"] for p in net.peers(b, "--ipv4-only")}
    # ...while a default (dual-stack) look from the same host finds both.
    assert {nick_of(a), "user-b4"} <= {p["nick"] for p in net.peers(b)}
    # --ipv6-only on the dual-stack host sees only the IPv6 peer.
    assert {p["nick"] for p in net.peers(b, "--ipv6-only")} == {nick_of(a)}

    # On the IPv6-only host, --ipv4-only falls back to loopback and says why in one line.
    alone = net.run(a, "peers", "--ipv4-only")
    assert alone.returncode == 0 and alone.stderr.splitlines() == [
        "lanchat: only the loopback interface is usable: you will reach this machine only "
        "(eth0: no IPv4 address (IPv6 link-local only: drop --ipv4-only))",
        "no peers found",
    ], alone.stderr
    both = net.run(a, "peers", "--ipv4-only", "--ipv6-only")
    assert both.returncode == 2 and "exclude each other" in both.stderr
