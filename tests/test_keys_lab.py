"""Private groups on a namespace LAN: only one key's holders see each other; the wire shows nothing.

Four hosts on one bridge: a and b run `lanchat listen` with key K1, c without a key,
d with key K2. tcpdump on the bridge (in the lab's switch namespace, where every
frame passes) records what an eavesdropper on the LAN would see.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from lanchat.config import DEFAULT_GROUP
from lanchat.seal import read_key_file
from tests.lab import Host, Lab

pytestmark = pytest.mark.netns

LANCHAT = [sys.executable, "-m", "lanchat"]
WHY_SEALED = "sealed with a key this node does not have"
WHY_UNKNOWN_KEY = "sealed with an unknown key"
WHY_UNSEALED = "without a key (this node requires one)"
# Each source of key mismatches is reported at once (then every 10 s): a few
# seconds cover process start-up and the first datagrams.
UNAUTH_WAIT = 4.0

Event = dict[str, Any]


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1")


def _which_tcpdump() -> str | None:
    return shutil.which("tcpdump") or shutil.which("tcpdump", path="/usr/sbin:/sbin:/usr/bin")


@pytest.fixture(scope="session")
def tcpdump() -> str:
    """tcpdump's path, installed with apt-get if missing (skip if that fails; fail under CI)."""
    found = _which_tcpdump()
    if found is not None:
        return found
    problem = "tcpdump is not installed"
    if os.geteuid() != 0:
        problem += " and installing it needs root"
    else:
        try:
            result = subprocess.run(
                ["apt-get", "install", "-y", "-qq", "tcpdump"],
                capture_output=True,
                text=True,
                timeout=300,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                check=False,
            )
            if result.returncode != 0:
                problem = f"apt-get install -y -qq tcpdump failed: {result.stderr.strip()[-300:]}"
        except (OSError, subprocess.TimeoutExpired) as exc:
            problem = f"apt-get install -y -qq tcpdump failed: {exc}"
        found = _which_tcpdump()
        if found is not None:
            return found
    if _in_ci():
        pytest.fail(f"CI=true, yet {problem}", pytrace=False)
    pytest.skip(f"{problem}: cannot check what the wire shows")


class Capture:
    """tcpdump writing every UDP frame crossing one lab LAN's bridge to a pcap file."""

    def __init__(self, lab: Lab, tcpdump: str, path: Path) -> None:
        self.path = path
        ip = shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin") or "ip"
        bridge = lab.lan("lan1").bridge
        self.proc = subprocess.Popen(
            # -Z root: keep the privileges needed to write into a root-only tmp dir.
            [ip, "netns", "exec", lab.switch_netns, tcpdump, "-i", bridge, "-n", "-U",
             "--immediate-mode", "-Z", "root", "-w", str(path), "udp"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 10
        said = b""
        while b"listening on" not in said:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stderr], [], [], max(0.0, left))
            chunk = os.read(self.proc.stderr.fileno(), 4096) if ready else b""
            if not chunk:
                self.stop()
                raise AssertionError(f"tcpdump did not start: {said.decode(errors='replace')}")
            said += chunk

    def stop(self) -> bytes:
        """End tcpdump (it flushes the file on SIGTERM) and return the pcap's bytes."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return self.path.read_bytes() if self.path.exists() else b""


def udp_datagrams(pcap: bytes) -> list[tuple[str, str, bytes]]:
    """(source ip, destination ip, payload) of every IPv4 UDP frame in an Ethernet pcap."""
    endian = "<" if pcap[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    assert struct.unpack(endian + "I", pcap[20:24])[0] == 1, "not an Ethernet capture"
    out = []
    offset = 24
    while offset + 16 <= len(pcap):
        caplen = struct.unpack(endian + "I", pcap[offset + 8 : offset + 12])[0]
        frame = pcap[offset + 16 : offset + 16 + caplen]
        offset += 16 + caplen
        if frame[12:14] != b"\x08\x00" or len(frame) < 34 or frame[23] != 17:
            continue
        packet = frame[14:]
        header = (packet[0] & 15) * 4
        total = struct.unpack("!H", packet[2:4])[0]
        src, dst = socket.inet_ntoa(packet[12:16]), socket.inet_ntoa(packet[16:20])
        out.append((src, dst, packet[header + 8 : total]))
    return out


class Listener:
    """One `lanchat listen --json` on a lab host, its JSON lines read as they arrive."""

    def __init__(self, host: Host, home: Path, nick: str, *args: str) -> None:
        self.host = host
        self.nick = nick
        self._stderr_path = home / f"{host.name}-listen-stderr.txt"
        home.mkdir(parents=True, exist_ok=True)
        self._stderr: IO[bytes] = open(self._stderr_path, "wb")  # noqa: SIM115 - closed in close
        self.proc: subprocess.Popen[bytes] = host.spawn(
            [*LANCHAT, "listen", "--json", "--nick", nick, *args],
            env=host_env(host, home),
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self.events: list[Event] = []
        self._cond = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for raw in self.proc.stdout:
                try:
                    event = json.loads(raw)
                except ValueError:
                    continue
                with self._cond:
                    self.events.append(event)
                    self._cond.notify_all()
        except (ValueError, OSError):
            pass  # the stream was closed under us at lab close
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait_until(self, condition: Callable[[list[Event]], bool], timeout: float) -> bool:
        """Re-check condition(events) on every new line until it holds or `timeout` passes."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not condition(self.events):
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    return condition(self.events)
                self._cond.wait(left)
            return True

    def snapshot(self) -> list[Event]:
        with self._cond:
            return list(self.events)

    def diagnosis(self) -> str:
        self._stderr.flush()
        err = self._stderr_path.read_text(errors="replace")[-1000:]
        return f"{self.nick}: exit={self.proc.poll()} events={self.snapshot()} stderr={err!r}"

    def close(self) -> None:
        self._stderr.close()


