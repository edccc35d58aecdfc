"""A hostile host on a lab LAN: datagrams with forged source addresses, and a victim that counts.

Tooling of tests/test_attack_lab.py (issue 14). It runs only inside `tests.lab` namespaces:
the attacker refuses the root namespace and any address outside the lab's 10.213.0.0/16 and
10.214.0.0/16 (besides the lanchat group), and every send loop is bounded by count and time.

    spec = Spec(m.address, [Forged(bob.address, 40000, DEFAULT_GROUP, DEFAULT_PORT, data)])
    report = send(m, spec, tmp / "spec.json")   # python -m tests.attack send, in host m
    counter = ByteCounter(v, [v.address])       # nftables: UDP bytes v receives, per address
    counter.read()                              # {address: bytes}
    catcher = Catcher(m, tmp / "caught.json")   # every UDP datagram to m's own address

The sender builds the IPv4 and UDP headers itself (a raw socket with IP_HDRINCL), so a
datagram can claim any source address of the lab. `Talker` is a `lanchat join` fed line by
line: a real peer that chats and sends direct messages on cue.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import random
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import msgpack

from lanchat import codec, netif
from lanchat.config import DEFAULT_GROUP, DEFAULT_PORT, DEFAULT_ROOM
from tests.lab import Host

__all__ = [
    "IP_UDP_HEADERS",
    "ByteCounter",
    "Catcher",
    "Forged",
    "Report",
    "Spec",
    "Talker",
    "every_type",
    "ip_udp_packet",
    "mutate",
    "record",
    "send",
    "start_send",
]

# Where a forged datagram may claim to come from or go to: the lab's LANs (tests.lab uses
# 10.213.N.0/24; a test may add 10.214.0.0/16 inside one host) and the lanchat group.
_LAB_NETWORKS = (ipaddress.ip_network("10.213.0.0/16"), ipaddress.ip_network("10.214.0.0/16"))
MAX_DATAGRAMS = 200_000  # per send, whatever the spec asks: a few seconds at full speed
MAX_SECONDS = 30.0  # per send or capture, whatever the spec asks
IP_UDP_HEADERS = 28  # IPv4 (no options) and UDP header bytes: nftables counts them too
_REPO = str(Path(__file__).resolve().parent.parent)
_COUNTER_TABLE = "lanchat_attack_count"
_MARGIN = 30.0  # seconds a helper process may take beyond its own bound (start-up)


def _allowed(address: str, *, destination: bool) -> bool:
    if destination and address == DEFAULT_GROUP:
        return True
    ip = ipaddress.ip_address(address)
    return any(ip in network for network in _LAB_NETWORKS)


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ip_udp_packet(
    src: str, sport: int, dst: str, dport: int, payload: bytes, ttl: int = 1
) -> bytes:
    """An IPv4 packet (TTL 1: it stays on the link) carrying one UDP datagram, checksums set."""
    source, target = socket.inet_aton(src), socket.inet_aton(dst)
    length = 8 + len(payload)
    pseudo = source + target + struct.pack("!BBH", 0, socket.IPPROTO_UDP, length)
    udp_sum = _checksum(pseudo + struct.pack("!HHHH", sport, dport, length, 0) + payload)
    udp = struct.pack("!HHHH", sport, dport, length, udp_sum or 0xFFFF) + payload
    fields = [0x45, 0, 20 + length, 0, 0x4000, ttl, socket.IPPROTO_UDP, 0, source, target]
    header = struct.pack("!BBHHHBBH4s4s", *fields)
    fields[7] = _checksum(header)
    return struct.pack("!BBHHHBBH4s4s", *fields) + udp


@dataclass(frozen=True)
class Forged:
    """One datagram to send: claimed source (ip, port), destination (ip, port), UDP payload."""

    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes


@dataclass
class Spec:
    """What the attacker sends: `datagrams` in turn for `repeat` rounds, at most `rate` a second.

    `rate` 0 sends as fast as the loop goes. `seconds` bounds the run, and so do
    MAX_DATAGRAMS and MAX_SECONDS. `own_address` picks the interface for multicast.
    `mutate_seed`: send a fresh `mutate`d copy of each datagram instead of the datagram.
    """

    own_address: str
    datagrams: list[Forged]
    repeat: int = 1
    rate: float = 0.0
    seconds: float = 10.0
    mutate_seed: int | None = None

    def to_json(self) -> str:
        data = asdict(self)
        data["datagrams"] = [{**d, "payload": d["payload"].hex()} for d in data["datagrams"]]
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> Spec:
        data = json.loads(text)
        raw = data.pop("datagrams")
        datagrams = [Forged(**{**d, "payload": bytes.fromhex(d["payload"])}) for d in raw]
        return cls(datagrams=datagrams, **data)


@dataclass(frozen=True)
class Report:
    """What a send did: datagrams and IP bytes (headers included) sent, per claimed source too."""

    sent: int
    ip_bytes: int
    seconds: float
    errors: int = 0
    by_source: dict[str, int] = field(default_factory=dict)


def _run_spec(spec: Spec) -> Report:
    """Send what `spec` says from this host (a lab namespace; needs CAP_NET_RAW)."""
    for d in spec.datagrams:
        if not (_allowed(d.src, destination=False) and _allowed(d.dst, destination=True)):
            raise SystemExit(f"refused: {d.src} -> {d.dst} is outside the lab")
    rng = random.Random(spec.mutate_seed)
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)  # IP_HDRINCL
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(spec.own_address))
    packets = [ip_udp_packet(d.src, d.sport, d.dst, d.dport, d.payload) for d in spec.datagrams]
    limit = min(MAX_DATAGRAMS, spec.repeat * len(packets))
    seconds = min(MAX_SECONDS, spec.seconds)
    sent = ip_bytes = errors = 0
    by_source: dict[str, int] = {}
    start = time.monotonic()
    try:
        for i in range(limit):
            d = spec.datagrams[i % len(packets)]
            packet = packets[i % len(packets)]
            if spec.mutate_seed is not None:
                packet = ip_udp_packet(d.src, d.sport, d.dst, d.dport, mutate(d.payload, rng))
            if spec.rate > 0 and (ahead := i / spec.rate - (time.monotonic() - start)) > 0:
                time.sleep(ahead)
            if i % 64 == 0 and time.monotonic() - start >= seconds:
                break
            try:
                sock.sendto(packet, (d.dst, 0))
            except OSError:
                errors += 1  # a full socket buffer at full speed: not sent, not counted
                continue
            sent += 1
            ip_bytes += len(packet)
            by_source[d.src] = by_source.get(d.src, 0) + len(packet)
    finally:
        sock.close()
    return Report(sent, ip_bytes, time.monotonic() - start, errors, by_source)


def _outside_lab() -> list[str]:
    """This namespace's IPv4 addresses that are no lab host's: [] inside a lab host."""
    return [
        net.address
        for info in netif.read_interfaces()
        for net in info.ipv4
        if not info.loopback and not _allowed(net.address, destination=False)
    ]


def _argv(*args: str) -> list[str]:
    return ["env", f"PYTHONPATH={_REPO}", sys.executable, "-m", "tests.attack", *args]


def start_send(host: Host, spec: Spec, spec_path: Path) -> subprocess.Popen[str]:
    """Start sending `spec` from `host` in the background; `finish` waits for its report."""
    spec_path.write_text(spec.to_json())
    return host.spawn(_argv("send", str(spec_path)), stdout=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str]) -> Report:
    """The report of a `start_send` process."""
    out, _ = proc.communicate(timeout=MAX_SECONDS + _MARGIN)
    assert proc.returncode == 0, f"the attacker failed: exit {proc.returncode}"
    return Report(**json.loads(out))


def send(host: Host, spec: Spec, spec_path: Path) -> Report:
    """Send `spec` from `host` and return the report."""
    return finish(start_send(host, spec, spec_path))


# ------------------------------------------------------------ mutation (storm)


def _odd_value(rng: random.Random) -> Any:
    return rng.choice(
        [-1, 0, 2**63, 2**64 - 1, -(2**63), 1.5, None, True, "", "x" * 200, "\x1b]0;x\x07",
         b"", b"\xff" * 9, [], [1, 2], {"a": 1}, rng.getrandbits(64)]
    )  # fmt: skip


def mutate(data: bytes, rng: random.Random) -> bytes:
    """A hostile variant of a datagram: bit flips, a truncation, a changed field or type."""
    choice = rng.randrange(5)
    if choice == 0:  # flip 1-3 bits
        out = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        return bytes(out)
    if choice == 1:  # truncate
        return data[: rng.randrange(len(data))]
    try:
        body = msgpack.unpackb(data[len(codec.HEADER) :], raw=False)
    except Exception:  # not ours, or sealed: flip a byte instead
        return data[:-1] + bytes([data[-1] ^ 0xFF]) if data else data
    if not isinstance(body, list) or not body:
        return data
    if choice == 2:  # swap the type: the same fields read as another message
        body[0] = rng.choice([*range(17), 255, -1])
    elif choice == 3:  # one field (never the sender id: that would be another peer) made odd
        index = rng.choice([i for i in range(len(body)) if i != 1] or [0])
        body[index] = _odd_value(rng)
    else:  # fields dropped or added
        body = body[: rng.randrange(1, len(body) + 1)] + [_odd_value(rng)] * rng.randrange(3)
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return (codec.HEADER + packed)[: codec.MAX_DATAGRAM + 100]


# --------------------------------------------------------- listening in a host


def _capture(seconds: float, out: str, group: bool) -> None:
    """Group datagrams (group=True) or every UDP datagram to this host (raw socket) for a while."""
    got: list[tuple[str, int, str]] = []
    if group:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((DEFAULT_GROUP, DEFAULT_PORT))
        mreq = socket.inet_aton(DEFAULT_GROUP) + socket.inet_aton("0.0.0.0")
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    end = time.monotonic() + min(seconds, MAX_SECONDS)
    print("ready", flush=True)
    while (left := end - time.monotonic()) > 0 and len(got) < MAX_DATAGRAMS:
        sock.settimeout(left)
        try:
            data, addr = sock.recvfrom(65536)
        except TimeoutError:
            break
        if group:
            got.append((addr[0], DEFAULT_PORT, data.hex()))
            continue
        header = (data[0] & 15) * 4
        dport = struct.unpack("!H", data[header + 2 : header + 4])[0]
        got.append((socket.inet_ntoa(data[12:16]), dport, data[header + 8 :].hex()))
    Path(out).write_text(json.dumps(got))


class Catcher:
    """Records in `host`, for at most `seconds`, every UDP datagram to it (or the group's).

    `group=False`: a raw socket sees each UDP datagram delivered to the host, whether
    anything listens on its port or not. `caught()` stops it and returns
    (source ip, destination port, payload) of each.
    """

    def __init__(self, host: Host, out: Path, seconds: float, *, group: bool = False) -> None:
        self.out = out
        argv = _argv("capture", str(seconds), str(out), "group" if group else "host")
        self.proc: subprocess.Popen[str] = host.spawn(argv, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready", "the catcher did not start"

    def caught(self) -> list[tuple[str, int, bytes]]:
        self.proc.communicate(timeout=MAX_SECONDS + _MARGIN)
        return [
            (src, port, bytes.fromhex(data)) for src, port, data in json.loads(self.out.read_text())
        ]


def record(host: Host, seconds: float, out: Path) -> list[tuple[str, bytes]]:
    """(source ip, payload) of every group datagram heard in `host` for `seconds`."""
    return [(src, data) for src, _, data in Catcher(host, out, seconds, group=True).caught()]


def _nft() -> str:
    found = shutil.which("nft") or shutil.which("nft", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if found is None:
        raise RuntimeError("nft not found: install nftables")
    return found


class ByteCounter:
    """nftables counters in `host`'s namespace: UDP bytes (IP headers included) to each address.

    Counted on the input hook, so whatever reaches the host's stack counts, whether
    anything listens or not. `host` is a victim that runs no lanchat.
    """

    def __init__(self, host: Host, addresses: Sequence[str]) -> None:
        self.host = host
        rules = "\n".join(
            f'    ip daddr {a} meta l4proto udp counter comment "{a}"' for a in addresses
        )
        script = (
            f"table ip {_COUNTER_TABLE} {{\n  chain input {{\n"
            f"    type filter hook input priority -300; policy accept;\n{rules}\n  }}\n}}\n"
        )
        host.run([_nft(), "-f", "-"], timeout=15, stdin=script)

    def read(self) -> dict[str, int]:
        """Bytes received so far, per address."""
        out = self.host.run([_nft(), "-j", "list", "table", "ip", _COUNTER_TABLE], timeout=15)
        found: dict[str, int] = {}
        for item in json.loads(out.stdout)["nftables"]:
            rule = item.get("rule")
            if rule is not None:
                counter = next(e["counter"] for e in rule["expr"] if "counter" in e)
                found[str(rule["comment"])] = int(counter["bytes"])
        return found


# ------------------------------------------------------------------ datagrams


def every_type(
    sender: bytes, instance: int, uport: int, target: bytes, target_instance: int
) -> dict[str, bytes]:
    """One valid datagram of every message type, as `sender` (Nack and Unpair aim at `target`)."""
    room = DEFAULT_ROOM
    entry = codec.RecountEntry(target, target_instance, 1, "ghost", 10, "hi")
    messages: dict[str, codec.Message] = {
        "Beat": codec.Beat(sender, instance, "ghost", "h", uport, "online", "", (room,), 0, 1000),
        "Query": codec.Query(sender, instance, uport),
        "Bye": codec.Bye(sender, instance),
        "Chat": codec.Chat(sender, instance, 1, "ghost", room, "hi"),
        "Notice": codec.Notice(sender, instance, 1, "ghost", "hi", uport),
        "Direct": codec.Direct(sender, instance, 1, "ghost", "hi"),
        "Ack": codec.Ack(sender, instance, codec.T_DIRECT, 1, 1),
        "Ping": codec.Ping(sender, instance, 1),
        "Pong": codec.Pong(sender, instance, 1),
        "Nack": codec.Nack(sender, instance, target, target_instance, ((1, 1),)),
        "Gone": codec.Gone(sender, instance, ((1, 1),)),
        "Recall": codec.Recall(sender, instance, room, 3_600_000, 50, 1),
        "Recount": codec.Recount(sender, instance, 1, room, (entry,)),
        "Seek": codec.Seek(sender, instance, 1),
        "Pair": codec.Pair(sender, instance, codec.PAIR_PROPOSE, 1, 1),
        "Unpair": codec.Unpair(sender, instance, target, 1, codec.UNPAIR_END),
    }
    return {name: codec.encode(msg) for name, msg in messages.items()}


# ------------------------------------------------------------- a real peer


class Talker:
    """`lanchat join` in a host, reading lines from a pipe: it says what `say` gives it."""

    def __init__(self, host: Host, home: Path, nick: str, argv: Sequence[str]) -> None:
        self.host = host
        self.nick = nick
        home.mkdir(parents=True, exist_ok=True)
        self.out_path = home / f"join-{nick}.out"
        self.err_path = home / f"join-{nick}.err"
        self._out: IO[bytes] = open(self.out_path, "wb")  # noqa: SIM115 - closed in close
        self._err: IO[bytes] = open(self.err_path, "wb")  # noqa: SIM115 - closed in close
        self.proc: subprocess.Popen[bytes] = host.spawn(
            [*argv, "join", "--nick", nick, "--colour", "never"],
            env={"LANCHAT_HOME": str(home)},
            stdin=subprocess.PIPE,
            stdout=self._out,
            stderr=self._err,
        )

    def __repr__(self) -> str:
        return f"Talker({self.nick!r} on {self.host.name})"

    def say(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def errors(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait_output(self, text: str, timeout: float) -> bool:
        """Whether `text` shows in the output within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if time.monotonic() >= deadline or self.proc.poll() is not None:
                return text in self.output()
            time.sleep(0.05)
        return True

    def close(self, timeout: float = 10.0) -> int | None:
        """End of input: the session settles and exits (killed past `timeout`)."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)
        self._out.close()
        self._err.close()
        return self.proc.returncode


def main(argv: Sequence[str] | None = None) -> int:
    """``send SPEC`` or ``capture SECONDS OUT group|host``, inside a lab host's namespace."""
    parser = argparse.ArgumentParser(prog="tests.attack")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("send").add_argument("spec")
    capture = commands.add_parser("capture")
    capture.add_argument("seconds", type=float)
    capture.add_argument("out")
    capture.add_argument("where", choices=["group", "host"])
    args = parser.parse_args(argv)
    outside = _outside_lab()
    if outside:
        raise SystemExit(f"refused: this is no lab host ({outside} are not lab addresses)")
    if args.command == "send":
        print(json.dumps(asdict(_run_spec(Spec.from_json(Path(args.spec).read_text())))))
    else:
        _capture(args.seconds, args.out, args.where == "group")
    return 0


if __name__ == "__main__":
    sys.exit(main())
