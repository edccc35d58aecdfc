"""Answer a lone core's address probes (PROTOCOL.md 13.6) as the probed peer would."""

from __future__ import annotations

from lanchat import codec
from lanchat.core import Address, NodeCore


def verify(core: NodeCore, sender: bytes, instance: int, source: Address, now: float) -> None:
    """The peer `sender` at `source` answers the Pings queued for its IP with Pongs.

    Other queued datagrams stay queued, in order, for the test to take.
    """
    out = core.datagrams_to_send()
    core.stats.sent -= len(out)  # taken and put back: not sent twice
    kept = []
    for dgram in out:
        msg = codec.decode(dgram.data)
        if isinstance(msg, codec.Ping) and dgram.to is not None and dgram.to[0] == source[0]:
            pong = codec.Pong(sender, instance, msg.token)
            core.receive_datagram(codec.encode(pong), source, now)
        else:
            kept.append(dgram)
    core._out[:0] = kept
