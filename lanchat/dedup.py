"""Duplicate detection: which sequence numbers of each sender were seen."""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from lanchat.stats import Stats

# Duplicates are recognised within the last 1024 sequence numbers of a sender
# (the replay window size DTLS/IPsec allow at most 64; we keep more because
# notices repeat and two NICs double every datagram).
DEDUP_WINDOW: Final = 1024
_WINDOW_MASK: Final = (1 << DEDUP_WINDOW) - 1
# Senders whose sequence windows are remembered; a window is ~150 bytes, and
# a LAN rarely has more than a few hundred senders. Oldest forgotten first.
MAX_SENDERS: Final = 4096


class SeqWindow:
    """Which sequence numbers of one sender were seen (sliding window bitmap)."""

    __slots__ = ("highest", "mask")

    def __init__(self) -> None:
        self.highest = 0
        self.mask = 0  # bit i set: highest - i was seen

    def accept(self, seq: int) -> bool:
        """Record seq; False if it was seen already or is too old to tell."""
        if seq > self.highest:
            shift = seq - self.highest
            # A jump past the window forgets it all (and must not build a 2**64-bit int).
            self.mask = 1 if shift >= DEDUP_WINDOW else ((self.mask << shift) | 1) & _WINDOW_MASK
            self.highest = seq
            return True
        offset = self.highest - seq
        if offset >= DEDUP_WINDOW or self.mask >> offset & 1:
            return False
        self.mask |= 1 << offset
        return True


class SeqWindows:
    """A SeqWindow per (sender, instance), at most MAX_SENDERS, least recently used forgotten."""

    __slots__ = ("_stats", "_windows")

    def __init__(self, stats: Stats) -> None:
        self._stats = stats
        self._windows: OrderedDict[tuple[bytes, int], SeqWindow] = OrderedDict()

    def __len__(self) -> int:
        return len(self._windows)

    def highest(self, sender: bytes, instance: int) -> int | None:
        """The highest seq seen of the stream, None if it is not tracked."""
        window = self._windows.get((sender, instance))
        return None if window is None else window.highest

    def fresh(self, sender: bytes, instance: int, seq: int) -> bool:
        """Record seq; False (and counted a duplicate) if it was seen already."""
        key = (sender, instance)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = SeqWindow()
            if len(self._windows) > MAX_SENDERS:  # read at each use: tests make it small
                self._windows.popitem(last=False)
        else:
            self._windows.move_to_end(key)
        if window.accept(seq):
            return True
        self._stats.duplicates += 1
        return False
