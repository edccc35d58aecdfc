"""Reports of datagrams a key mismatch kept out (UnauthenticatedReceived), a part of the core."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from lanchat import events as ev
from lanchat.part import Context, Part

# Drops that mean "someone here uses another key (or none)": reported to the user.
_UNAUTHENTICATED: Final = {
    "sealed": "sealed with a key this node does not have",
    "unknown key": "sealed with an unknown key",
    "forged": "failing authentication with our key",
    "unsealed": "without a key (this node requires one)",
}
# Sources tracked between reports; a flood of spoofed sources cannot grow it.
_MAX_UNAUTH_SOURCES: Final = 256
# Report key mismatches at once, then at most every 10 s: enough to notice, not spam.
_UNAUTH_REPORT_EVERY: Final = 10.0


@dataclass(slots=True)
class _Tally:
    """Datagrams from one source for one reason since its last report, and the next report."""

    count: int
    next_report: float


class UnauthenticatedReports(Part):
    """Count key-mismatch drops per (source IP, why): reported at once, then every 10 s."""

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self._unauth: dict[tuple[str, str], _Tally] = {}

    def __len__(self) -> int:
        return len(self._unauth)

    def note(self, reason: str, ip: str, now: float) -> None:
        """A datagram from ip was dropped for `reason` (a DecodeError reason)."""
        why = _UNAUTHENTICATED.get(reason)
        if why is None:
            return  # not a key mismatch
        key = (ip, why)
        tally = self._unauth.get(key)
        if tally is None:
            if len(self._unauth) >= _MAX_UNAUTH_SOURCES:
                return
            tally = self._unauth[key] = _Tally(0, now)
        tally.count += 1
        if tally.count == 1:
            self.timers.book(max(now, tally.next_report), self._report, 0)

    def _report(self, key: int, now: float) -> None:
        for (ip, why), tally in sorted(self._unauth.items(), key=lambda item: item[0]):
            if tally.count and tally.next_report <= now:
                self._events.append(ev.UnauthenticatedReceived(ip, tally.count, why))
                tally.count, tally.next_report = 0, now + _UNAUTH_REPORT_EVERY
        # Forget quiet sources whose holdback has passed: the table stays small.
        quiet = [k for k, t in self._unauth.items() if not t.count and t.next_report <= now]
        for source in quiet:
            del self._unauth[source]
