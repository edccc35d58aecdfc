"""lanchat: serverless chat, presence and notices for a local network.

`Node`, the asyncio adapter, loads on first use (PEP 562), so importing the
package or its sans-I/O core pulls in no sockets, asyncio or terminal library.
"""

from typing import TYPE_CHECKING

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
    ChatRecalled,
    ChatReceived,
    DirectDelivered,
    DirectFailed,
    DirectReceived,
    Event,
    HistoryRecalled,
    InterfacesChanged,
    MessagesLost,
    NetworkErrorReported,
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

if TYPE_CHECKING:
    from lanchat.node import Node

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_GROUP",
    "DEFAULT_PORT",
    "ChatRecalled",
    "ChatReceived",
    "ClosedError",
    "ConfigError",
    "Datagram",
    "DirectDelivered",
    "DirectFailed",
    "DirectReceived",
    "Event",
    "HistoryRecalled",
    "Identity",
    "InterfaceError",
    "InterfacesChanged",
    "LanchatError",
    "MessagesLost",
    "NetworkError",
    "NetworkErrorReported",
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


def __getattr__(name: str) -> object:
    """The names that load I/O modules, imported when first asked for."""
    if name == "Node":
        from lanchat.node import Node

        return Node
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
