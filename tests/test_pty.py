"""`lanchat join` driven as a person would: in a real 80x24 terminal (tmux) on a lab host.

The screen is read back with `tmux capture-pane`, so "incoming lines never
garble the line being typed" is checked on what a person would see.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lanchat.lab import Host, Lab

pytestmark = pytest.mark.netns


def host_env(host: Host, home: Path) -> dict[str, str]:
    return {"LANCHAT_INTERFACE": "eth0", "LANCHAT_HOME": str(home / host.name)}


class Tmux:
    """One tmux server of our own (its own socket) running one 80x24 session."""

    def __init__(self, socket: Path) -> None:
        self.socket = str(socket)

    def __call__(self, *args: str) -> str:
        result = subprocess.run(
            ["tmux", "-S", self.socket, *args], capture_output=True, text=True, timeout=10
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "chat")

    def type(self, text: str) -> None:
        self("send-keys", "-t", "chat", "-l", text)

    def enter(self) -> None:
        self("send-keys", "-t", "chat", "Enter")

    def wait_screen(self, predicate: Callable[[str], bool], timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if predicate(screen):
                return screen
            assert time.monotonic() < deadline, f"screen never matched:\n{screen}"
            time.sleep(0.05)


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        if os.environ.get("CI") in ("true", "1"):
            pytest.fail("tmux is required for the terminal test in CI")
        pytest.skip("tmux is not installed")
    t = Tmux(tmp_path / "tmux.sock")
    yield t
    subprocess.run(["tmux", "-S", t.socket, "kill-server"], capture_output=True, timeout=10)


def read_json_lines(proc: subprocess.Popen[str]) -> list[dict[str, Any]]:
    proc.terminate()
    out, _ = proc.communicate(timeout=10)
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_interactive_join_in_a_terminal(lab: Lab, tmux: Tmux, tmp_path: Path) -> None:
    a, b, c = lab.hosts(3)
    lanchat = [sys.executable, "-m", "lanchat"]
    bob = b.spawn(
        [*lanchat, "listen", "--json", "--nick", "bob"],
        env=host_env(b, tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert bob.stdout is not None
    assert json.loads(bob.stdout.readline())["event"] == "started"

    env = " ".join(f"{k}={v}" for k, v in host_env(a, tmp_path).items())
    command = (
        f"env {env} PROMPT_TOOLKIT_NO_CPR=1 TERM=xterm "
        f"ip netns exec {a.netns} {' '.join(lanchat)} join --nick alice"
        f"; echo EXIT=$?; sleep 30"
    )
    tmux("new-session", "-d", "-s", "chat", "-x", "80", "-y", "24", command)
    tmux.wait_screen(lambda s: "alice>" in s and "bob" in s, timeout=10)

    # A line typed and sent reaches the other host.
    tmux.type("hello from alice")
    tmux.enter()
    tmux.wait_screen(lambda s: "<alice> hello from alice" in s)

    # Half a line typed, then a line arrives from another host...
    tmux.type("typing in prog")
    carol = c.spawn(
        [*lanchat, "join", "--nick", "carol"],
        env=host_env(c, tmp_path),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert carol.stdin is not None
    carol.stdin.write("interrupting line from carol\n")
    carol.stdin.flush()
    screen = tmux.wait_screen(lambda s: "<carol> interrupting line from carol" in s)
    # ...prints above the prompt, which still holds exactly what was typed.
    lines = [line.rstrip() for line in screen.splitlines() if line.strip()]
    assert lines[-1].endswith("alice> typing in prog"), screen
    assert any(line.endswith("<carol> interrupting line from carol") for line in lines), screen
    assert "typing in proginterrupting" not in screen and "progint" not in screen
    tmux.type("ress")
    tmux.enter()
    tmux.wait_screen(lambda s: "<alice> typing in progress" in s)

    tmux.type("/nick alicia")
    tmux.enter()
    tmux.wait_screen(lambda s: "alicia>" in s)
    tmux.type("/msg bob psst")
    tmux.enter()
    tmux.wait_screen(lambda s: "delivered" in s)
    tmux.type("/quit")
    tmux.enter()
    tmux.wait_screen(lambda s: "EXIT=0" in s, timeout=10)
    assert "Traceback" not in tmux.screen()
    carol.stdin.close()
    carol.wait(10)

    events = read_json_lines(bob)
    chats = [e["text"] for e in events if e["event"] == "chat_received" and e["nick"] != "carol"]
    assert chats == ["hello from alice", "typing in progress"]
    assert any(e["event"] == "peer_renamed" and e["peer"]["nick"] == "alicia" for e in events)
    assert [e["text"] for e in events if e["event"] == "direct_received"] == ["psst"]
    left = [e for e in events if e["event"] == "peer_left" and e["peer"]["nick"] == "alicia"]
    assert [e["reason"] for e in left] == ["bye"]