def host_env(host: Host, home: Path, suffix: str = "") -> dict[str, str]:
    return {"LANCHAT_INTERFACE": "eth0", "LANCHAT_HOME": str(home / f"{host.name}{suffix}")}


def joined(nick: str) -> Callable[[list[Event]], bool]:
    return lambda events: any(
        e["event"] == "peer_joined" and e["peer"]["nick"] == nick for e in events
    )


def reported(address: str, why: str) -> Callable[[list[Event]], bool]:
    return lambda events: any(
        e["event"] == "unauthenticated_received"
        and e["address"] == address
        and e["why"] == why
        and e["count"] >= 1
        for e in events
    )


@pytest.fixture
def listeners() -> Iterator[list[Listener]]:
    made: list[Listener] = []
    yield made
    for listener in made:
        listener.close()


def test_keyed_hosts_see_only_each_other_and_the_wire_shows_nothing(
    lab: Lab,
    tcpdump: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    listeners: list[Listener],
) -> None:
    for name in ("LANCHAT_KEY", "LANCHAT_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)  # the hosts' keys are exactly those given
    a, b, c, d = lab.hosts(4)
    token = uuid.uuid4().hex[:8]  # no string searched for below can be there by chance
    nick = {h.name: f"{h.name}user{token}" for h in (a, b, c, d)}
    tool_nick = f"tool{token}"
    secret_room = f"hush{token}"
    direct_text = f"SECRET-TEXT-123-{token}"
    notice_text = f"SECRET-NOTICE-{token}"
    control_text = f"PLAIN-CONTROL-{token}"

    k1, k2 = tmp_path / "k1.key", tmp_path / "k2.key"
    for path in (k1, k2):
        made = subprocess.run(
            [*LANCHAT, "keygen", str(path)], capture_output=True, text=True, timeout=30
        )
        assert made.returncode == 0, made.stderr
    assert read_key_file(k1) != read_key_file(k2)

    capture = Capture(lab, tcpdump, tmp_path / "lan1.pcap")
    try:
        keys = {"a": ["--key-file", str(k1)], "b": ["--key-file", str(k1)], "c": [],
                "d": ["--key-file", str(k2)]}  # fmt: skip
        rooms = {"a": ["--room", secret_room], "b": ["--room", secret_room], "c": [], "d": []}
        home = tmp_path / "home"
        by_name = {
            h.name: Listener(h, home, nick[h.name], *keys[h.name], *rooms[h.name])
            for h in (a, b, c, d)
        }
        listeners.extend(by_name.values())
        la, lb, lc, ld = (by_name[n] for n in "abcd")
        assert la.wait_until(joined(nick["b"]), 15), la.diagnosis()
        assert lb.wait_until(joined(nick["a"]), 5), lb.diagnosis()

        def lanchat(host: Host, *args: str) -> subprocess.CompletedProcess[str]:
            argv = [*LANCHAT, *args]
            return host.run(argv, timeout=30, check=False, env=host_env(host, home, "-tool"))

        # A direct message and a notice from a, with K1.
        sent = lanchat(a, "send", "--key-file", str(k1), "--nick", tool_nick,
                       "--to", nick["b"], direct_text)  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        assert sent.stdout.startswith(f"delivered to {nick['b']} ")
        noticed = lanchat(a, "notice", "--key-file", str(k1), "--nick", tool_nick, notice_text)
        assert noticed.returncode == 0, noticed.stderr
        assert "acknowledged by 2 of 2 known peers" in noticed.stdout
        for listener in (la, lb):
            assert listener.wait_until(
                lambda events: any(
                    e["event"] == "notice_received" and e["text"] == notice_text for e in events
                ),
                5,
            ), listener.diagnosis()
        directs = [e for e in lb.snapshot() if e["event"] == "direct_received"]
        assert [(e["nick"], e["text"]) for e in directs] == [(tool_nick, direct_text)]

        # Who each key sees: a's listener and b with K1; c's own listener alone without a key.
        for host, args, expected in (
            (a, ["--key-file", str(k1)], {nick["a"], nick["b"]}),
            (c, [], {nick["c"]}),
            (d, ["--key-file", str(k2)], {nick["d"]}),
        ):
            listed = lanchat(host, "peers", "--json", "--wait", "0.5", *args)
            assert listed.returncode == 0, listed.stderr
            assert {p["nick"] for p in json.loads(listed.stdout)} == expected, host.name

        # The control: a plain direct message from d's host (no key) to c crosses the bridge.
        control = lanchat(d, "send", "--nick", tool_nick, "--to", nick["c"], control_text)
        assert control.returncode == 0, control.stderr

        # Every mismatch is reported, naming the source address.
        expected_reports = [
            (lc, a, WHY_SEALED), (lc, b, WHY_SEALED), (lc, d, WHY_SEALED),
            (ld, a, WHY_UNKNOWN_KEY), (ld, b, WHY_UNKNOWN_KEY), (ld, c, WHY_UNSEALED),
            (la, c, WHY_UNSEALED), (la, d, WHY_UNKNOWN_KEY),
            (lb, c, WHY_UNSEALED), (lb, d, WHY_UNKNOWN_KEY),
        ]  # fmt: skip
        deadline = time.monotonic() + UNAUTH_WAIT
        for listener, source, why in expected_reports:
            left = max(0.0, deadline - time.monotonic())
            assert listener.wait_until(reported(source.address, why), left), (
                f"{listener.nick} never reported {source.name} ({why}): {listener.diagnosis()}"
            )
    finally:
        pcap = capture.stop()

    # c and d saw nothing of a and b: no event but mismatch reports (and c's control DM).
    ids = {la.snapshot()[0]["peer_id"], lb.snapshot()[0]["peer_id"]}
    for listener, allowed in ((lc, {"direct_received"}), (ld, set())):
        events = listener.snapshot()
        kinds = {e["event"] for e in events}
        assert kinds <= {"started", "unauthenticated_received", *allowed}, listener.diagnosis()
        text = json.dumps(events)
        assert not any(s in text for s in (nick["a"], nick["b"], *ids)), listener.diagnosis()
    assert [e["text"] for e in lc.snapshot() if e["event"] == "direct_received"] == [control_text]
    # ...and a and b saw nothing of c and d.
    for listener in (la, lb):
        text = json.dumps(listener.snapshot())
        assert nick["c"] not in text and nick["d"] not in text and control_text not in text

    # What the wire shows.
    secrets = [nick["a"], nick["b"], nick["d"], secret_room, direct_text, notice_text]
    leaked = [s for s in secrets if s.encode() in pcap]
    assert leaked == [], f"readable on the wire: {leaked}"
    assert nick["c"].encode() in pcap, "the capture missed c's plain heartbeats"
    assert control_text.encode() in pcap, "the capture missed a plain unicast datagram"
    datagrams = [(s, t, p) for s, t, p in udp_datagrams(pcap) if p[:3] == b"LC\x01"]
    by_source: dict[str, set[int]] = {}
    for src, _, payload in datagrams:
        by_source.setdefault(src, set()).add(payload[3] & 1)
    # Everything a, b and d send (listeners and one-shot tools alike) is sealed; c's is not.
    assert by_source == {a.address: {1}, b.address: {1}, c.address: {0}, d.address: {0, 1}}
    # d sent plain only from its unkeyed control tool: its queries and the message to c.
    d_plain = {t for s, t, p in datagrams if s == d.address and not p[3] & 1}
    assert d_plain == {DEFAULT_GROUP, c.address}
    assert any(s == a.address and t == b.address for s, t, _ in datagrams), "no unicast a -> b"
