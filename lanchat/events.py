"""Events the core hands out, frozen and named in the past tense."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# How a known peer stands: heard within its timeout, or silent past it (PROTOCOL.md 5).
PeerState = Literal["alive", "unreachable"]


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """A snapshot of one peer as this node knows it."""

    peer_id: str  # 16 hex digits, stable across restarts of the same user on one host
    instance: int  # changes on every start of the peer
    nick: str
    host: str
    address: str  # the address it was last heard from
    port: int  # its unicast port
    addresses: tuple[str, ...]  # every address it is heard from (several NICs)
    rooms: tuple[str, ...]
    status: str  # "online" or "away"
    status_text: str
    state: PeerState
    last_heard: float  # core time (monotonic seconds) of the last datagram from it
    heartbeat_interval: float

    @property
    def short_id(self) -> str:
        """The first 8 hex digits of the peer id."""
        return self.peer_id[:8]


@dataclass(frozen=True, slots=True)
class PeerJoined:
    """A peer was heard for the first time (or again after it was removed)."""

    peer: PeerInfo


@dataclass(frozen=True, slots=True)
class PeerRestarted:
    """A known peer came back with a new instance: its entry was replaced, not doubled."""

    peer: PeerInfo


@dataclass(frozen=True, slots=True)
class PeerRenamed:
    """A peer changed its nickname."""

    peer: PeerInfo
    old_nick: str


@dataclass(frozen=True, slots=True)
class PeerStatusChanged:
    """A peer went away or came back (status and status_text in `peer`)."""

    peer: PeerInfo


@dataclass(frozen=True, slots=True)
class PeerJoinedRoom:
    """A peer joined a room."""

    peer: PeerInfo
    room: str


@dataclass(frozen=True, slots=True)
class PeerLeftRoom:
    """A peer left a room."""

    peer: PeerInfo
    room: str


@dataclass(frozen=True, slots=True)
class PeerUnreachable:
    """A peer went silent past the unreachable timeout and did not answer pings."""

    peer: PeerInfo


@dataclass(frozen=True, slots=True)
class PeerReachable:
    """An unreachable peer was heard again."""

    peer: PeerInfo


@dataclass(frozen=True, slots=True)
class PeerLeft:
    """A peer was removed: reason is "bye" (it said goodbye) or "timeout" (silent too long)."""

    peer: PeerInfo
    reason: str


@dataclass(frozen=True, slots=True)
class ChatReceived:
    """A room message from another peer."""

    peer_id: str
    nick: str
    room: str
    text: str
    seq: int
    late: bool = False  # arrived after a later message of its peer (repaired or reordered)
    # The sender's instance: with peer_id and seq it names the message (history de-duplicates
    # on it). Not compared: two events of one message are equal whoever built them.
    instance: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class NoticeReceived:
    """A notice to every peer on the LAN."""

    peer_id: str
    nick: str
    text: str
    seq: int
    late: bool = False  # arrived after a later message of its peer (repaired or reordered)


@dataclass(frozen=True, slots=True)
class DirectReceived:
    """A direct message to this node."""

    peer_id: str
    nick: str
    text: str
    msg_id: int


@dataclass(frozen=True, slots=True)
class DirectDelivered:
    """A direct message this node sent was acknowledged by its recipient."""

    msg_id: int
    peer_id: str
    attempts: int


@dataclass(frozen=True, slots=True)
class DirectFailed:
    """No acknowledgement came for a direct message after every retry.

    `peer_alive` tells the two cases apart honestly: True means the peer was
    heard during the retries, so the message may well have arrived and only the
    acknowledgements were lost ("unconfirmed"); False means nothing was heard.
    """

    msg_id: int
    peer_id: str
    attempts: int
    peer_alive: bool


@dataclass(frozen=True, slots=True)
class NoticeAcknowledged:
    """A peer acknowledged one of this node's notices (once per peer and notice)."""

    seq: int
    peer_id: str


@dataclass(frozen=True, slots=True)
class UnauthenticatedReceived:
    """Datagrams from `address` were dropped because of a key mismatch (reported every 10 s).

    `why` says which: sealed with a key we lack, with an unknown key, failing
    authentication, or plain while this node requires a key.
    """

    address: str
    count: int
    why: str


@dataclass(frozen=True, slots=True)
class InterfacesChanged:
    """The node joined the group on new interfaces or left vanished ones ("eth0 10.0.0.5").

    Emitted by the `Node` adapter, which re-reads the interfaces every few seconds.
    `active` is every interface in use now; empty means none is usable: the node
    keeps running, reaches no one, and joins again when one comes back.
    """

    added: tuple[str, ...]
    removed: tuple[str, ...]
    active: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NetworkErrorReported:
    """The OS refused a send or a join on one interface; the node keeps running.

    Emitted by the `Node` adapter at most once per interface and error every
    10 s; `count` is how many such errors happened since the last report.
    `message` is one line for people: what failed, where, and the fix.
    """

    interface: str  # "eth0 10.0.0.5", or "" when no interface is involved
    errno: int
    count: int
    message: str


@dataclass(frozen=True, slots=True)
class MessagesLost:
    """Messages first_seq..last_seq of a peer could not be repaired (gone for good).

    Seqs number the peer's chat in every room and its notices, so some of the
    `count` may be chat of rooms this node does not show.
    """

    peer_id: str
    nick: str
    count: int
    first_seq: int
    last_seq: int


@dataclass(frozen=True, slots=True)
class HistoryRecalled:
    """A catch-up request for `room` ended: `count` earlier lines follow as ChatRecalled.

    `answers` is how many Recount datagrams arrived; 0 with count 0 means nobody
    answered (an empty room, or nobody kept anything that recent).
    """

    room: str
    count: int
    answers: int


@dataclass(frozen=True, slots=True)
class ChatRecalled:
    """A room message sent before this node joined, recalled from a peer (history).

    `age` is how many seconds before this event it was sent (the answering
    peer's measure); lines of one recall come oldest first, each sender's in seq order.
    """

    peer_id: str
    nick: str
    room: str
    text: str
    seq: int
    instance: int
    age: float


@dataclass(frozen=True, slots=True)
class PairSought:
    """Another peer started looking for a random partner (once per search of theirs)."""

    peer: PeerInfo


@dataclass(frozen=True, slots=True)
class Paired:
    """This node and `peer` agreed to a private one-to-one conversation."""

    peer: PeerInfo


@dataclass(frozen=True, slots=True)
class PairEnded:
    """The pair with `peer` is over.

    `reason`: "you left" (this node ended it), "partner left" (the partner did),
    "partner gone" (the partner left the LAN, timed out or restarted), or
    "unconfirmed" (the handshake's last step was lost; this node looks on).
    """

    peer: PeerInfo
    reason: str


@dataclass(frozen=True, slots=True)
class PairSearchExpired:
    """No partner was found within `waited` seconds; this node stopped looking."""

    waited: float


Event = (
    PeerJoined
    | PeerRestarted
    | PeerRenamed
    | PeerStatusChanged
    | PeerJoinedRoom
    | PeerLeftRoom
    | PeerUnreachable
    | PeerReachable
    | PeerLeft
    | ChatReceived
    | NoticeReceived
    | DirectReceived
    | DirectDelivered
    | DirectFailed
    | NoticeAcknowledged
    | UnauthenticatedReceived
    | MessagesLost
    | InterfacesChanged
    | NetworkErrorReported
    | HistoryRecalled
    | ChatRecalled
    | PairSought
    | Paired
    | PairEnded
    | PairSearchExpired
)
