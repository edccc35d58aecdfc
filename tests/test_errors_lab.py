"""Send errors provoked for real in the namespace lab: an interface deleted under a running
node, and a firewall refusing its sends. Each becomes one `NetworkErrorReported` line naming
the interface and the fix; the node keeps running on the other interfaces.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.lab import Lab

pytestmark = pytest.mark.netns

# A node on every usable interface, without the interface poll (so the deleted interface
# stays in use); each stdin line makes it chat once and print the network errors since.
_SCRIPT = """
import asyncio, json, sys
from lanchat import Node, NetworkErrorReported

async def main():
    node = Node("victim", interface_poll_interval=None)
    queue = node.subscribe()
    async with node:
        print(json.dumps(sorted(map(str, node._senders))), flush=True)
        loop = asyncio.get_running_loop()
        while await loop.run_in_executor(None, sys.stdin.readline):
            await node.say("lobby", "probe")
            await asyncio.sleep(0.3)
            found = []
            while not queue.empty():
                event = queue.get_nowait()
                if isinstance(event, NetworkErrorReported):
                    found.append([event.interface, event.errno, event.message])
            print(json.dumps(found), flush=True)

asyncio.run(main())
"""


def _step(proc: subprocess.Popen[str]) -> Any:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    assert line, proc.stderr.read() if proc.stderr else "no output"
    return json.loads(line)


def test_send_on_a_deleted_interface_and_through_a_firewall_is_reported(lab: Lab) -> None:
    a = lab.add_host("a", lans=("lan1", "lan2"))
    b = lab.add_host("b", lans=("lan1",))
    listen = b.spawn(
        ["env", "-u", "LANCHAT_INTERFACE", sys.executable, "-m", "lanchat", "listen", "--json"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert listen.stdout is not None and '"started"' in listen.stdout.readline()
    proc = a.spawn(
        ["env", "-u", "LANCHAT_INTERFACE", sys.executable, "-c", _SCRIPT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    senders = json.loads(proc.stdout.readline())
    eth1 = f"eth1 {a.addresses[1]}"
    assert senders == sorted([f"eth0 {a.address}", eth1])
    assert _step(proc) == []  # both interfaces send fine

    a.detach("eth1")
    reports = _step(proc)
    assert [where for where, _, _ in reports] == [eth1], reports
    _, number, message = reports[0]
    assert message.startswith(f"cannot send to the group on {eth1}: "), message
    print(f"\ninterface deleted under a running node: errno {number}: {message}")
    assert proc.poll() is None  # still running

    # The node goes on over eth0: b hears its chat after the deletion.
    chats = 0
    for line in listen.stdout:
        event = json.loads(line)
        chats += event["event"] == "chat_received" and event["text"] == "probe"
        if chats == 2:
            break
    assert chats == 2

    a.run(
        ["nft", "-f", "-"],
        timeout=10,
        stdin="table inet lcfw {\n chain out {\n type filter hook output priority 0;\n"
        " udp dport 47667 drop\n }\n}\n",
    )
    firewalled = _step(proc)
    assert firewalled, "no report while a firewall drops every send"
    assert firewalled[0][0] == f"eth0 {a.address}"
    assert firewalled[0][2] == (
        f"cannot send to the group on eth0 {a.address}: a firewall refuses it "
        "(allow UDP to and from lanchat's port in its output rules)"
    )
    assert proc.poll() is None
