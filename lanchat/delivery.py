"""Acknowledged delivery (PROTOCOL.md sections 7 and 8), a part of the core.

Notices go to the group, repeated at cfg.NOTICE_DELAYS, and every copy is
acknowledged by each member; direct messages go by unicast to each address of
their peer, retried at cfg.DIRECT_DELAYS until acknowledged or given up
(DirectFailed). The receiving side acknowledges and drops duplicates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from lanchat import codec
from lanchat import config as cfg
from lanchat import events as ev
from lanchat.dedup import SeqWindows
from lanchat.errors import ConfigError
from lanchat.part import Address, Answer, Context, Datagram, Part

# Direct messages and notices in flight from this node (local use): a bound
# keeps a runaway script from growing memory without limit.
_MAX_IN_FLIGHT: Final = 1024


@dataclass(slots=True)
class _PendingDirect:
    peer: bytes
    datagram: bytes
    destinations: list[Address]
    sent_at: float
    attempts: int = 0
    heard_since: bool = False


@dataclass(slots=True)
class _PendingNotice:
    datagram: bytes
    acked: set[bytes] = field(default_factory=set)


class Delivery(Part):
    """Notices and direct messages in flight from this node, and the acks for others'."""

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self._directs: dict[int, _PendingDirect] = {}
        self._notices: dict[int, _PendingNotice] = {}
        self._direct_windows = SeqWindows(self._stats)

    # Sending side.

    def check_notice_room(self) -> None:
        """ConfigError if too many notices await acknowledgement."""
        _bound_in_flight(self._notices)

    def check_direct_room(self) -> None:
        """ConfigError if too many direct messages await acknowledgement."""
        _bound_in_flight(self._directs)

    def send_notice(self, seq: int, data: bytes, now: float) -> None:
        """Repeat our notice `seq` to the group and collect its acks for a while."""
        self._notices[seq] = _PendingNotice(data)
        for delay in cfg.NOTICE_DELAYS:
            self.timers.book(now + delay, self._repeat_notice, seq)
        done = now + cfg.NOTICE_DELAYS[-1] + cfg.NOTICE_ACK_WINDOW
        self.timers.book(done, self._notice_done, seq)

    def send_direct(
        self, msg_id: int, peer: bytes, data: bytes, destinations: list[Address], now: float
    ) -> None:
        """Send our direct message `msg_id` to the peer's addresses until it is acknowledged."""
        self._directs[msg_id] = _PendingDirect(peer, data, destinations, now)
        for delay in cfg.DIRECT_DELAYS:
            self.timers.book(now + delay, self._retry_direct, msg_id)
        self.timers.book(now + cfg.DIRECT_GIVE_UP, self._direct_done, msg_id)

    def heard_from(self, sender: bytes) -> None:
        """Something came from the peer: a direct that fails did not fail for silence."""
        for pending in self._directs.values():
            if pending.peer == sender:
                pending.heard_since = True

    def _repeat_notice(self, seq: int, now: float) -> None:
        notice = self._notices.get(seq)
        if notice is not None:
            self._multicast(notice.datagram)
            if not self._member:
                # A one-shot tool is no known peer: members ack only a Notice that
                # came by unicast (PROTOCOL.md 13.3), so each known one gets a copy.
                for rec in self._members:
                    for dest in rec.destinations()[:1]:
                        self._out.append(Datagram(notice.datagram, dest))

    def _notice_done(self, seq: int, now: float) -> None:
        self._notices.pop(seq, None)

    def _retry_direct(self, msg_id: int, now: float) -> None:
        pending = self._directs.get(msg_id)
        if pending is not None:
            pending.attempts += 1
            rec = self._members.get(pending.peer)
            if rec is not None:
                pending.destinations = rec.destinations()
            for dest in pending.destinations:
                self._out.append(Datagram(pending.datagram, dest))

    def _direct_done(self, msg_id: int, now: float) -> None:
        pending = self._directs.pop(msg_id, None)
        if pending is not None:
            self._events.append(
                ev.DirectFailed(msg_id, pending.peer.hex(), pending.attempts, pending.heard_since)
            )

    # Receiving side.

    def on_direct(self, msg: codec.Direct, source: Address) -> None:
        if not self._member:
            self._stats.unexpected += 1
            return
        ack = codec.Ack(self._id, self._inst, codec.T_DIRECT, msg.msg_id, msg.instance)
        self._out.append(Answer(codec.encode(ack), source))
        if self._direct_windows.fresh(msg.sender, msg.instance, msg.msg_id):
            self._events.append(ev.DirectReceived(msg.sender.hex(), msg.nick, msg.text, msg.msg_id))

    def on_ack(self, msg: codec.Ack) -> None:
        if msg.ref_instance != self._inst:
            self._stats.unexpected += 1
            return
        if msg.kind == codec.T_DIRECT:
            pending = self._directs.get(msg.ref)
            if pending is None or pending.peer != msg.sender:
                self._stats.duplicates += 1
                return
            del self._directs[msg.ref]
            self._events.append(ev.DirectDelivered(msg.ref, msg.sender.hex(), pending.attempts))
        else:
            notice = self._notices.get(msg.ref)
            if notice is None or msg.sender in notice.acked:
                self._stats.duplicates += 1
                return
            notice.acked.add(msg.sender)
            self._events.append(ev.NoticeAcknowledged(msg.ref, msg.sender.hex()))


def _bound_in_flight(table: dict[int, Any]) -> None:
    if len(table) >= _MAX_IN_FLIGHT:
        raise ConfigError(f"more than {_MAX_IN_FLIGHT} messages awaiting acknowledgement")
