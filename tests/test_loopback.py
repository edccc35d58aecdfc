"""Real sockets on the loopback interface: the library and the CLI end to end.

Every node is pinned to `lo` and to a port of its own (the `lo_port` fixture).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
from typing import Any

import pytest

import lanchat
from lanchat import events as ev
from tests.loopback_helpers import LANCHAT, cli, node, until

pytestmark = pytest.mark.loopback


def test_library_discovery_chat_direct_notice(lo_port: int) -> None:
    async def main() -> None:
        async with node("alice", lo_port, rooms=["lobby", "dev"]) as a:
            seen = a.subscribe()
            async with node("bob", lo_port) as b:
                bob_events = b.subscribe()
                await until(lambda: len(a.peers()) == 1 and len(b.peers()) == 1, 2.0)
                assert a.peers()[0].nick == "bob" and a.peers()[0].address == "127.0.0.1"
                assert b.peers()[0].rooms == ("lobby", "dev")
                await a.say("lobby", "hello bob")
                await a.say("dev", "not for bob")
                chat = await b.wait_for(lambda e: isinstance(e, ev.ChatReceived), 2)
                assert isinstance(chat, ev.ChatReceived) and chat.text == "hello bob"
                outcome = await a.send_direct_wait("bob", "psst")
                assert isinstance(outcome, ev.DirectDelivered)
                await a.notice("fire drill at 3")
                ack = await a.wait_for(lambda e: isinstance(e, ev.NoticeAcknowledged), 2)
                assert isinstance(ack, ev.NoticeAcknowledged) and ack.peer_id == b.peer_id
                await b.set_nick("robert")
                renamed = await a.wait_for(lambda e: isinstance(e, ev.PeerRenamed), 1)
                assert isinstance(renamed, ev.PeerRenamed) and renamed.peer.nick == "robert"
                await asyncio.sleep(0.05)
                got = [bob_events.get_nowait() for _ in range(bob_events.qsize())]
                texts = [e.text for e in got if isinstance(e, ev.ChatReceived)]
                assert texts == ["hello bob"], "chat of a room bob is not in reached him"
                assert [e.text for e in got if isinstance(e, ev.NoticeReceived)] == [
                    "fire drill at 3"
                ]
                assert [e.text for e in got if isinstance(e, ev.DirectReceived)] == ["psst"]
            left = None
            while left is None:
                event = await asyncio.wait_for(seen.get(), 2)
                left = event if isinstance(event, ev.PeerLeft) else None
            assert left.reason == "bye" and a.peers() == []

    asyncio.run(main())


def test_two_processes_one_user_get_two_ids_and_a_restart_keeps_its_id(lo_port: int) -> None:
    async def main() -> None:
        async with node("one", lo_port) as first, node("two", lo_port) as second:
            assert first.peer_id != second.peer_id
            await until(lambda: len(first.peers()) == 1 and len(second.peers()) == 1)
        # Both closed: the next process of this user takes the first slot's id again.
        async with node("one", lo_port) as again:
            assert again.peer_id == first.peer_id

    asyncio.run(main())


def test_restart_replaces_the_entry(lo_port: int) -> None:
    async def main() -> None:
        async with node("watcher", lo_port) as w:
            b1 = node("bob", lo_port)
            await b1.start()
            await until(lambda: len(w.peers()) == 1)
            first_id, first_instance = b1.peer_id, w.peers()[0].instance
            b1._close_sockets()  # a crash: no goodbye...
            assert b1._lease is not None
            b1._lease.release()  # ...and the kernel frees the slot lock
            restarted = asyncio.ensure_future(
                w.wait_for(lambda e: isinstance(e, ev.PeerRestarted), 3)
            )
            async with node("bob", lo_port) as b2:
                assert b2.peer_id == first_id
                event = await restarted
                assert isinstance(event, ev.PeerRestarted)
                assert event.peer.instance > first_instance
                assert [p.peer_id for p in w.peers()] == [first_id]

    asyncio.run(main())


def test_garbage_on_the_port_is_dropped_and_counted(lo_port: int) -> None:
    async def main() -> None:
        async with node("alice", lo_port) as a:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(
                socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1")
            )
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            for payload in [b"", b"hello", b"LC\x01\x00\xc1", b"LC\x07\x00\x90", b"LC\x01\x00"]:
                sock.sendto(payload, (lanchat.DEFAULT_GROUP, lo_port))
            sock.sendto(b"x" * 1500, (lanchat.DEFAULT_GROUP, lo_port))
            sock.close()
            await until(lambda: a.stats.received >= 6)
            s = a.stats
            # "hello" is foreign; empty, truncated, bad msgpack and oversized are malformed
            assert s.foreign == 1 and s.wrong_version == 1 and s.malformed == 4
            assert a.peers() == []

    asyncio.run(main())


# ------------------------------------------------------------------ the CLI


def lines_of(proc: subprocess.Popen[str]) -> list[dict[str, Any]]:
    proc.terminate()
    out, _ = proc.communicate(timeout=5)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_cli_peers_notice_send_listen(listener: subprocess.Popen[str], lo_port: int) -> None:
    started = time.monotonic()
    result = cli("peers", "--json", port=lo_port)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 5
    found = json.loads(result.stdout)
    assert [p["nick"] for p in found] == ["lis"]
    assert found[0]["address"] == "127.0.0.1" and found[0]["port"] > 0
    assert found[0]["rooms"] == ["lobby"] and found[0]["state"] == "alive"

    table = cli("peers", port=lo_port)
    assert "lis" in table.stdout and "127.0.0.1:" in table.stdout

    result = cli("notice", "--nick", "boss", "the", "coffee", "is", "ready", port=lo_port)
    assert result.returncode == 0, result.stderr
    assert "acknowledged by 1 of 1 known peers" in result.stdout

    result = cli("send", "--to", "lis", "psst", port=lo_port)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("delivered to lis")

    result = cli("send", "--to", "nobody", "--wait", "0.5", "hi", port=lo_port)
    assert result.returncode == 1
    assert result.stderr.strip() == "lanchat: no peer named 'nobody'"

    events = lines_of(listener)
    kinds = [e["event"] for e in events]
    assert kinds.count("notice_received") == 1
    notice = next(e for e in events if e["event"] == "notice_received")
    assert notice["text"] == "the coffee is ready" and notice["nick"] == "boss"
    direct = [e for e in events if e["event"] == "direct_received"]
    assert [d["text"] for d in direct] == ["psst"]


def test_cli_join_reads_stdin_when_not_a_terminal(
    listener: subprocess.Popen[str], lo_port: int
) -> None:
    script = "hello from a script\n/nick scripted\n/msg lis secret\n/join dev\nin dev now\n"
    result = cli("join", "--nick", "bot", port=lo_port, input=script)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    events = lines_of(listener)
    chats = [(e["room"], e["text"]) for e in events if e["event"] == "chat_received"]
    assert chats == [("lobby", "hello from a script"), ("dev", "in dev now")]
    assert any(e["event"] == "peer_renamed" and e["peer"]["nick"] == "scripted" for e in events)
    assert [e["text"] for e in events if e["event"] == "direct_received"] == ["secret"]
    assert any(e["event"] == "peer_left" and e["reason"] == "bye" for e in events)


def test_cli_sigterm_says_goodbye(listener: subprocess.Popen[str], lo_port: int) -> None:
    env = {**os.environ, "LANCHAT_PORT": str(lo_port)}
    other = subprocess.Popen(
        [*LANCHAT, "listen", "--json", "--nick", "leaver"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert other.stdout is not None
    json.loads(other.stdout.readline())
    time.sleep(0.3)
    other.terminate()
    _, err = other.communicate(timeout=5)
    assert other.returncode == 0 and "Traceback" not in err
    time.sleep(0.3)
    events = lines_of(listener)
    left = [e for e in events if e["event"] == "peer_left" and e["peer"]["nick"] == "leaver"]
    assert len(left) == 1 and left[0]["reason"] == "bye"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["peers", "--interface", "nosuch0"], "nosuch0"),
        (["peers", "--group", "10.0.0.1"], "not a multicast address"),
        (["peers", "--port", "0"], "--port"),
        (["peers", "--nick", "x" * 40], "nickname is 40 bytes"),
        (["send", "--to", "x", "y" * 1200], "message is 1200 bytes"),
        (["notice", "--ttl", "0", "hi"], "--ttl"),
    ],
)
def test_cli_errors_are_one_line(args: list[str], message: str, lo_port: int) -> None:
    result = cli(*args, port=lo_port)
    assert result.returncode in (1, 2)
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_peers_table_neutralises_escape_sequences(lo_port: int) -> None:
    # Host and status text may hold any code point (PROTOCOL.md section 8): a
    # peer must not be able to drive the terminal of whoever lists peers.
    from lanchat import codec

    beat = codec.Beat(
        b"EVILPEER", 2**60, "mallory", "host\x1b[2J\x1b]0;pwned\x07", 40000, "away",
        "gone\r\x1b[31mred", ("lobby",), 0, 1000,
    )  # fmt: skip
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    peers = subprocess.Popen(
        [*LANCHAT, "peers", "--wait", "1.5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "LANCHAT_PORT": str(lo_port)},
    )
    try:
        for _ in range(10):  # heartbeats while `peers` listens
            time.sleep(0.1)
            sock.sendto(codec.encode(beat), (lanchat.DEFAULT_GROUP, lo_port))
        out, err = peers.communicate(timeout=15)
    finally:
        sock.close()
    assert peers.returncode == 0, err
    assert "mallory" in out and "host" in out
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out


# A host string no terminal may see raw: OSC title, CSI clear, BEL, 8-bit CSI, bidi override.
HOSTILE_HOST = "pc\x1b]0;pwned\x07\x1b[2J\x9b31m\u202eevil"
RAW = ("\x1b", "\x07", "\x9b", "\u202e")


def test_cli_send_listen_and_notice_print_a_hostile_host_inert(lo_port: int, tmp_path: Any) -> None:
    async def main() -> tuple[str, str, str, str]:
        async with node("mallory", lo_port, host=HOSTILE_HOST):
            env = {**os.environ, "LANCHAT_PORT": str(lo_port)}
            listen_cmd = [*LANCHAT, "listen", "--nick", "lis"]
            listeners = [
                await asyncio.create_subprocess_exec(
                    *listen_cmd,
                    *extra,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env={**env, "LANCHAT_HOME": str(tmp_path / f"l{i}")},
                )
                for i, extra in enumerate(([], ["--json"]))
            ]
            send = await asyncio.to_thread(cli, "send", "--to", "mallory", "hi", port=lo_port)
            notice = await asyncio.to_thread(cli, "notice", "--wait", "1", "hi", port=lo_port)
            await asyncio.sleep(1.0)
            outs = []
            for proc in listeners:
                proc.terminate()
                out, _ = await proc.communicate()
                outs.append(out.decode())
            assert send.returncode == 0, send.stderr
            return send.stdout + send.stderr, notice.stdout + notice.stderr, outs[0], outs[1]

    send_out, notice_out, text_out, json_out = asyncio.run(main())
    assert "delivered to mallory" in send_out and "pc" in send_out
    assert "mallory" in text_out and json.loads(json_out.splitlines()[1])
    hosts = [json.loads(line).get("peer", {}).get("host") for line in json_out.splitlines()]
    assert HOSTILE_HOST in hosts  # JSON keeps the exact string, escaped
    for out in (send_out, notice_out, text_out, json_out):
        assert not any(ch in out for ch in RAW), repr(out)
