"""Counters of what a node's core received, dropped and sent."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Stats:
    """Counters of what the core received, dropped and sent."""

    received: int = 0
    sent: int = 0
    foreign: int = 0  # not lanchat at all (bad magic)
    wrong_version: int = 0
    sealed: int = 0  # keyed-group datagrams, and this node holds no key
    unknown_key: int = 0  # sealed with a key this node does not hold
    forged: int = 0  # our key id but the tag does not verify
    replayed: int = 0  # authentic but seen before (or from an older start)
    unsealed: int = 0  # plain datagrams reaching a keyed node
    malformed: int = 0  # lanchat magic but not a valid message
    own: int = 0  # our own multicast looped back
    duplicates: int = 0
    stale: int = 0  # from an older instance of a known peer
    unexpected: int = 0  # valid but not for us (e.g. an ack we never asked for)
    rate_limited: int = 0  # queries not answered: the querier was answered < 20 ms ago
    flooded: int = 0  # dropped undecoded: the source IP was over its rate (section 13)
    overloaded: int = 0  # dropped undecoded: a stranger while the total rate was exceeded
    refused: int = 0  # Beats of new peers past the new-peer rate (section 13)
    off_link: int = 0  # dropped: the source is not on a subnet of ours (and the TTL is 1)
    withheld: int = 0  # answers and pings not sent: more bytes than their destination sent us
    misdirected: int = 0  # unicast-only types (Ping, Direct, Ack, Pair...) sent to the group
    nacks_sent: int = 0  # repair requests this node multicast
    nacks_suppressed: int = 0  # holes not asked for: another receiver's Nack did
    nacks_received: int = 0  # repair requests for our own stream
    nacks_overheard: int = 0  # repair requests for other peers' streams
    repairs_sent: int = 0  # own stream datagrams sent again on request
    repairs_held: int = 0  # requested again within REPAIR_HOLDOFF: not resent
    gone_sent: int = 0  # answers that requested seqs are out of the repair window
    lost: int = 0  # seqs of other peers' streams reported in MessagesLost
    recalls_sent: int = 0  # catch-up requests this node multicast
    recounts_sent: int = 0  # answer datagrams to others' catch-up requests
    recount_bytes: int = 0  # their bytes
    recalls_suppressed: int = 0  # answers not sent: another holder's covered them
