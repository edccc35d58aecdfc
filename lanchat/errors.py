"""lanchat's exceptions: one root, so callers (and the CLI) can catch them all.

    LanchatError
    ├── ConfigError          local misuse: bad group, port, nickname, text too long
    │   └── InterfaceError   no usable interface, or a named one that does not exist
    ├── PeerError            a peer name that matches no peer, or several
    ├── NetworkError         the operating system refused a socket operation
    └── ClosedError          the node was closed by its owner (not a network fault)

Bad *remote* input never raises: the core drops it and counts it
(`lanchat.codec.DecodeError` is internal to the receive path).
"""

from __future__ import annotations


class LanchatError(Exception):
    """Root of every error lanchat raises to its caller."""


class ConfigError(LanchatError, ValueError):
    """A local setting or argument is invalid."""


class InterfaceError(ConfigError):
    """No usable network interface, or a named interface cannot be used."""


class PeerError(LanchatError, LookupError):
    """A peer name matches no known peer, or more than one."""


class NetworkError(LanchatError, OSError):
    """The operating system refused a network operation."""

    def __str__(self) -> str:
        # The message already says what failed and why; "[Errno 98]" adds nothing for people.
        return str(self.strerror) if self.strerror else super().__str__()


class ClosedError(LanchatError):
    """The node was closed by its owner."""
