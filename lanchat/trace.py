"""What the core did with each datagram, told to an optional injected tracer (sans-I/O).

After aioquic's `QuicLogger`: a `NodeCore(..., tracer=...)` (or `Node(..., tracer=...)`)
calls its tracer once for every datagram it receives, accepted or dropped (with the
reason: the `Stats` counter it went to), and once for every datagram it hands out to
send. Tools that explain (`lanchat doctor`) subscribe here instead of overriding
private methods; without a tracer the core pays one `if` per call site.

`channel` is the socket a datagram came in on, as the transport tells: `GROUP` (the
multicast group socket) or `UNICAST` (the node's own port: answers, pings, directs);
"" when not told (a core driven by hand).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final, Protocol

from lanchat import codec
from lanchat.part import Address

__all__ = ["GROUP", "UNICAST", "TraceLog", "Traced", "Tracer", "kind_of"]

GROUP: Final = "group"  # arrived on the group socket (multicast)
UNICAST: Final = "unicast"  # arrived on the unicast socket (answers, pings, directs)

_KINDS: Final = {
    codec.T_BEAT: "Beat", codec.T_QUERY: "Query", codec.T_BYE: "Bye", codec.T_CHAT: "Chat",
    codec.T_NOTICE: "Notice", codec.T_DIRECT: "Direct", codec.T_ACK: "Ack",
    codec.T_PING: "Ping", codec.T_PONG: "Pong", codec.T_NACK: "Nack", codec.T_GONE: "Gone",
    codec.T_RECALL: "Recall", codec.T_RECOUNT: "Recount", codec.T_SEEK: "Seek",
    codec.T_PAIR: "Pair", codec.T_UNPAIR: "Unpair",
}  # fmt: skip


def kind_of(data: bytes) -> str:
    """The message type of a plain datagram made by `codec.encode` ("" if not one)."""
    # The header (4 bytes), a msgpack fixarray's one-byte header, then the type.
    if len(data) > 5 and data[4] & 0xF0 == 0x90:
        return _KINDS.get(data[5], "")
    return ""


class Tracer(Protocol):
    """What a core tells its tracer; each call is made synchronously, at `now`."""

    def datagram_accepted(
        self, source: Address, channel: str, kind: str, sender: bytes, now: float
    ) -> None:
        """A datagram was decoded and taken: its type name ("Beat", ...) and sender id."""

    def datagram_dropped(self, source: Address, channel: str, reason: str, now: float) -> None:
        """A datagram was dropped; `reason` names the `Stats` counter it went to
        ("own", "flooded", "malformed", "stale", "off_link", ...), or "closed"."""

    def datagram_queued(self, to: Address | None, kind: str) -> None:
        """The core handed out a datagram to send: to the group (None) or to `to`."""


@dataclass(frozen=True, slots=True)
class Traced:
    """One line of a `TraceLog`: what happened ("accepted", "dropped", "queued")."""

    what: str
    address: Address | None  # the source, or where it was sent (None: the group)
    channel: str = ""
    kind: str = ""  # the message type, if known
    reason: str = ""  # why dropped
    sender: bytes | None = None


class TraceLog:
    """A tracer that keeps its calls as `Traced` lines, for tests and debugging.

    It keeps the last `limit` lines: a flood cannot make it grow without bound.
    """

    def __init__(self, limit: int = 10_000) -> None:
        self.lines: deque[Traced] = deque(maxlen=limit)

    def datagram_accepted(
        self, source: Address, channel: str, kind: str, sender: bytes, now: float
    ) -> None:
        self.lines.append(Traced("accepted", source, channel, kind, sender=sender))

    def datagram_dropped(self, source: Address, channel: str, reason: str, now: float) -> None:
        self.lines.append(Traced("dropped", source, channel, reason=reason))

    def datagram_queued(self, to: Address | None, kind: str) -> None:
        self.lines.append(Traced("queued", to, kind=kind))
