"""Admission of datagrams before decoding, and the answer budget of each source (no I/O).

Three rules, applied to every datagram before it is decoded (PROTOCOL.md section 13):

* **Per source address**: a token bucket per source IP (`cfg.SOURCE_RATE` a
  second, `cfg.SOURCE_BURST` at once) for datagrams of strangers (no sender id
  a known peer's), and one for those of known peers (`cfg.KNOWN_SOURCE_*`, high
  enough for a peer's chat at full speed). One host flooding empties only its
  own buckets; every other host keeps its own, whole.
* **In total**: one bucket for everything admitted (`cfg.TOTAL_RATE`,
  `cfg.TOTAL_BURST`) caps the work many sources together can cause. When it is
  empty only *strangers* are refused: a datagram whose (cleartext) sender id is
  a known peer still goes in, so presence and chat of known peers come first.
* **New peers**: a Beat of an unknown peer adds it to the table only within
  `cfg.NEW_PEERS_PER_SOURCE_*` for its source and `cfg.NEW_PEERS_*` in total, so
  one host cannot fill the peer table (and its timers) with invented peers.
* **Answer credit**: every admitted datagram credits its source IP with its
  size; every unicast answer to that IP (query answer, Pong, Ack) spends its
  size and is not sent when the credit falls short. So no source ever gets
  more bytes in answer than it sent (no amplification, cf. RFC 9000 section 8.1).

Loopback sources (127.0.0.0/8, ::1) are exempt: they are processes of this
machine, which share its CPU and can fill its socket buffer whatever a limit
says; the kernel never accepts them from a real interface.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from lanchat import config as cfg

ADMITTED: Final = 0
FLOODED: Final = 1  # the source is over its own rate
OVERLOADED: Final = 2  # a stranger while the total rate is exceeded

# Source addresses remembered (bucket and credit, ~200 bytes each): as many as
# the peer table holds (a /22 LAN); least recently heard forgotten first. A
# forgotten source starts again with a full bucket and no credit.
_MAX_SOURCES: Final = 4096


def is_loopback(ip: str) -> bool:
    """Whether ip is this machine's loopback (exempt from every limit)."""
    return ip.startswith("127.") or ip == "::1"


@dataclass(slots=True)
class _Source:
    tokens: float
    stamp: float
    credit: int = 0
    peers: float = cfg.NEW_PEERS_PER_SOURCE_BURST  # new peers it may still introduce
    peers_stamp: float = 0.0
    known_tokens: float = cfg.KNOWN_SOURCE_BURST  # datagrams of known peers it may send
    known_stamp: float = 0.0


class Limits:
    """Token buckets per source IP and in total, in virtual time, and answer credit."""

    def __init__(
        self,
        *,
        rate: float = cfg.SOURCE_RATE,
        burst: float = cfg.SOURCE_BURST,
        total_rate: float = cfg.TOTAL_RATE,
        total_burst: float = cfg.TOTAL_BURST,
        max_credit: int = cfg.ANSWER_CREDIT_MAX,
        max_sources: int = _MAX_SOURCES,
    ) -> None:
        self.rate, self.burst = rate, burst
        self.total_rate, self.total_burst = total_rate, total_burst
        self.max_credit = max_credit
        self.max_sources = max_sources
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        self._total = total_burst
        self._total_stamp = float("-inf")
        self._new_peers = cfg.NEW_PEERS_BURST
        self._new_peers_stamp = float("-inf")

    def __len__(self) -> int:
        return len(self._sources)

    def admit(self, ip: str, size: int, now: float, *, known: bool) -> int:
        """ADMITTED, FLOODED or OVERLOADED for one datagram of `size` bytes from ip.

        `known`: whether its sender id is a known peer's (only consulted when the
        total is exceeded; a claim, not a proof: see PROTOCOL.md section 13).
        """
        if is_loopback(ip):
            return ADMITTED
        source = self._sources.get(ip)
        if source is None:
            source = self._sources[ip] = _Source(
                self.burst, now, known_tokens=cfg.KNOWN_SOURCE_BURST, known_stamp=now
            )
            if len(self._sources) > self.max_sources:
                self._sources.popitem(last=False)
        else:
            self._sources.move_to_end(ip)
        if known:  # a known peer's chat may come fast: its own, larger bucket
            tokens = source.known_tokens + (now - source.known_stamp) * cfg.KNOWN_SOURCE_RATE
            tokens = tokens if tokens < cfg.KNOWN_SOURCE_BURST else cfg.KNOWN_SOURCE_BURST
            source.known_stamp = now
            if tokens < 1.0:
                source.known_tokens = tokens
                return FLOODED
            source.known_tokens = tokens - 1.0
        else:
            tokens = source.tokens + (now - source.stamp) * self.rate
            source.tokens = tokens if tokens < self.burst else self.burst
            source.stamp = now
            if source.tokens < 1.0:
                return FLOODED
        total = self._total + (now - self._total_stamp) * self.total_rate
        total = total if total < self.total_burst else self.total_burst
        self._total_stamp = now
        if total < 1.0:
            self._total = total
            if not known:
                return OVERLOADED
        else:
            self._total = total - 1.0
        if not known:
            source.tokens -= 1.0
        credit = source.credit + size
        source.credit = credit if credit < self.max_credit else self.max_credit
        return ADMITTED

    def admit_peer(self, ip: str, now: float) -> bool:
        """Whether a Beat from ip (already admitted) may add a new peer to the table."""
        if is_loopback(ip):
            return True
        source = self._sources.get(ip)
        if source is None:
            return False  # forgotten since admit: a table churned by a flood of addresses
        burst, rate = cfg.NEW_PEERS_PER_SOURCE_BURST, cfg.NEW_PEERS_PER_SOURCE_RATE
        tokens = min(burst, source.peers + (now - source.peers_stamp) * rate)
        total = min(
            cfg.NEW_PEERS_BURST,
            self._new_peers + (now - self._new_peers_stamp) * cfg.NEW_PEERS_RATE,
        )
        source.peers_stamp = self._new_peers_stamp = now
        if tokens < 1.0 or total < 1.0:
            source.peers, self._new_peers = tokens, total
            return False
        source.peers, self._new_peers = tokens - 1.0, total - 1.0
        return True

    def spend(self, ip: str, size: int) -> bool:
        """Take `size` bytes of ip's answer credit; False (nothing taken) if it has less."""
        if is_loopback(ip):
            return True
        source = self._sources.get(ip)
        if source is None or source.credit < size:
            return False
        source.credit -= size
        return True

    def credit(self, ip: str) -> int:
        """The answer credit of ip in bytes (for tests and diagnostics)."""
        source = self._sources.get(ip)
        return source.credit if source is not None else 0
