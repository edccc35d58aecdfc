"""Smoke checks of scripts/bench and its lab agents: they run, and measure what they claim.

Figures are not asserted (benchmarks print, they do not fail the suite); what is
asserted is that the harness works: the table is printed, a flood is counted
exactly, the traffic counters see remote datagrams only, and the Pyre runner
refuses to run outside a lab host.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from tests.e2e_helpers import AgentProcess, python_argv
from tests.lab import Lab

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "scripts" / "bench"
AGENT = str(ROOT / "scripts" / "bench_agent.py")


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=60
    )


def load_bench() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("lanchat_bench", str(BENCH))
    spec = importlib.util.spec_from_loader("lanchat_bench", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_quick_sections_print_a_table() -> None:
    result = bench("--quick", "--only", "sizes,core")
    assert result.returncode == 0, result.stderr
    table = result.stdout.split("| figure | lanchat | baseline (same run) | target |")[1]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 11  # nine datagram types, two core costs
    assert all(line.count("|") == 5 for line in rows)
    chat = next(line for line in rows if line.startswith("| core: chat datagram handled"))
    assert float(chat.split("|")[2].split()[0]) > 0  # a measured time in us


def test_unknown_section_is_a_usage_error() -> None:
    result = bench("--only", "sizes,warp")
    assert result.returncode == 2
    assert "unknown section(s) warp" in result.stderr


def test_pyre_runner_refuses_the_root_namespace() -> None:
    """Pyre broadcasts on the first real interface it finds: never outside the lab."""
    result = subprocess.run(
        [sys.executable, AGENT, "pyre", "--deadline", "1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "not in a named network namespace" in result.stderr


@pytest.mark.netns
def test_flood_is_counted_exactly(lab: Lab, tmp_path: Path) -> None:
    sender, *receivers = lab.hosts(3)
    count = 300
    rx = [
        AgentProcess(h, tmp_path / h.name, f"rx{h.name}",
                     [AGENT, "lanchat-recv", "--expect", str(count), "--deadline", "30"])
        for h in receivers
    ]  # fmt: skip
    for agent in rx:
        agent.started(20)
    tx = AgentProcess(sender, tmp_path / "tx", "tx",
                      [AGENT, "lanchat-send", "--count", str(count), "--peers", "2",
                       "--rate", "3000", "--deadline", "30"])  # fmt: skip
    try:
        sent = tx.wait_for(lambda e: e["event"] == "sent", 30)
        assert sent is not None, tx.diagnosis()
        assert sent["count"] == count
        for agent in rx:
            result = agent.wait_for(lambda e: e["event"] == "result", 30)
            assert result is not None, agent.diagnosis()
            assert result["received"] == count, result
            assert result["first"] >= sent["start"] - 0.01
    finally:
        for agent in [tx, *rx]:
            agent.stop()


@pytest.mark.netns
def test_traffic_counters_see_remote_datagrams_only(lab: Lab) -> None:
    """The per-host figure counts what arrives from other hosts, not the looped-back own."""
    module = load_bench()
    a, b = lab.hosts(2)
    for host in (a, b):
        module._install_counters(host)
    before = {h.name: module._read_counters(h) for h in (a, b)}
    script = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(sys.argv[1]))\n"
        "for _ in range(7): s.sendto(b'x' * 47, ('239.255.76.67', 47667))\n"
    )
    a.run(python_argv("-c", script, a.address), timeout=20)
    time.sleep(0.3)
    after = {h.name: module._read_counters(h) for h in (a, b)}

    def delta(host: str, key: str) -> tuple[int, int]:
        return (
            after[host][key][0] - before[host][key][0],
            after[host][key][1] - before[host][key][1],
        )

    assert delta("b", "ingress-group") == (7, 7 * (47 + 28))  # IP bytes
    assert delta("a", "ingress-group") == (0, 0)  # own multicast looped back: not counted
    assert delta("a", "egress-group") == (7, 7 * (47 + 28))
