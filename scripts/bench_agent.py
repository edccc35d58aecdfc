#!/usr/bin/env python3
"""Processes that scripts/bench runs inside namespace-lab hosts; each prints JSON lines.

    bench_agent.py pyre --name a                       # a Pyre node: ENTER/EXIT as events
    bench_agent.py pyre --name s --shout 20000 --peers 2   # ... that floods its group
    bench_agent.py pyre --name r --expect 20000        # ... that counts SHOUTs
    bench_agent.py lanchat-send --count 20000 --peers 2 --rate 40000
    bench_agent.py lanchat-recv --expect 20000

Every line is a JSON object with "event" and "time" (wall clock): "started"
(with "peer_id"), "peer_joined" and "peer_left" (with "peer_id"), so the
tests' Listener helpers read them as they read `lanchat listen --json`;
"sent" (a flood's start and end) and "result" (a receiver's count).

Pyre beacons by UDP broadcast on the first non-loopback interface it finds;
the `pyre` mode refuses to run outside a lab host (see `_check_lab_namespace`).
Every loop is bounded by --deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LAB_NETWORK = ipaddress.ip_network("10.213.0.0/16")  # tests.lab's _NET_BASE
ROOM = "bench"


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "time": round(time.time(), 4), **fields}), flush=True)


def _check_lab_namespace() -> None:
    """Exit unless this is a lab host: a network namespace of its own, lab addresses only.

    Pyre broadcasts on whatever non-loopback interface it finds first; in the
    root namespace that would be the machine's real network.
    """
    import netifaces

    ours = os.stat("/proc/self/ns/net").st_ino
    named = Path("/run/netns")
    if not named.is_dir() or all(p.stat().st_ino != ours for p in named.iterdir()):
        sys.exit("bench_agent: not in a named network namespace (a lab host): no Pyre here")
    for name in netifaces.interfaces():
        for entry in netifaces.ifaddresses(name).get(netifaces.AF_INET, []):
            address = ipaddress.ip_address(entry["addr"])
            if not address.is_loopback and address not in LAB_NETWORK:
                sys.exit(f"bench_agent: {name} has {address}, outside the lab: no Pyre here")


# ------------------------------------------------------------------ Pyre


def run_pyre(args: argparse.Namespace) -> None:
    _check_lab_namespace()
    import uuid

    import zmq
    from pyre import Pyre

    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    node = Pyre(args.name)
    node.join(ROOM)
    node.start()
    emit("started", peer_id=node.uuid().hex, nick=args.name)
    poller = zmq.Poller()
    poller.register(node.socket(), zmq.POLLIN)
    deadline = time.monotonic() + args.deadline
    members: set[str] = set()
    payload = b"x" * args.size
    shouted = False
    count, first, last = 0, 0.0, 0.0
    try:
        while not stop and time.monotonic() < deadline:
            if args.shout and not shouted and len(members) >= args.peers:
                time.sleep(0.3)  # the new members' JOIN reaches every link first
                start = time.time()
                for _ in range(args.shout):
                    node.shout(ROOM, payload)
                emit("sent", start=start, end=time.time(), count=args.shout)
                shouted = True
            if args.expect and count and time.time() - last > args.idle:
                break
            if not dict(poller.poll(100)):
                continue
            frames = node.recv()
            if len(frames) < 3 or len(frames[1]) != 16:
                continue
            kind, peer = frames[0], uuid.UUID(bytes=frames[1]).hex
            if kind == b"SHOUT":
                count += 1
                last = time.time()
                first = first or last
                if count == args.expect:
                    break
            elif kind == b"ENTER":
                emit("peer_joined", peer_id=peer, nick=frames[2].decode())
            elif kind == b"EXIT":
                members.discard(peer)
                emit("peer_left", peer_id=peer, reason="exit")
            elif kind == b"JOIN":
                members.add(peer)
            elif kind == b"LEAVE":
                members.discard(peer)
            elif kind == b"EVASIVE":  # newer Pyre versions only
                emit("peer_unreachable", peer_id=peer)
        if args.expect:
            emit("result", received=count, lost=0, first=first, last=last)
    finally:
        node.stop()


# ------------------------------------------------------------------ lanchat


async def _lanchat_send(args: argparse.Namespace) -> None:
    import lanchat

    async with lanchat.Node(args.name, rooms=(ROOM,)) as node:
        emit("started", peer_id=node.peer_id, nick=args.name)
        deadline = time.monotonic() + args.deadline
        while time.monotonic() < deadline:
            if sum(ROOM in p.rooms for p in node.peers()) >= args.peers:
                break
            await asyncio.sleep(0.01)
        else:
            sys.exit("bench_agent: the receivers never showed up")
        await asyncio.sleep(0.3)  # past the receivers' announce and query bursts
        text = "x" * args.size
        batch = 32  # yield to the loop (Nacks, timers) every batch
        start = time.time()
        t0 = time.monotonic()
        for i in range(args.count):
            await node.say(ROOM, text)
            if i % batch == batch - 1:
                due = t0 + (i + 1) / args.rate if args.rate else 0.0
                await asyncio.sleep(max(0.0, due - time.monotonic()))
        emit("sent", start=start, end=time.time(), count=args.count)
        # Serve repairs until told to stop.
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))


async def _lanchat_recv(args: argparse.Namespace) -> None:
    import lanchat

    async with lanchat.Node(args.name, rooms=(ROOM,), all_rooms=True) as node:
        queue = node.subscribe()
        emit("started", peer_id=node.peer_id, nick=args.name)
        deadline = time.monotonic() + args.deadline
        received = late = lost = 0
        first = last = lost_at = 0.0
        while time.monotonic() < deadline:
            if received + lost >= args.expect:
                break
            if received and time.time() - max(last, lost_at) > args.idle:
                break
            if queue.empty():  # cheaper than a wait_for per event
                await asyncio.sleep(0.002)
                continue
            event = queue.get_nowait()
            if isinstance(event, lanchat.ChatReceived) and event.room == ROOM:
                received += 1
                late += event.late
                last = time.time()
                first = first or last
            elif isinstance(event, lanchat.MessagesLost):
                lost += event.count
                lost_at = time.time()
            elif isinstance(event, lanchat.PeerJoined):
                emit("peer_joined", peer_id=event.peer.peer_id, nick=event.peer.nick)
        stats = node.stats
        emit("result", received=received, lost=lost, late=late, first=first, last=last,
             nacks_sent=stats.nacks_sent, duplicates=stats.duplicates,
             dropped_events=node.dropped_events)  # fmt: skip


def _run_async(coro_fn: Any, args: argparse.Namespace) -> None:
    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        await coro_fn(args)

    with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
        asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    pyre = modes.add_parser("pyre", help="a Pyre node (lab hosts only)")
    send = modes.add_parser("lanchat-send", help="flood room 'bench' with chat")
    recv = modes.add_parser("lanchat-recv", help="count chat of room 'bench'")
    for sub in (pyre, send, recv):
        sub.add_argument("--name", default=f"bench{os.getpid()}")
        sub.add_argument("--deadline", type=float, default=120.0, help="seconds, then exit")
    for sub in (pyre, send):
        sub.add_argument("--peers", type=int, default=1, help="group members to wait for")
        sub.add_argument("--size", type=int, default=32, help="message bytes")
    for sub in (pyre, recv):
        sub.add_argument("--expect", type=int, default=0, help="messages to count")
        sub.add_argument("--idle", type=float, default=6.0,
                         help="stop counting this long after the last message")  # fmt: skip
    pyre.add_argument("--shout", type=int, default=0, help="messages to SHOUT")
    send.add_argument("--count", type=int, default=20_000)
    send.add_argument("--rate", type=float, default=0.0, help="messages/s (0: unpaced)")
    args = parser.parse_args()
    if args.mode == "pyre":
        run_pyre(args)
    elif args.mode == "lanchat-send":
        _run_async(_lanchat_send, args)
    else:
        _run_async(_lanchat_recv, args)


if __name__ == "__main__":
    main()
