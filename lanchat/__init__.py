"""lanchat: serverless chat, presence and notices for a local network."""

from lanchat.config import DEFAULT_GROUP, DEFAULT_PORT, NodeConfig
from lanchat.core import Datagram, Identity, NodeCore
from lanchat.errors import (
    ClosedError,
    ConfigError,
    InterfaceError,
    LanchatError,
    NetworkError,
    PeerError,
)
from lanchat.events import (
    ChatReceived,
    DirectDelivered,
    DirectFailed,
    DirectReceived,
    Event,
    InterfacesChanged,
    MessagesLost,
    NoticeAcknowledged,
    NoticeReceived,
    PeerInfo,
    PeerJoined,
    PeerJoinedRoom,
    PeerLeft,
    PeerLeftRoom,
    PeerReachable,
    PeerRenamed,
    PeerRestarted,
    PeerStatusChanged,
    PeerUnreachable,
    UnauthenticatedReceived,
)
from lanchat.node import Node

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_GROUP",
    "DEFAULT_PORT",
    "ChatReceived",
    "ClosedError",
    "ConfigError",
    "Datagram",
    "DirectDelivered",
    "DirectFailed",
    "DirectReceived",
    "Event",
    "Identity",
    "InterfaceError",
    "InterfacesChanged",
    "LanchatError",
    "MessagesLost",
    "NetworkError",
    "Node",
    "NodeConfig",
    "NodeCore",
    "NoticeAcknowledged",
    "NoticeReceived",
    "PeerError",
    "PeerInfo",
    "PeerJoined",
    "PeerJoinedRoom",
    "PeerLeft",
    "PeerLeftRoom",
    "PeerReachable",
    "PeerRenamed",
    "PeerRestarted",
    "PeerStatusChanged",
    "PeerUnreachable",
    "UnauthenticatedReceived",
    "__version__",
]
