"""Drive the real `lanchat` command inside the hosts of a `tests.lab.Lab`.

    with Lab() as lab:
        net = LanchatNet(lab, Path(tempfile.mkdtemp()))
        a, b = lab.hosts(2)
        alice, bob = net.listen_all([a, b])
        assert wait_mesh([alice, bob], timeout=5)
        print(measure_discovery(lab))

Every process runs inside a lab host with lanchat's *default* interface choice
(LANCHAT_* variables of the caller are removed, so the safety pin of the unit
tests to ``lo`` does not leak in) and with a LANCHAT_HOME of its own per host,
so each host has its own peer id. Times compared across hosts are the JSON
``time`` fields: every host shares this machine's wall clock.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tests.lab import Host, Lab

__all__ = [
    "AgentProcess",
    "DiscoveryFigures",
    "LanchatNet",
    "Listener",
    "measure_departure",
    "measure_discovery",
    "wait_knows",
    "wait_mesh",
]

LANCHAT = [sys.executable, "-m", "lanchat"]
# Variables a caller may have set that would change what the lab's lanchat does;
# LANCHAT_HOME is set per host instead.
_CLEARED_VARIABLES = (
    "LANCHAT_INTERFACE",
    "LANCHAT_EXCLUDE_INTERFACE",
    "LANCHAT_GROUP",
    "LANCHAT_PORT",
    "LANCHAT_TTL",
    "LANCHAT_NICK",
    "LANCHAT_ROOM",
)
_STOP_GRACE = 5.0  # seconds from SIGTERM to SIGKILL; a graceful exit takes ~0.2 s

Event = dict[str, Any]


def lanchat_argv(*args: str) -> list[str]:
    """The argv running ``lanchat ARGS`` with the caller's LANCHAT_* settings removed."""
    unset = [flag for name in _CLEARED_VARIABLES for flag in ("-u", name)]
    return ["env", *unset, *LANCHAT, *args]


def nick_of(host: Host) -> str:
    """The nickname used for a host's lanchat (not hex, so never a peer-id prefix)."""
    return f"user-{host.name}"


