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
# The IPv6 group is link-local (ff02::/16, RFC 4291 scope 2: never routed) and
# carries the IPv4 group's 32 bits as its group ID, so --group separates both
# families alike: 239.255.76.67 -> ff02::efff:4c43. Every IPv4 multicast group
# gives an ID in 0xe0000000-0xefffffff, inside RFC 3307's dynamic range
# (0x80000000 and up), which IANA's link-local registry never assigns.
DEFAULT_GROUP6: Final = "ff02::efff:4c43"
DEFAULT_PORT: Final = 47667  # unassigned by IANA; "LC" in the middle digits of 0x4C43
# TTL 1 keeps datagrams on the local link (RFC 1112 section 6.1).
DEFAULT_TTL: Final = 1
DEFAULT_ROOM: Final = "lobby"

# Heartbeats are scheduled as RTCP reports are (RFC 3550 sections 6.2-6.3): the
# mean interval grows with the group so that the whole group's heartbeats stay
# within a fixed budget, never below HEARTBEAT_INTERVAL:
#     interval = max(HEARTBEAT_INTERVAL, n / HEARTBEAT_RATE_BUDGET,
#                    n x mean Beat size on the wire / HEARTBEAT_BYTE_BUDGET)
# with n the members known plus ourselves. One heartbeat a second is what
# Pyre/Zyre beacon and what discovery needs to feel instant: up to 50 members
# it is the interval, so small groups behave as before.
HEARTBEAT_INTERVAL: Final = 1.0
# 50 datagrams/s for the whole group: every member receives every heartbeat,
# so this is also each host's receive load (~1.5 ms of CPU per second in
# Python, scripts/simulate --scale), and what Pyre/Zyre cost at 50 peers.
HEARTBEAT_RATE_BUDGET: Final = 50.0
# 8 kB/s (64 kb/s) for the whole group: Wi-Fi sends multicast at a basic rate
# (1-6 Mb/s), so heartbeats take at most ~1-6 % of the air time. A typical Beat
# (~100 bytes with headers) hits the datagram budget first; Beats with long
# status texts and many rooms (up to 784 bytes) hit this one.
HEARTBEAT_BYTE_BUDGET: Final = 8000.0
# Sizes count the IPv4 and UDP headers (20 + 8 bytes), as RTCP's do (RFC 3550
# section 6.2): the budget is what the wire carries.
HEADER_BYTES: Final = 28
# Each interval is drawn uniform in [0.5, 1.5] x interval and divided by e - 3/2:
# timer reconsideration (redrawing at expiry, RFC 3550 section 6.3.6) makes the
# mean gap e - 3/2 times the mean draw, so the mean stays `interval` and no gap
# exceeds 1.5 / (e - 3/2) = 1.23 intervals (RFC 3550 section 6.3.1, A.7).
RECONSIDERATION_FACTOR: Final = 2.718281828459045 - 1.5
# Three missed heartbeats: unreachable within 3 s of a crash (ZRE EVASIVE is
# similar); pings start before that, so single losses do not show. In a bigger
# group the probe waits 1.5 (longer) intervals and the three pings still take 1.5 s.
UNREACHABLE_AFTER: Final = 3.0
# Ten intervals of silence *and* unanswered pings: at 20 % independent loss a
# live peer is falsely removed with probability ~0.2^8 x 0.36^17 per lost Beat
# (PROTOCOL.md section 5; scripts/simulate --presence).
REMOVE_AFTER: Final = 10.0
# A gap between two heartbeats is at most 1.23 intervals (above), so silence
# past 1.5 intervals means at least one heartbeat was really lost.
PROBE_AFTER_INTERVALS: Final = 1.5
# Ping a silent peer every half second (at the minimum interval): a lost ping
# or pong is retried soon enough that unreachable is only declared after 3 pings.
PING_EVERY_INTERVALS: Final = 0.5
# Announcement and query repeats are for small groups, where one lost Beat or
# answer would otherwise keep a peer unseen for a whole interval. Once a node
# knows this many members (the group that fills the budget at the minimum
# interval) it stops repeating them: in a bigger group every member's regular
# Beat comes soon enough, and a mass join of N nodes must not cost N x 20
# datagrams of 100-840 bytes (PROTOCOL.md sections 3.1-3.2).
SMALL_GROUP: Final = round(HEARTBEAT_RATE_BUDGET * HEARTBEAT_INTERVAL)
# A member of a bigger group answers a query with probability
# QUERY_ANSWERS / (members it knows): a newcomer gets ~50 answers at once (a
# second's heartbeat budget) instead of one from every member, and the rest
# from their regular Beats.
QUERY_ANSWERS: Final = SMALL_GROUP
# A member answers at most a burst of queries, then its share of the group's
# heartbeat budget (50/n a second): answers cost the group no more than its
# heartbeats in the long run, and a group of 10 keeps up with a newcomer every
# 0.2 s (at one per 1 s interval, members that started together and spent their
# first answers on each other left newcomers 0.5 s apart unanswered). The burst
# is 200 / n, between 4 and 32: the whole group answers at most ~200 queries at
# once (a mass join of 1000 costs ~4000 answers; the newcomers see each other's
# announcements anyway), while in a small group a member still answers every
# newcomer and one-shot tool of a busy start (five hosts starting together, then
# `lanchat peers`: with a burst of 4 the last querier missed answers).
QUERY_ANSWER_BURST: Final = 4.0
QUERY_ANSWER_BURST_MAX: Final = 32.0
QUERY_ANSWER_GROUP_BURST: Final = 200.0
# A node starts with 8 answers in hand: the members of a small group starting
# together answer each other (one query each) with some to spare, and a mass
# join of N costs at most ~8 N answers in its first second.
QUERY_ANSWER_START: Final = 8.0

