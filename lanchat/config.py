"""Node settings and the protocol's timing constants, each with its reason."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

from lanchat.codec import (
    MAX_ROOMS,
    STATUS_AWAY,
    STATUS_ONLINE,
    check_nick,
    check_room,
    check_status_text,
)
from lanchat.errors import ConfigError

# Administratively scoped (RFC 2365, 239.255/16 = IPv4 local scope): routers
# at the site edge do not forward it, and it clashes with no IANA assignment.
DEFAULT_GROUP: Final = "239.255.76.67"
DEFAULT_PORT: Final = 47667  # unassigned by IANA; "LC" in the middle digits of 0x4C43
# TTL 1 keeps datagrams on the local link (RFC 1112 section 6.1).
DEFAULT_TTL: Final = 1
DEFAULT_ROOM: Final = "lobby"

# One heartbeat a second is what Pyre/Zyre beacon and what discovery needs to
# feel instant; it is also the floor the RTCP-style scaling will keep.
HEARTBEAT_INTERVAL: Final = 1.0
# Three missed heartbeats: unreachable within 3 s of a crash (ZRE EVASIVE is
# similar); pings start before that, so single losses do not show.
UNREACHABLE_AFTER: Final = 3.0
# Ten intervals of silence *and* unanswered pings: at 20 % independent loss a
# live peer is falsely removed with probability ~0.2^10 x 0.36^14 per start.
REMOVE_AFTER: Final = 10.0
# Heartbeats are jittered over [0.5, 1.5] x interval (RFC 3550 section 6.3.1),
# so silence past 1.5 intervals means at least one heartbeat was really lost.
PROBE_AFTER_INTERVALS: Final = 1.5
# Ping a silent peer twice per interval: a lost ping or pong is retried soon
# enough that unreachable (3 intervals) is only declared after >= 3 pings.
PING_EVERY_INTERVALS: Final = 0.5

# Announce at once, then with back-off (RFC 6762 section 8.3 announces twice
# 1 s apart; on a LAN a quicker repeat costs little): at 20 % loss a peer misses
# all of the first three (within 150 ms) only 0.8 % of the time.
ANNOUNCE_DELAYS: Final = (0.0, 0.03, 0.08, 0.15, 0.4, 1.0)
# A newcomer asks who is there at once and repeats with back-off: a query
# round trip fails 36 % of the time at 20 % loss, four rounds 1.7 %, seven
# 0.08 %. Peers it already knows stay silent (the query lists them), so the
# repeats cost one datagram each once everyone has answered.
QUERY_DELAYS: Final = (0.0, 0.03, 0.08, 0.15, 0.25, 0.4, 0.7)
# One-shot tools (peers, send, notice) ask within their default 1 s wait.
QUERY_DELAYS_ONESHOT: Final = QUERY_DELAYS
# Answers to a query are spread over a random delay so N peers don't burst:
# 1 ms per known peer (a LAN takes ~1000 small datagrams/ms), 0.5 ms at least,
# 500 ms at most.
QUERY_SPREAD_PER_PEER: Final = 0.001
QUERY_SPREAD_MIN: Final = 0.0005
QUERY_SPREAD_MAX: Final = 0.5
# Answer one querier (ip, port) at most this often: each repeat of a query is
# answered, a flood from one querier is not. Answers are never larger than
# the (padded) query, so even an answered flood amplifies nothing.
QUERY_ANSWER_GAP: Final = 0.02  # under the first repeat (0.03 s)
# Direct messages: retry with back-off starting at 200 ms (a LAN round trip is
# under 1 ms, so no answer in 200 ms means loss); 6 tries over 3.5 s, then
# 1.5 s more for a late acknowledgement (IP Messenger: 3 tries 1.5 s apart).
DIRECT_DELAYS: Final = (0.0, 0.2, 0.5, 1.0, 2.0, 3.5)
DIRECT_GIVE_UP: Final = 5.0
# Notices are sent four times: at 20 % loss all four are lost 0.16 % of the time.
NOTICE_DELAYS: Final = (0.0, 0.1, 0.3, 0.7)
# Acknowledgements of a notice are collected this long after the last repeat.
NOTICE_ACK_WINDOW: Final = 3.0
# Goodbye three times, 50 and 150 ms apart (zeroconf sends three goodbyes).
BYE_DELAYS: Final = (0.0, 0.05, 0.15)

# Loss repair of the multicast stream (PROTOCOL.md section 10), after PGM (RFC
# 3208) and NORM (RFC 5740).
# A receiver missing seqs waits a random back-off in [10, 150] ms before it
# multicasts a Nack, truncated-exponentially distributed over the group: density
# ~ e^(lambda t / 140 ms), lambda = ln(members + 1) + 1 (NORM, RFC 5740 section
# 5.3; Nonnenmacher and Biersack; TFMCC's feedback timers, RFC 4654 section 3.3).
# Of the ~10 of 50 who miss a message at 20 % loss, one fires early and the rest
# late in the window, after its Nack (one LAN hop, < 2 ms) or the repair reached
# them. 150 ms also lets a receiver that missed both hear the next repair copy
# (REPAIR_REPEATS) before it asks: uniform [10, 50] ms gave 2.0 (independent
# loss) and 2.7 (bursts) Nacks per lost message at 50 peers, this 1.5 and 1.6
# with the rules below (scripts/simulate, PROTOCOL.md 10.3).
NACK_BACKOFF: Final = (0.010, 0.150)
# A receiver that heard none of the group's multicast (Beat, Chat, Notice, Nack)
# for 1.5 mean gaps between the members' heartbeats (30 ms among 50 members
# beating once a second), at its Nack's time or since the round began, may be
# in a loss burst and have missed the Nack or repair that would have suppressed
# it: it puts its Nack off by a new back-off, at most twice a round. Such a
# silence is rare unless the receiver is deaf (P = e^-1.5 = 22 % of the gaps
# in a steady stream, less with chat), and a false alarm only delays the Nack.
# Bursty loss at 50 peers: 2.1 Nacks per lost message without this rule, 1.6
# with it (scripts/simulate, seed 1, 30 s).
NACK_DEAF_BEATS: Final = 1.5
NACK_DEFERRALS: Final = 2
# After a Nack for a hole is sent or heard, wait this long for the repair and its
# repeats (sent 0, 0.1 and 0.2 s after the Nack) before the next round. Seven
# rounds of 0.2 s, then doubling: at 20 % loss a round fails about 20 % of the
# time (the Nack lost on its way to the sender, or all three copies lost), so
# residual loss is ~0.2^(r+1) (RFC 3208's p^(r+1)): 1e-7 after all ten, and a
# link that drops out for 2-3 s still recovers. The receiver gives up 4.3-9 s
# after it saw the gap (back-offs and deferrals included), and reports the seqs.
REPAIR_WAITS: Final = (0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.4, 0.8, 1.6)
# A sender repairs one seq at most once per 10 ms, however many ask: Nacks
# that crossed the repair in flight (one-way LAN delay ~1 ms) cause no second
# copy, while a next-round Nack (sent >= 210 ms later) is answered.
REPAIR_HOLDOFF: Final = 0.01
# Each repair is sent three times: at once, 100 ms and 200 ms later. At 50 peers
# and 20 % loss ~10 receivers miss a message; two copies miss at least one of
# them a third of the time (1 - 0.96^10), three 8 %: each copy a receiver gets
# saves it a round of Nacks, and a receiver that missed the Nack and the first
# copy hears a later one before its own back-off ends. 100 ms apart, one loss
# burst (50 ms on average) rarely takes two; copies 50 ms apart gave 1.8 Nacks
# per lost message under bursty loss instead of 1.6. With two copies it was 1.8
# / 2.1 (independent / bursty), with three 1.5 / 1.6, for ~1 more repair
# datagram per lost message (scripts/simulate, 50 peers).
REPAIR_REPEATS: Final = (0.1, 0.2)
# A sender keeps its last 1024 stream datagrams for repair (the receivers'
# dedup window: older seqs would be dropped as duplicates anyway) and none older
# than 60 s: receivers ask within ~9 s of seeing a gap, or when a peer they had
# lost (removed after 10 s of silence) comes back; a minute covers both.
REPAIR_KEEP: Final = 60.0
# After a chat message a member sends heartbeats (which carry last_seq) 50 ms,
# 200 ms and 500 ms later, so a lost last message is noticed at once instead of
# ~1 s later (PGM's heartbeat SPMs after data, RFC 3208 section 5.1.5). All three
# are lost 0.8 % of the time at 20 % loss; the regular heartbeat follows.
TAIL_BEAT_DELAYS: Final = (0.05, 0.2, 0.5)


def check_group(group: str) -> str:
    """An IPv4 multicast address (224.0.0.0/4)."""
    try:
        addr = ipaddress.IPv4Address(group)
    except ValueError:
        raise ConfigError(f"group {group!r} is not an IPv4 address") from None
    if not addr.is_multicast:
        raise ConfigError(f"group {group} is not a multicast address (224.0.0.0/4)")
    return str(addr)


def check_port(port: int) -> int:
    """A UDP port number 1..65535."""
    if not 1 <= port <= 65535:
        raise ConfigError(f"port {port} is not in 1..65535")
    return port


@dataclass(frozen=True)
class NodeConfig:
    """What a node is and how it times itself; validated on creation."""

    nick: str
    rooms: tuple[str, ...] = (DEFAULT_ROOM,)
    host: str = ""
    member: bool = True  # False: a one-shot tool that listens and sends, unseen
    all_rooms: bool = False  # deliver chat from every room (lanchat listen)
    status: str = STATUS_ONLINE
    status_text: str = ""
    heartbeat_interval: float = HEARTBEAT_INTERVAL
    unreachable_after: float = UNREACHABLE_AFTER
    remove_after: float = REMOVE_AFTER

    def __post_init__(self) -> None:
        check_nick(self.nick)
        rooms = tuple(dict.fromkeys(check_room(r) for r in self.rooms))
        if len(rooms) > MAX_ROOMS:
            raise ConfigError(f"at most {MAX_ROOMS} rooms")
        object.__setattr__(self, "rooms", rooms)
        if self.status not in (STATUS_ONLINE, STATUS_AWAY):
            raise ConfigError(f"unknown status {self.status!r}")
        check_status_text(self.status_text)
        if not 0.05 <= self.heartbeat_interval <= 3600:
            raise ConfigError("heartbeat interval must be between 0.05 and 3600 seconds")
        if self.unreachable_after < PROBE_AFTER_INTERVALS * self.heartbeat_interval:
            raise ConfigError("unreachable timeout must be at least 1.5 heartbeat intervals")
        if self.remove_after <= self.unreachable_after:
            raise ConfigError("removal timeout must be longer than the unreachable timeout")