class Listener:
    """One ``lanchat listen --json`` process; its events parsed as they arrive."""

    def __init__(self, host: Host, home: Path, nick: str, extra_args: Sequence[str] = ()) -> None:
        self.host = host
        self.home = home
        self.nick = nick
        home.mkdir(parents=True, exist_ok=True)
        self._stderr_path = home / f"listen-stderr-{time.monotonic_ns()}.txt"
        self._stderr: IO[bytes] = open(self._stderr_path, "wb")  # noqa: SIM115 - closed in stop
        self.spawned_at = time.time()
        self.proc: subprocess.Popen[bytes] = host.spawn(
            lanchat_argv("listen", "--json", "--nick", nick, *extra_args),
            env={"LANCHAT_HOME": str(home)},
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self.events: list[Event] = []
        self.bad_lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def __repr__(self) -> str:
        return f"Listener({self.nick!r} on {self.host.name})"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with contextlib.suppress(ValueError, OSError):  # the stream was closed under us
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", "replace").strip()
                try:
                    event = json.loads(line)
                except ValueError:
                    event = None
                with self._cond:
                    if isinstance(event, dict) and "event" in event:
                        self.events.append(event)
                    elif line:
                        self.bad_lines.append(line)
                    self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    # -------------------------------------------------------------- reading

    def wait_for(self, predicate: Callable[[Event], bool], timeout: float) -> Event | None:
        """The first event (already seen or coming) matching ``predicate``, or None."""
        deadline = time.monotonic() + timeout
        with self._cond:
            checked = 0
            while True:
                for event in self.events[checked:]:
                    if predicate(event):
                        return event
                checked = len(self.events)
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    return None
                self._cond.wait(left)

    def wait_until(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Re-check ``condition`` on every new event until it holds; its last value."""
        deadline = time.monotonic() + timeout
        with self._cond:  # reentrant: condition() may read this listener's events
            while not condition():
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    return condition()
                self._cond.wait(left)
            return True

    def snapshot(self) -> list[Event]:
        with self._cond:
            return list(self.events)

    def of(self, kind: str, peer_id: str | None = None) -> list[Event]:
        """Events of one kind so far, optionally only those about ``peer_id``."""
        return [
            e
            for e in self.snapshot()
            if e["event"] == kind and (peer_id is None or _about(e) == peer_id)
        ]

    def started(self, timeout: float = 10.0) -> Event:
        """The ``started`` line (the node's sockets are open when it is printed)."""
        event = self.wait_for(lambda e: e["event"] == "started", timeout)
        if event is None:
            raise AssertionError(f"{self} did not start: {self.diagnosis()}")
        return event

    @property
    def peer_id(self) -> str:
        return str(self.started()["peer_id"])

    @property
    def port(self) -> int:
        return int(self.started()["port"])

    def known(self) -> set[str]:
        """Peer ids this listener currently knows, replayed from its events."""
        known: set[str] = set()
        for event in self.snapshot():
            if event["event"] in ("peer_joined", "peer_restarted"):
                known.add(_about(event))
            elif event["event"] == "peer_left":
                known.discard(_about(event))
        return known

    def diagnosis(self) -> str:
        """Exit status, stderr tail and event kinds: what a failed assertion should show."""
        with contextlib.suppress(OSError):
            self._stderr.flush()
        try:
            err = self._stderr_path.read_text(errors="replace")[-1500:]
        except OSError:
            err = "?"
        kinds = [e["event"] for e in self.snapshot()]
        return (
            f"{self} exit={self.proc.poll()} events={kinds} bad_lines={self.bad_lines[:5]} "
            f"stderr={err!r}"
        )

    # ------------------------------------------------------------- stopping

    def terminate(self) -> float:
        """Send SIGTERM (a graceful leave); return the wall time just before it."""
        sent = time.time()
        self.proc.send_signal(signal.SIGTERM)
        return sent

    def kill(self) -> float:
        """SIGKILL (no goodbye); return the wall time just before it."""
        sent = time.time()
        self.proc.kill()
        return sent

    def stop(self) -> int | None:
        """End the process (SIGTERM, then SIGKILL), drain its output; return the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(_STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(_STOP_GRACE)
        self._reader.join(_STOP_GRACE)
        self._stderr.close()
        return self.proc.returncode


class AgentProcess(Listener):
    """Any command printing JSON lines like ``lanchat listen --json`` (scripts/bench_agent.py).

    It must print ``started`` with ``peer_id`` first; ``peer_joined``/``peer_left``
    with ``peer_id`` are read by `known`, `wait_mesh` and `joined_at` as for lanchat.
    """

    def __init__(self, host: Host, home: Path, nick: str, argv: Sequence[str]) -> None:
        self.host = host
        self.home = home
        self.nick = nick
        home.mkdir(parents=True, exist_ok=True)
        self._stderr_path = home / f"agent-stderr-{time.monotonic_ns()}.txt"
        self._stderr = open(self._stderr_path, "wb")  # noqa: SIM115 - closed in stop
        self.spawned_at = time.time()
        self.proc = host.spawn(
            python_argv(*argv),
            env={"LANCHAT_HOME": str(home)},
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self.events = []
        self.bad_lines = []
        self._cond = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def __repr__(self) -> str:
        return f"AgentProcess({self.nick!r} on {self.host.name})"


def python_argv(*args: str) -> list[str]:
    """The argv running ``python ARGS`` with the caller's LANCHAT_* settings removed."""
    unset = [flag for name in _CLEARED_VARIABLES for flag in ("-u", name)]
    return ["env", *unset, sys.executable, *args]


def _about(event: Event) -> str:
    """The peer id an event is about ("" if none)."""
    peer = event.get("peer")
    if isinstance(peer, dict):
        return str(peer.get("peer_id", ""))
    return str(event.get("peer_id", ""))


class LanchatNet:
    """Runs lanchat commands in a lab's hosts, one LANCHAT_HOME per host under ``root``."""

    def __init__(self, lab: Lab, root: Path) -> None:
        self.lab = lab
        self.root = root
        self.listeners: list[Listener] = []

    def home(self, host: Host) -> Path:
        return self.root / host.name

    def listen(
        self, host: Host, *extra_args: str, nick: str | None = None, wait: bool = True
    ) -> Listener:
        """Start ``lanchat listen --json`` in ``host``; by default wait for its ``started``."""
        listener = Listener(host, self.home(host), nick or nick_of(host), extra_args)
        self.listeners.append(listener)
        if wait:
            listener.started()
        return listener

    def listen_all(self, hosts: Iterable[Host], *extra_args: str) -> list[Listener]:
        """Start a listener in each host at once, then wait until all have started."""
        listeners = [self.listen(host, *extra_args, wait=False) for host in hosts]
        for listener in listeners:
            listener.started()
        return listeners

    def run(
        self, host: Host, *args: str, timeout: float = 30.0, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``lanchat ARGS`` to completion in ``host``, with a home apart from the listener's."""
        home = self.root / f"{host.name}-run"
        return host.run(
            lanchat_argv(*args),
            timeout=timeout,
            check=False,
            stdin=stdin,
            env={"LANCHAT_HOME": str(home)},
        )

    def peers(self, host: Host, *args: str) -> list[dict[str, Any]]:
        """``lanchat peers --json`` in ``host`` (default wait unless ``args`` says otherwise)."""
        result = self.run(host, "peers", "--json", *args)
        assert result.returncode == 0, f"peers failed: {result.returncode} {result.stderr}"
        peers = json.loads(result.stdout)
        assert isinstance(peers, list)
        return peers

    def close(self) -> None:
        """Stop every listener: SIGTERM all at once, then wait for each."""
        for listener in self.listeners:
            if listener.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    listener.proc.send_signal(signal.SIGTERM)
        for listener in self.listeners:
            listener.stop()
        self.listeners.clear()


def wait_mesh(listeners: Sequence[Listener], timeout: float) -> bool:
    """Wait until every listener knows every other one (by peer id); False on timeout."""
    deadline = time.monotonic() + timeout
    for listener in listeners:
        others = {other.peer_id for other in listeners if other is not listener}
        if not wait_knows(listener, others, deadline - time.monotonic()):
            return False
    return True


def wait_knows(listener: Listener, peer_ids: set[str], timeout: float) -> bool:
    """Wait until ``listener`` knows (at least) these peer ids; False on timeout."""
    return listener.wait_until(lambda: peer_ids <= listener.known(), timeout)


def joined_at(listener: Listener, peer_id: str) -> float | None:
    """JSON time of the first peer_joined for ``peer_id`` in ``listener``, or None."""
    events = listener.of("peer_joined", peer_id)
    return float(events[0]["time"]) if events else None


@dataclass(frozen=True)
class DiscoveryFigures:
    """Discovery times in seconds, from the JSON ``time`` of lanchat's own events.

    ``mesh``: hosts-1 listeners started together until each knows all others,
    from the latest ``started``. ``newcomer_seen``/``newcomer_sees``: one more
    listener joins the settled mesh; per other host, from the newcomer's
    ``started`` to the peer_joined on either side. ``startup``: spawn to
    ``started`` of the newcomer (Python start-up, not the protocol).
    """

    hosts: int
    mesh: float
    newcomer_seen: tuple[float, ...]
    newcomer_sees: tuple[float, ...]
    startup: float

    @property
    def seen_by_all(self) -> float:
        return max(self.newcomer_seen)

    @property
    def sees_all(self) -> float:
        return max(self.newcomer_sees)

    def summary(self) -> str:
        return (
            f"discovery, {self.hosts} hosts: mesh of {self.hosts - 1} in {self.mesh * 1000:.0f} ms;"
            f" newcomer seen by all in {self.seen_by_all * 1000:.0f} ms,"
            f" sees all in {self.sees_all * 1000:.0f} ms"
            f" (start-up {self.startup * 1000:.0f} ms)"
        )


def measure_discovery(
    lab: Lab, hosts: int = 5, timeout: float = 10.0, loss: float = 0.0
) -> DiscoveryFigures:
    """Add ``hosts`` hosts to ``lab`` and measure lanchat discovery between them.

    hosts-1 listeners start at once and form a mesh; then the last host's listener
    starts. With ``loss``, every host drops that fraction of inbound UDP. Raises
    AssertionError if discovery does not finish within ``timeout``.
    """
    if hosts < 2:
        raise ValueError("discovery needs at least two hosts")
    root = Path(tempfile.mkdtemp(prefix="lanchat-discovery-"))
    net = LanchatNet(lab, root)
    try:
        *first, last = lab.hosts(hosts)
        if loss:
            for host in (*first, last):
                host.set_loss(inbound=loss)
        settled = net.listen_all(first)
        if not wait_mesh(settled, timeout):
            raise AssertionError(f"no mesh: {[x.diagnosis() for x in settled]}")
        started = max(float(x.started()["time"]) for x in settled)
        mesh = max(
            float(joined_at(x, y.peer_id) or 0.0) for x in settled for y in settled if x is not y
        )
        newcomer = net.listen(last)
        begin = float(newcomer.started()["time"])
        if not wait_mesh([*settled, newcomer], timeout):
            raise AssertionError(f"newcomer not discovered: {newcomer.diagnosis()}")
        seen = tuple(float(joined_at(x, newcomer.peer_id) or 0.0) - begin for x in settled)
        sees = tuple(float(joined_at(newcomer, x.peer_id) or 0.0) - begin for x in settled)
        return DiscoveryFigures(
            hosts=hosts,
            mesh=mesh - started,
            newcomer_seen=seen,
            newcomer_sees=sees,
            startup=begin - newcomer.spawned_at,
        )
    finally:
        net.close()
        shutil.rmtree(root, ignore_errors=True)


def measure_departure(lab: Lab, hosts: int = 3, timeout: float = 15.0) -> dict[str, float]:
    """Seconds until the others notice a departure: SIGTERM -> bye; kill -9 -> unreachable, gone.

    Each figure is the slowest observer's, from the moment the signal was sent.
    """
    root = Path(tempfile.mkdtemp(prefix="lanchat-departure-"))
    net = LanchatNet(lab, root)
    try:
        listeners = net.listen_all(lab.hosts(hosts))
        if not wait_mesh(listeners, timeout):
            raise AssertionError("no mesh")
        leaver, victim, *survivors = listeners
        sent = leaver.terminate()
        bye = _slowest([victim, *survivors], "peer_left", leaver.peer_id, sent, timeout)
        killed = victim.kill()
        unreachable = _slowest(survivors, "peer_unreachable", victim.peer_id, killed, timeout)
        gone = _slowest(survivors, "peer_left", victim.peer_id, killed, timeout)
        return {"bye": bye, "unreachable": unreachable, "removed": gone}
    finally:
        net.close()
        shutil.rmtree(root, ignore_errors=True)


def _slowest(
    observers: Sequence[Listener], kind: str, peer_id: str, since: float, timeout: float
) -> float:
    times = []
    for observer in observers:
        event = observer.wait_for(
            lambda e: e["event"] == kind and e.get("peer", {}).get("peer_id") == peer_id, timeout
        )
        if event is None:
            raise AssertionError(f"{observer!r} never saw {kind} of {peer_id}")
        times.append(float(event["time"]) - since)
    return max(times)


if __name__ == "__main__":  # pragma: no cover - a quick manual run, as root
    with Lab() as _lab:
        print(measure_discovery(_lab).summary())
