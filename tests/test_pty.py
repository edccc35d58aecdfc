"""`lanchat join` driven as a person would: in a real 80x24 terminal (tmux) on a lab host.

The screen is read back with `tmux capture-pane`, so "incoming lines never
garble the line being typed" is checked on what a person would see.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab import Host, Lab

pytestmark = pytest.mark.netns


def host_env(host: Host, home: Path) -> dict[str, str]:
    return {"LANCHAT_INTERFACE": "eth0", "LANCHAT_HOME": str(home / host.name)}


class Tmux:
    """One tmux server of our own (its own socket); methods act on session `target`."""

    def __init__(self, socket: Path, target: str = "chat") -> None:
        self.socket = str(socket)
        self.target = target

    def session(self, target: str) -> Tmux:
        """The same server, acting on another session."""
        return Tmux(Path(self.socket), target)

    def __call__(self, *args: str) -> str:
        result = subprocess.run(
            ["tmux", "-S", self.socket, *args], capture_output=True, text=True, timeout=10
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", self.target)

    def joined(self) -> str:
        """The screen with lines wrapped at the edge joined back (capture-pane -J)."""
        return self("capture-pane", "-p", "-J", "-t", self.target)

    def type(self, text: str) -> None:
        self("send-keys", "-t", self.target, "-l", text)

    def enter(self) -> None:
        self("send-keys", "-t", self.target, "Enter")

    def key(self, name: str) -> None:
        self("send-keys", "-t", self.target, name)

    def resize(self, columns: int, rows: int) -> None:
        self("resize-window", "-t", self.target, "-x", str(columns), "-y", str(rows))
        size = self("display-message", "-p", "-t", self.target, "#{pane_width}x#{pane_height}")
        assert size.strip() == f"{columns}x{rows}"

    def say(self, line: str) -> None:
        self.type(line)
        self.enter()

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

    join_in_tmux(tmux, a, tmp_path, "alice")
    tmux.wait_screen(lambda s: "alice>" in s and "bob" in s, timeout=10)

    # A line typed and sent reaches the other host.
    tmux.type("hello from alice")
    tmux.enter()
    tmux.wait_screen(lambda s: "<alice> hello from alice" in s)

    # Half a line typed, then a line arrives from another host...
    tmux.type("typing in prog")
    carol = piped_join(c, tmp_path, "carol")
    assert carol.stdin is not None
    carol.stdin.write("interrupting line from carol\n")
    carol.stdin.flush()
    screen = tmux.wait_screen(  # the line printed, and the prompt redrawn below it
        lambda s: "<carol> interrupting line from carol" in s and "alice>" in nonblank(s)[-1]
    )
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


def join_in_tmux(
    tmux: Tmux, host: Host, home: Path, nick: str, columns: int = 80, rows: int = 24
) -> None:
    """`lanchat join --nick NICK` on `host`, in a new tmux session named tmux.target."""
    env = " ".join(f"{k}={v}" for k, v in host_env(host, home).items())
    command = (
        f"env {env} PROMPT_TOOLKIT_NO_CPR=1 TERM=xterm "
        f"ip netns exec {host.netns} {sys.executable} -m lanchat join --nick {nick}"
        f"; echo EXIT=$?; sleep 30"
    )
    size = ["-x", str(columns), "-y", str(rows)]
    tmux("new-session", "-d", "-s", tmux.target, *size, command)


def piped_join(host: Host, home: Path, nick: str) -> subprocess.Popen[str]:
    """`lanchat join --nick NICK` on `host`, its lines written to stdin by the test."""
    return host.spawn(
        [sys.executable, "-m", "lanchat", "join", "--nick", nick],
        env=host_env(host, home),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def nonblank(screen: str) -> list[str]:
    return [line.rstrip() for line in screen.splitlines() if line.strip()]


def check_prompt(screen: str, prompt: str, typed: str, columns: int) -> None:
    """One prompt, at the bottom, holding exactly what was typed; nothing wider than the pane."""
    lines = nonblank(screen)
    assert lines[-1] == f"{prompt}{typed}".rstrip(), screen
    assert sum(prompt.strip() in line for line in lines) == 1, screen  # no stale prompt copy
    assert all(len(line) <= columns for line in screen.splitlines()), screen


def test_screen_who_completion_history_resize_notice_and_random(
    lab: Lab, tmux: Tmux, tmp_path: Path
) -> None:
    a, b, c = lab.hosts(3)
    alice, bob = tmux, tmux.session("bob")
    join_in_tmux(bob, b, tmp_path, "bob")
    join_in_tmux(alice, a, tmp_path, "alice")
    carol = piped_join(c, tmp_path, "carol")
    assert carol.stdin is not None

    def carol_says(line: str) -> None:
        assert carol.stdin is not None
        carol.stdin.write(line + "\n")
        carol.stdin.flush()

    alice.wait_screen(lambda s: "--> bob joined" in s and "--> carol joined" in s, timeout=10)
    carol_says("/away lunch")
    alice.wait_screen(lambda s: "carol is away: lunch" in s)

    # /who: the roster of the room, with status and last heard.
    alice.say("/who")
    # The table's lines are printed one by one above the prompt: wait for the last.
    screen = alice.wait_screen(lambda s: "#lobby: 3 people" in s and "alice>" in nonblank(s)[-1])
    assert re.search(r"^  alice +online +\(you\)$", screen, re.M), screen
    assert re.search(r"^  bob +online +\d+\.\ds ago$", screen, re.M), screen
    assert re.search(r"^  carol +away: lunch +\d+\.\ds ago$", screen, re.M), screen

    # Tab completes a command, then a room; Up recalls the last line sent.
    alice.type("/wh")
    alice.key("Tab")
    alice.wait_screen(lambda s: nonblank(s)[-1] == "[#lobby] alice> /who")
    alice.type("lo")
    alice.key("Tab")
    alice.wait_screen(lambda s: nonblank(s)[-1] == "[#lobby] alice> /who lobby")
    alice.key("C-u")
    alice.wait_screen(lambda s: nonblank(s)[-1] == "[#lobby] alice>")
    alice.key("Up")
    alice.wait_screen(lambda s: nonblank(s)[-1] == "[#lobby] alice> /who")
    alice.key("C-u")

    # Resize to 60x20 while a line is half typed; a long line arrives meanwhile.
    alice.type("half typed")
    alice.resize(60, 20)
    long_line = "a line longer than sixty columns, so the terminal must wrap it"
    carol_says(long_line)
    alice.wait_screen(lambda _: f"<carol> {long_line}" in alice.joined())
    screen = alice.wait_screen(lambda s: "alice>" in nonblank(s)[-1])  # redrawn below it
    check_prompt(screen, "[#lobby] alice> ", "half typed", 60)
    assert len(screen.splitlines()) == 20
    alice.resize(80, 24)
    carol_says("back to eighty")
    screen = alice.wait_screen(
        lambda s: "<carol> back to eighty" in s and "alice>" in nonblank(s)[-1]
    )
    check_prompt(screen, "[#lobby] alice> ", "half typed", 80)
    alice.say(" and done")
    alice.wait_screen(lambda s: "<alice> half typed and done" in s)

    # A notice stays pinned just above the prompt while chat scrolls past.
    carol_says("/notice fire drill at three")
    alice.wait_screen(lambda s: "NOTICE from carol: fire drill at three" in s)
    carol_says("after the notice")
    screen = alice.wait_screen(
        lambda s: "<carol> after the notice" in s and "alice>" in nonblank(s)[-1]
    )
    lines = nonblank(screen)
    assert "*** NOTICE from carol: fire drill at three ***" in lines[-2], screen
    assert lines[-1] == "[#lobby] alice>", screen

    # /random: alice asks, bob is told and asks too: they pair.
    alice.say("/random")
    alice.wait_screen(  # the line, then the prompt redrawn below it with the new state
        lambda s: (
            "looking for a partner: whoever else types /random" in s
            and nonblank(s)[-1] == "[#lobby, seeking] alice>"
        )
    )
    bob.wait_screen(lambda s: "alice is looking for a partner: /random to pair" in s)
    bob.say("/random")
    bob.wait_screen(lambda s: "*** paired with alice" in s)
    alice.wait_screen(
        lambda s: "*** paired with bob" in s and nonblank(s)[-1] == "[private: bob] alice>"
    )
    alice.say("just us two")
    bob.wait_screen(lambda s: "[dm] <alice> just us two" in s)
    screen = alice.wait_screen(lambda s: "[dm -> bob] just us two (delivered)" in s)
    assert "just us two (sent)" not in screen  # the state changed in place
    bob.say("/leave")
    bob.wait_screen(lambda s: "you left the conversation with alice" in s)
    screen = alice.wait_screen(lambda s: "bob left the conversation" in s)
    alice.wait_screen(lambda s: nonblank(s)[-1] == "[#lobby] alice>")

    for session in (alice, bob):
        session.say("/quit")
        screen = session.wait_screen(lambda s: "EXIT=0" in s, timeout=10)
        assert "Traceback" not in screen
    carol.stdin.close()
    carol.wait(10)
