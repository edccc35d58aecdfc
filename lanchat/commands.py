"""What a typed chat line means: `parse_line`, the command it gives, `completions`, `help_lines`.

Pure: no I/O, no terminal library; the session in `lanchat.chat` carries the commands out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

__all__ = [
    "COMMANDS",
    "Away",
    "Back",
    "Command",
    "Help",
    "Invalid",
    "Join",
    "Leave",
    "Msg",
    "Nick",
    "Notice",
    "Peers",
    "Quit",
    "Random",
    "Rooms",
    "Say",
    "Who",
    "completions",
    "help_lines",
    "parse_line",
]


@dataclass(frozen=True, slots=True)
class Say:
    """Chat to the current room."""

    text: str


@dataclass(frozen=True, slots=True)
class Help:
    """Show the commands."""


@dataclass(frozen=True, slots=True)
class Nick:
    """Change nickname."""

    nick: str


@dataclass(frozen=True, slots=True)
class Msg:
    """Send a direct message."""

    peer: str
    text: str


@dataclass(frozen=True, slots=True)
class Notice:
    """Send a notice to everyone."""

    text: str


@dataclass(frozen=True, slots=True)
class Peers:
    """Show the peer table."""


@dataclass(frozen=True, slots=True)
class Join:
    """Join a room and make it current."""

    room: str


@dataclass(frozen=True, slots=True)
class Leave:
    """Leave a room (None: the current one)."""

    room: str | None


@dataclass(frozen=True, slots=True)
class Rooms:
    """Show joined rooms and who is in them."""


@dataclass(frozen=True, slots=True)
class Away:
    """Mark away, with an optional text."""

    text: str


@dataclass(frozen=True, slots=True)
class Back:
    """Mark back online."""


@dataclass(frozen=True, slots=True)
class Quit:
    """End the session."""


@dataclass(frozen=True, slots=True)
class Who:
    """Show who is in a room (None: the current one)."""

    room: str | None


@dataclass(frozen=True, slots=True)
class Random:
    """Ask to be paired with another peer who asked too, for a private conversation."""


@dataclass(frozen=True, slots=True)
class Invalid:
    """A line that is no valid command; `reason` says why."""

    reason: str


Command = (
    Say | Help | Nick | Msg | Notice | Peers | Join | Leave | Rooms | Away | Back | Quit
    | Who | Random | Invalid
)  # fmt: skip

_HELP: Final = (
    ("TEXT", "chat to the current room (start with // to send a leading /)"),
    ("/msg PEER TEXT", "direct message to a nickname or peer id prefix"),
    ("/notice TEXT", "notice to everyone on the LAN, shown prominently"),
    ("/nick NEW", "change your nickname"),
    ("/join ROOM", "join a room and make it current"),
    ("/leave [ROOM]", "leave a room (default: the current one, or the private chat)"),
    ("/rooms", "joined rooms and who is in them"),
    ("/who [ROOM]", "who is in a room, their status and when last heard"),
    ("/random", "pair up with someone else who types /random, privately"),
    ("/peers", "every known peer"),
    ("/away [TEXT]", "mark yourself away"),
    ("/back", "mark yourself back"),
    ("/help", "this list"),
    ("/quit", "leave the chat (also Ctrl-D, Ctrl-C)"),
)
COMMANDS: Final = (
    "/away",
    "/back",
    "/help",
    "/join",
    "/leave",
    "/msg",
    "/nick",
    "/notice",
    "/peers",
    "/quit",
    "/random",
    "/rooms",
    "/who",
)


def help_lines() -> list[str]:
    """The /help text, one line per command."""
    width = max(len(usage) for usage, _ in _HELP)
    return [f"  {usage.ljust(width)}  {what}" for usage, what in _HELP]


def parse_line(line: str) -> Command | None:
    """The command a typed line means, or None for a blank line."""
    line = line.rstrip("\r\n")
    if not line.strip():
        return None
    if not line.startswith("/"):
        return Say(line)
    if line.startswith("//"):
        return Say(line[1:])
    words = line[1:].split(maxsplit=1)
    if not words or line[1].isspace():
        return Invalid("empty command; try /help")
    name = words[0].lower()
    rest = words[1].rstrip() if len(words) > 1 else ""
    args = rest.split()
    if name == "help":
        return Help()
    if name in ("quit", "exit"):
        return Quit() if not args else Invalid("usage: /quit")
    if name in ("peers", "rooms", "back"):
        if args:
            return Invalid(f"usage: /{name} (no arguments)")
        no_args: dict[str, Command] = {"peers": Peers(), "rooms": Rooms(), "back": Back()}
        return no_args[name]
    if name == "nick":
        if len(args) != 1:
            return Invalid("usage: /nick NEW (one word, no spaces)")
        return Nick(args[0])
    if name == "msg":
        peer_text = rest.split(maxsplit=1)
        if len(peer_text) != 2:
            return Invalid("usage: /msg PEER TEXT")
        return Msg(peer_text[0], peer_text[1])
    if name == "notice":
        return Notice(rest) if rest else Invalid("usage: /notice TEXT")
    if name == "join":
        if len(args) != 1:
            return Invalid("usage: /join ROOM")
        return Join(args[0])
    if name == "leave":
        if len(args) > 1:
            return Invalid("usage: /leave [ROOM]")
        return Leave(args[0] if args else None)
    if name == "away":
        return Away(rest)
    if name == "who":
        if len(args) > 1:
            return Invalid("usage: /who [ROOM]")
        return Who(args[0] if args else None)
    if name == "random":
        return Random() if not args else Invalid("usage: /random (no arguments)")
    return Invalid(f"unknown command /{words[0]}; try /help")


def completions(text: str, nicks: Iterable[str], rooms: Iterable[str]) -> list[str]:
    """Words completing the last word of `text`: commands, then rooms or nicknames.

    A command, and the peer of /msg, complete with a trailing space: the next word follows.
    """
    words = text.split(" ")
    word = words[-1]
    first = words[0].lower()
    if len(words) == 1 and word.startswith("/"):
        return [f"{c} " for c in COMMANDS if c.startswith(word.lower())]
    if len(words) == 2 and first in ("/join", "/leave", "/who"):
        hash_ = "#" if word.startswith("#") else ""
        bare = word.removeprefix("#").casefold()
        return [hash_ + r for r in sorted(set(rooms)) if r.casefold().startswith(bare)]
    if len(words) > 1 and first in ("/join", "/leave", "/nick", "/who", "/random"):
        return []
    msg_peer = len(words) == 2 and first == "/msg"
    if not word and not msg_peer:
        return []
    folded = word.casefold()
    found = [n for n in sorted(set(nicks)) if n.casefold().startswith(folded)]
    return [f"{n} " for n in found] if msg_peer else found