# Announce at once, then with back-off (RFC 6762 section 8.3 announces twice
# 1 s apart; on a LAN a quicker repeat costs little): at 20 % loss a peer misses
# all of the first three (within 150 ms) 0.8 % of the time, and all eight sent
# within 0.8 s 2.6e-6 of the time, so a newcomer is seen by all nine members of
# a 10-host group within a second but for ~2 joins in 100,000.
ANNOUNCE_DELAYS: Final = (0.0, 0.03, 0.08, 0.15, 0.25, 0.4, 0.6, 0.8, 1.0)
# A newcomer asks who is there at once and repeats with back-off: a query
# round trip fails 36 % of the time at 20 % loss, four rounds 1.7 %, eleven
# 1.3e-5. With nine members that is a member unseen after 0.85 s in ~1 join of
# 10,000 (seven rounds over 0.7 s left one unseen in 0.7 % of joins, and its
# next regular Beat came up to 1.23 s later: scripts/simulate --discovery).
# Peers it already knows stay silent (the query lists them), so the repeats
# cost one datagram each once everyone has answered.
QUERY_DELAYS: Final = (0.0, 0.03, 0.08, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85)
# One-shot tools (peers, send, notice) ask within their default 1 s wait.
QUERY_DELAYS_ONESHOT: Final = QUERY_DELAYS
# Answers to a query are spread over a random delay so N peers don't burst:
# 0.25 ms per known peer, 0.5 ms at least, 500 ms at most. A LAN takes ~1000
# small datagrams a millisecond and the newcomer's socket 4 MiB, so 4 answers a
# millisecond burst nothing; at 1 ms per peer the last of 9 answers came ~9 ms
# after the query, most of a 10-host discovery (bench: median 10.5 ms).
QUERY_SPREAD_PER_PEER: Final = 0.00025
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


def ipv6_group(group: str) -> str:
    """The link-local IPv6 group that goes with an IPv4 group: ff02:: + its 32 bits."""
    packed = ipaddress.IPv4Address(check_group(group)).packed
    return str(ipaddress.IPv6Address(b"\xff\x02" + bytes(10) + packed))


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


# Flood limits (lanchat.ratelimit, PROTOCOL.md section 13), checked before a
# datagram is decoded. One source IP may send 1000 datagrams a second, 2000 at
# once: twice the busiest honest sender (a node repairing at its full 256/s with
# each repair repeated, 512/s) and room for a pasted burst of 2000 chat lines.
# A flooding host costs the node ~1 us per datagram past that (bench: ~40,000
# drops/s per core), so a 20,000/s flood takes ~10 % of one core.
SOURCE_RATE: Final = 1000.0
SOURCE_BURST: Final = 2000.0
# Datagrams whose cleartext sender id is a known peer's have a bucket of their
# own per source, 40,000 a second and at once: a peer may send chat as fast as
# lanchat can (one sender reaches ~15,000/s; repairs and the receivers' Nacks
# come on top), while strangers' junk and invented peers stay at SOURCE_RATE.
# A host forging a known peer's id gets this rate (section 13.5: only a key stops it).
KNOWN_SOURCE_RATE: Final = 40000.0
KNOWN_SOURCE_BURST: Final = 40000.0
# All sources together, 10,000 datagrams a second, as many at once: 4096 peers
# beating once a second plus their chat take about half of it, and full handling
# (~10-20 us each) of the whole budget stays under a fifth of one core. Past it
# only datagrams claiming a known peer as sender are taken (presence first).
TOTAL_RATE: Final = 10000.0
TOTAL_BURST: Final = 10000.0
# Answer credit per source IP is capped at 16 KB: ~400 acks or 20 query answers
# in a row, while a source that once sent a lot cannot bank an unlimited burst.
ANSWER_CREDIT_MAX: Final = 16384
# New peers, i.e. Beats of unknown peer ids taken into the peer table: 16 at
# once and one a second per source address (a host runs one lanchat per user;
# a restart after a goodbye, or a test rig starting processes with fresh
# identities, is a new peer again: at 8 and one per 2 s, ten restarts on one
# host left the tenth unseen for a second), 512 at once and 64 a second in total
# (a newcomer learns a 512-peer LAN from its first query; a whole floor booting
# together is known within seconds). A refused Beat is repeated by its peer
# within a second. One host can so invent at most a peer a second, and a silent
# invented peer is gone 10 s later: the table stays real peers'.
NEW_PEERS_PER_SOURCE_BURST: Final = 16.0
NEW_PEERS_PER_SOURCE_RATE: Final = 1.0
NEW_PEERS_BURST: Final = 512.0
NEW_PEERS_RATE: Final = 64.0
