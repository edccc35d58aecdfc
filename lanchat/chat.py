"""The chat session behind `lanchat join`: typed lines in, node events out.

Pure parts, tested on their own: `parse_line` turns a line into a command,
`format_event` / `event_fragments` turn an event into a line, `sanitize` makes
every remote string safe to print, `format_peers` / `format_rooms` draw tables
and `completions` answers tab completion. `run_join` is the thin I/O loop
around them: a prompt_toolkit line on a terminal, plain lines otherwise.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import re
import sys
import threading
import unicodedata
import zlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, TextIO

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.output import ColorDepth
from prompt_toolkit.patch_stdout import patch_stdout
from prompt_toolkit.shortcuts import print_formatted_text
from prompt_toolkit.utils import get_cwidth

from lanchat import config as cfg
from lanchat import events as ev
from lanchat.codec import check_room
from lanchat.errors import LanchatError
from lanchat.history import RECENT_LINES, Entry
from lanchat.node import Node

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
    "SentDirect",
    "Who",
    "ansi",
    "completions",
    "entry_fragments",
    "event_fragments",
    "format_event",
    "format_peers",
    "format_rooms",
    "format_who",
    "help_lines",
    "nick_style",
    "parse_line",
    "plain",
    "read_lines",
    "run_join",
    "sanitize",
]

Fragments = list[tuple[str, str]]

# At exit, wait this long at most for direct messages still in flight: their
# retries give up after cfg.DIRECT_GIVE_UP (5 s), so 6 s sees every outcome.
SETTLE_TIMEOUT: Final = 6.0
# A notice is repeated over cfg.NOTICE_DELAYS (0.7 s); exiting sooner drops repeats.
_NOTICE_LINGER: Final = cfg.NOTICE_DELAYS[-1] + 0.05
# A nick, room or status change goes out at once in a heartbeat, repeated after
# cfg.ANNOUNCE_DELAYS[1] (0.03 s); stay for that first repeat in case of loss.
_ANNOUNCE_LINGER: Final = cfg.ANNOUNCE_DELAYS[1] + 0.05
# A chat line's receivers learn of its loss from the tail heartbeats (last at
# 0.5 s) and ask within NACK_BACKOFF (0.15 s): a scripted `join` that exits
# sooner cannot repair a line someone missed, and its goodbye makes them report
# it lost. So it stays that long after its last line (2 rounds of repair).
_CHAT_LINGER: Final = cfg.TAIL_BEAT_DELAYS[-1] + cfg.NACK_BACKOFF[1] + 2 * cfg.REPAIR_REPEATS[-1]
# Outcome lines quote this much of the direct message they report on.
_QUOTE_CHARS: Final = 40
# A notice stays pinned above the prompt this long (or until the next one): long
# enough to be read after a coffee, short enough not to hide the chat for good.
_NOTICE_PINNED: Final = 600.0
# A peer unreachable for a moment (a few heartbeats lost: at 20 % loss each peer
# is, ~3.5 times an hour) is not news: the chat says so only when it lasts 5 s,
# and then says when it is back. /who shows the state at any time.
UNREACHABLE_SHOWN_AFTER: Final = 5.0
# Direct messages in flight shown above the prompt; the rest are counted. Each
# settles within cfg.DIRECT_GIVE_UP (5 s), so only a burst ever reaches this.
_MAX_SHOWN_IN_FLIGHT: Final = 3
# Chunks read from stdin but not yet taken by the session; the reader thread
# waits past this, so a huge piped file is not read into memory at once.
_MAX_PENDING_CHUNKS: Final = 16
_READ_SIZE: Final = 65536

_NICK_COLOURS: Final = (
    "ansired",
    "ansigreen",
    "ansiyellow",
    "ansiblue",
    "ansimagenta",
    "ansicyan",
    "ansibrightred",
    "ansibrightgreen",
    "ansibrightyellow",
    "ansibrightblue",
    "ansibrightmagenta",
    "ansibrightcyan",
)
_TIME_STYLE: Final = "ansibrightblack"
_INFO_STYLE: Final = "ansibrightblack"
_NOTICE_STYLE: Final = "bold reverse"
_ERROR_STYLE: Final = "ansired bold"

# ------------------------------------------------------------------ sanitizing

_ESCAPES: Final = re.compile(
    r"""
      \x1b\[ [0-?]* [ -/]* [@-~]?          # CSI: cursor moves, colours, erase
    | \x1b\] [^\x07\x1b\x9c]* (?:\x07|\x1b\\|\x9c)?   # OSC: title, hyperlinks
    | \x1b [PX^_] [^\x1b\x9c]* (?:\x1b\\|\x9c)?       # DCS, SOS, PM, APC
    | \x1b [ -/]* [0-~]?                   # any other escape sequence
    | \x9b [0-?]* [ -/]* [@-~]?            # 8-bit CSI
    | [\x90\x98\x9d\x9e\x9f] [^\x07\x1b\x9c]* (?:\x07|\x9c)?  # 8-bit string controls
    """,
    re.VERBOSE,
)
# Explicit bidi embeddings, overrides and isolates can reorder what a line seems to say.
_BIDI_CONTROLS: Final = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_AS_SPACE: Final = frozenset("\t\n\v\f\r\x85\u2028\u2029")


def sanitize(text: str) -> str:
    """`text` safe for a terminal: no escape sequences or control characters, Unicode kept."""
    text = _ESCAPES.sub("", text)
    out: list[str] = []
    for ch in text:
        if ch in _AS_SPACE:
            out.append(" ")
        elif ch in _BIDI_CONTROLS:
            continue
        else:
            cat = unicodedata.category(ch)
            if cat == "Cc":
                continue
            out.append("\ufffd" if cat == "Cs" else ch)
    return "".join(out)


def nick_style(nick: str) -> str:
    """A colour for a nickname, the same in every run (a CRC, not the salted hash())."""
    return _NICK_COLOURS[zlib.crc32(nick.encode("utf-8", "replace")) % len(_NICK_COLOURS)]


# -------------------------------------------------------------------- commands


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


# ---------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class SentDirect:
    """A direct message this session sent, kept until its outcome is known."""

    nick: str
    text: str
    stamp: str = ""  # when it was sent (HH:MM:SS), for the line that updates in place


def direct_fragments(sent: SentDirect, state: str, detail: str = "") -> Fragments:
    """One own direct message with its delivery state: sent, delivered, unconfirmed, failed."""
    style = _STATE_STYLES.get(state, _INFO_STYLE)
    return [
        (_TIME_STYLE, sent.stamp),
        ("bold", f" [dm -> {sanitize(sent.nick)}] "),
        ("", sanitize(sent.text)),
        (style, f" ({state}{detail})"),
    ]


def _quote(text: str) -> str:
    text = sanitize(text)
    return text if len(text) <= _QUOTE_CHARS else text[: _QUOTE_CHARS - 1] + "…"


def _name(peer_id: str, nicks: Mapping[str, str] | None) -> str:
    nick = (nicks or {}).get(peer_id)
    return sanitize(nick) if nick is not None else peer_id[:8]


def event_fragments(
    event: ev.Event,
    now: datetime,
    *,
    sent: Mapping[int, SentDirect] | None = None,
    nicks: Mapping[str, str] | None = None,
) -> Fragments:
    """An event as styled (style, text) pieces; `sent` and `nicks` name the peers of acks."""
    head: Fragments = [(_TIME_STYLE, now.strftime("%H:%M:%S")), ("", " ")]
    match event:
        case ev.ChatReceived(nick=nick, room=room, text=text, late=late):
            return [
                *head,
                ("", f"[#{sanitize(room)}] "),
                (nick_style(nick), f"<{sanitize(nick)}>"),
                ("", f" {sanitize(text)}"),
                *([(_INFO_STYLE, " (late: repaired after loss)")] if late else []),
            ]
        case ev.ChatRecalled(nick=nick, room=room, text=text, age=age):
            then = (now - timedelta(seconds=age)).strftime("%H:%M:%S")
            return [
                (_TIME_STYLE, then),
                (_INFO_STYLE, f" [#{sanitize(room)}] <{sanitize(nick)}> {sanitize(text)}"),
                (_INFO_STYLE, " (earlier)"),
            ]
        case ev.HistoryRecalled(room=room, count=count):
            what = f"{count} earlier line{'s' if count != 1 else ''} of #{sanitize(room)}"
            return [*head, (_INFO_STYLE, f"--- {what} from peers:")]
        case ev.DirectReceived(nick=nick, text=text):
            return [
                *head,
                ("bold", "[dm] "),
                (nick_style(nick), f"<{sanitize(nick)}>"),
                ("", f" {sanitize(text)}"),
            ]
        case ev.NoticeReceived(nick=nick, text=text, late=late):
            body = f"*** NOTICE from {sanitize(nick)}: {sanitize(text)} ***"
            return [*head, (_NOTICE_STYLE, body + (" (late)" if late else ""))]
        case ev.MessagesLost(nick=nick, count=count):
            many = "messages" if count != 1 else "message"
            text = f"!!! {count} {many} from {sanitize(nick)} could not be repaired and were lost"
            return [*head, (_ERROR_STYLE, text)]
        case ev.DirectDelivered(msg_id=msg_id, peer_id=peer_id):
            target = (sent or {}).get(msg_id)
            to = sanitize(target.nick) if target else _name(peer_id, nicks)
            quote = f": {_quote(target.text)}" if target else ""
            return [*head, ("bold", f"[dm -> {to}] "), ("ansigreen", "delivered"), ("", quote)]
        case ev.DirectFailed(msg_id=msg_id, peer_id=peer_id, attempts=attempts):
            target = (sent or {}).get(msg_id)
            to = sanitize(target.nick) if target else _name(peer_id, nicks)
            quote = f": {_quote(target.text)}" if target else ""
            if event.peer_alive:
                outcome = ("ansiyellow", "unconfirmed (peer was alive; acknowledgements lost)")
            else:
                outcome = (_ERROR_STYLE, f"failed (no answer after {attempts} attempts)")
            return [*head, ("bold", f"[dm -> {to}] "), outcome, ("", quote)]
        case ev.NoticeAcknowledged(peer_id=peer_id):
            return [*head, (_INFO_STYLE, f"--- your notice was seen by {_name(peer_id, nicks)}")]
        case ev.UnauthenticatedReceived(address=address, count=count, why=why):
            text = f"!!! {count} datagram{'s' if count != 1 else ''} from {address} {why}"
            return [*head, (_ERROR_STYLE, text + " (check --key / --key-file)")]
        case ev.InterfacesChanged(added=added, removed=removed, active=active):
            return [*head, *_network_fragments(added, removed, active)]
        case ev.NetworkErrorReported(message=message):
            return [*head, (_ERROR_STYLE, f"!!! {sanitize(message)}")]
        case ev.PairSought() | ev.Paired() | ev.PairEnded() | ev.PairSearchExpired():
            return [*head, *_pair_fragments(event)]
    return [*head, *_peer_fragments(event)]


def _pair_fragments(
    event: ev.PairSought | ev.Paired | ev.PairEnded | ev.PairSearchExpired,
) -> Fragments:
    """Random pairing: someone looks, a pair formed or ended, nobody came."""
    match event:
        case ev.PairSought(peer=p):
            return [
                ("", "--- "),
                *_nick(p.nick),
                ("", " is looking for a partner: /random to pair"),
            ]
        case ev.Paired(peer=p):
            return [
                ("bold", "*** paired with "),
                *_nick(p.nick),
                ("bold", f" ({sanitize(p.host)}): what you type goes to them only; /leave ends it"),
            ]
        case ev.PairEnded(peer=p, reason="you left"):
            return [("", "--- you left the conversation with "), *_nick(p.nick)]
        case ev.PairEnded(peer=p, reason="partner left"):
            return [("", "--- "), *_nick(p.nick), ("", " left the conversation")]
        case ev.PairEnded(peer=p, reason="unconfirmed"):
            return [
                ("", "--- pairing with "),
                *_nick(p.nick),
                ("", " was not confirmed (datagrams lost); still looking"),
            ]
        case ev.PairEnded(peer=p, reason=reason):
            how = "is gone" if reason == "partner gone" else f"ended it ({sanitize(reason)})"
            return [("", "--- "), *_nick(p.nick), ("", f" {how}; the conversation is over")]
        case ev.PairSearchExpired(waited=waited):
            return [("", f"--- nobody paired with you in {waited:.0f}s; /random to try again")]


def _network_fragments(
    added: Sequence[str], removed: Sequence[str], active: Sequence[str]
) -> Fragments:
    """One line such as "network: eth1 10.0.1.5 joined; eth0 10.0.0.5 removed"."""
    changes = [f"{sanitize(where)} joined" for where in added]
    changes += [f"{sanitize(where)} removed" for where in removed]
    fragments: Fragments = [(_INFO_STYLE, f"--- network: {'; '.join(changes)}")]
    if not active:
        fragments.append((_ERROR_STYLE, " (no usable interface left: waiting for one)"))
    return fragments


def _nick(nick: str) -> Fragments:
    return [(nick_style(nick), sanitize(nick))]


def _peer_fragments(event: ev.Event) -> Fragments:
    """The membership events: who came, went or changed."""
    match event:
        case ev.PeerRenamed(peer=p, old_nick=old):
            return [("", "--- "), *_nick(old), ("", " is now "), *_nick(p.nick)]
        case ev.PeerJoined(peer=p):
            rooms = " ".join(f"#{sanitize(r)}" for r in p.rooms) or "no rooms"
            arrow, what = "-->", f" joined ({p.short_id} on {sanitize(p.host)}, in {rooms})"
        case ev.PeerLeft(peer=p, reason=reason):
            how = {"bye": "left", "timeout": "timed out"}.get(reason, f"left ({sanitize(reason)})")
            arrow, what = "<--", f" {how}"
        case ev.PeerRestarted(peer=p):
            arrow, what = "---", " restarted"
        case ev.PeerStatusChanged(peer=p) if p.status == "away":
            arrow, what = (
                "---",
                f" is away: {sanitize(p.status_text)}" if p.status_text else " is away",
            )
        case ev.PeerStatusChanged(peer=p):
            arrow, what = "---", " is back"
        case ev.PeerUnreachable(peer=p):
            arrow, what = "---", " is unreachable"
        case ev.PeerReachable(peer=p):
            arrow, what = "---", " is reachable again"
        case ev.PeerJoinedRoom(peer=p, room=room):
            arrow, what = "-->", f" joined #{sanitize(room)}"
        case ev.PeerLeftRoom(peer=p, room=room):
            arrow, what = "<--", f" left #{sanitize(room)}"
        case _:
            return [("", f"--- {type(event).__name__}")]
    return [("", f"{arrow} "), *_nick(p.nick), ("", what)]


_STATE_STYLES: Final = {
    "sent": _INFO_STYLE,
    "delivered": "ansigreen",
    "unconfirmed": "ansiyellow",
    "failed": _ERROR_STYLE,
}


def entry_fragments(entry: Entry, *, dim: bool = False) -> Fragments:
    """A stored message as styled pieces stamped with date and time; `dim` greys it all."""
    nick = sanitize(entry.nick)
    text = sanitize(entry.text)
    body: Fragments
    match entry.kind, entry.direction:
        case "chat", _:
            room = sanitize(entry.room or "")
            body = [("", f"[#{room}] "), (nick_style(entry.nick), f"<{nick}>"), ("", f" {text}")]
        case "direct", "out":
            state = entry.state or "sent"
            style = _STATE_STYLES.get(state, _INFO_STYLE)
            body = [("bold", f"[dm -> {nick}] "), ("", text), (style, f" ({sanitize(state)})")]
        case "direct", _:
            body = [("bold", "[dm] "), (nick_style(entry.nick), f"<{nick}>"), ("", f" {text}")]
        case "notice", "out":
            body = [(_NOTICE_STYLE, f"*** NOTICE sent: {text} ***")]
        case "notice", _:
            body = [(_NOTICE_STYLE, f"*** NOTICE from {nick}: {text} ***")]
        case "lost", _:
            count = entry.extra.get("count")
            what = (
                f"{count} message{'s' if count != 1 else ''}"
                if isinstance(count, int)
                else "messages"
            )
            body = [(_ERROR_STYLE, f"!!! {what} from {nick} lost")]
        case _:
            body = [("", f"--- {sanitize(entry.kind)}: {text}")]
    if entry.extra.get("recalled"):
        body.append((_INFO_STYLE, " (recalled)"))  # from peers, sent before this node joined
    if dim:
        body = [(_INFO_STYLE, piece) for _, piece in body]
    stamp = datetime.fromtimestamp(entry.time).strftime("%Y-%m-%d %H:%M:%S")
    return [(_TIME_STYLE, stamp), ("", " "), *body]


def plain(fragments: Fragments) -> str:
    """The text of styled fragments."""
    return "".join(text for _, text in fragments)


# SGR codes of the style words this module uses (ECMA-48 8.3.117).
_SGR: Final = {
    "bold": 1, "reverse": 7, "ansiblack": 30, "ansired": 31, "ansigreen": 32,
    "ansiyellow": 33, "ansiblue": 34, "ansimagenta": 35, "ansicyan": 36, "ansigray": 37,
    "ansibrightblack": 90, "ansibrightred": 91, "ansibrightgreen": 92,
    "ansibrightyellow": 93, "ansibrightblue": 94, "ansibrightmagenta": 95,
    "ansibrightcyan": 96, "ansiwhite": 97,
}  # fmt: skip


def ansi(fragments: Fragments) -> str:
    """Styled fragments as text with ANSI colour codes (for `--colour always` into a pipe)."""
    out = []
    for style, text in fragments:
        codes = ";".join(str(_SGR[word]) for word in style.split() if word in _SGR)
        out.append(f"\x1b[{codes}m{text}\x1b[0m" if codes else text)
    return "".join(out)


def format_event(
    event: ev.Event,
    now: datetime,
    *,
    sent: Mapping[int, SentDirect] | None = None,
    nicks: Mapping[str, str] | None = None,
) -> str:
    """An event as one plain line (see `event_fragments`)."""
    return plain(event_fragments(event, now, sent=sent, nicks=nicks))


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - get_cwidth(text))


def format_table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows as aligned columns, measured by display width (wide characters count 2)."""
    widths = [max(get_cwidth(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(_pad(cell, w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def format_peers(peers: Sequence[ev.PeerInfo], now: float) -> list[str]:
    """The /peers table; `now` is the node's clock (the one `last_heard` uses)."""
    if not peers:
        return ["no peers yet"]
    header = ("NICK", "ID", "HOST", "ADDRESS", "ROOMS", "STATUS", "STATE", "HEARD")
    rows = [header]
    for p in peers:
        status = p.status + (f": {p.status_text}" if p.status_text else "")
        rows.append(
            (
                sanitize(p.nick),
                p.short_id,
                sanitize(p.host),
                f"{sanitize(p.address)}:{p.port}",
                " ".join(f"#{sanitize(r)}" for r in p.rooms) or "-",
                sanitize(status),
                sanitize(p.state),
                f"{max(0.0, now - p.last_heard):.1f}s ago",
            )
        )
    return format_table(rows)


def format_who(
    room: str, peers: Sequence[ev.PeerInfo], now: float, me: ev.PeerInfo | None = None
) -> list[str]:
    """The /who roster of one room: nickname, status and when last heard; `me` first."""
    members = [p for p in peers if room in p.rooms]
    count = len(members) + (me is not None)
    title = f"#{sanitize(room)}: {count} {'person' if count == 1 else 'people'}"
    if not count:
        return [f"{title} (nobody here)"]
    rows = [("NICK", "STATUS", "HEARD")]
    for p in [*([me] if me is not None else []), *members]:
        status = p.status + (f": {p.status_text}" if p.status_text else "")
        if p.state != "alive":
            status += f" ({p.state})"
        heard = "(you)" if p is me else f"{max(0.0, now - p.last_heard):.1f}s ago"
        rows.append((sanitize(p.nick), sanitize(status), heard))
    return [title, *(f"  {line}" for line in format_table(rows))]


def format_rooms(
    rooms: Sequence[str], current: str | None, peers: Sequence[ev.PeerInfo]
) -> list[str]:
    """The /rooms list: joined rooms (current marked with *) and who is in each."""
    lines = []
    for room in rooms:
        mark = "*" if room == current else " "
        who = sorted(sanitize(p.nick) for p in peers if room in p.rooms)
        lines.append(f"{mark} #{sanitize(room)}: {', '.join(who) if who else '(nobody else)'}")
    if not rooms:
        lines.append("you are in no room; /join ROOM")
    others = sorted({r for p in peers for r in p.rooms} - set(rooms))
    for room in others:
        who = sorted(sanitize(p.nick) for p in peers if room in p.rooms)
        lines.append(f"  #{sanitize(room)} (not joined): {', '.join(who)}")
    return lines


# ------------------------------------------------------------------------ I/O


async def read_lines(fd: int) -> AsyncIterator[str]:
    """Lines (without line ends) read from a file descriptor by a daemon thread.

    A thread works for pipes, terminals and regular files alike (the event loop
    cannot poll regular files), and raw `os.read` holds no buffered-I/O lock a
    daemon thread could leave taken at interpreter exit.
    """
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[bytes] = asyncio.Queue()
    room_for = threading.Semaphore(_MAX_PENDING_CHUNKS)

    def reader() -> None:
        while True:
            room_for.acquire()
            try:
                data = os.read(fd, _READ_SIZE)
            except OSError:
                data = b""
            try:
                loop.call_soon_threadsafe(chunks.put_nowait, data)
            except RuntimeError:  # the loop is closed: nobody reads any more
                return
            if not data:
                return

    threading.Thread(target=reader, name="lanchat-stdin", daemon=True).start()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    while True:
        data = await chunks.get()
        room_for.release()
        pending += decoder.decode(data, final=not data)
        *complete, pending = pending.split("\n")
        for line in complete:
            yield line.removesuffix("\r")
        if not data:
            if pending:
                yield pending.removesuffix("\r")
            return


class _Session:
    """One chat session's state and command handling, printing through `show`."""

    def __init__(
        self, node: Node, room: str, *, out: TextIO | None, interactive: bool, colour: bool
    ) -> None:
        self.node = node
        self.room: str | None = room
        self.out = out
        self.interactive = interactive
        self.colour = colour
        self.sent: dict[int, SentDirect] = {}
        self.changed = asyncio.Event()
        self.linger_until = float("-inf")  # loop time before which exiting drops repeats
        self.history_errors = 0  # failed history writes already reported
        self.catch_up_rooms = True  # ask peers for a room's recent lines on joining it
        self.away: str | None = None  # our own away text, for /who
        # The last notice, pinned above the prompt (interactive) until a newer one or
        # _NOTICE_PINNED seconds pass: (loop time, its line).
        self.pinned: tuple[float, Fragments] | None = None
        # Unreachable peers not shown yet (their line is due later), and those shown.
        self.held: dict[str, asyncio.TimerHandle] = {}
        self.shown_unreachable: set[str] = set()

    def _flap_settled(self, event: ev.Event) -> bool:
        """Whether to show an event now: brief unreachability is held back, then dropped."""
        match event:
            case ev.PeerUnreachable(peer=p):
                if p.peer_id not in self.held and p.peer_id not in self.shown_unreachable:
                    loop = asyncio.get_running_loop()
                    self.held[p.peer_id] = loop.call_later(
                        UNREACHABLE_SHOWN_AFTER, self._unreachable_lasted, event
                    )
                return False
            case ev.PeerReachable(peer=p) | ev.PeerLeft(peer=p) | ev.PeerRestarted(peer=p):
                handle = self.held.pop(p.peer_id, None)
                if handle is not None:
                    handle.cancel()
                    return not isinstance(event, ev.PeerReachable)  # back before it was news
                shown = p.peer_id in self.shown_unreachable
                self.shown_unreachable.discard(p.peer_id)
                return shown or not isinstance(event, ev.PeerReachable)
        return True

    def _unreachable_lasted(self, event: ev.PeerUnreachable) -> None:
        self.held.pop(event.peer.peer_id, None)
        self.shown_unreachable.add(event.peer.peer_id)
        self.show(event_fragments(event, datetime.now()))

    # -- output

    def show(self, fragments: Fragments) -> None:
        if self.interactive:
            # No colour still keeps bold and reverse: they are not colours (no-color.org).
            depth = ColorDepth.DEPTH_4_BIT if self.colour else ColorDepth.DEPTH_1_BIT
            print_formatted_text(FormattedText(fragments), color_depth=depth)
        else:
            out = self.out or sys.stdout
            out.write((ansi(fragments) if self.colour else plain(fragments)) + "\n")
            out.flush()

    def info(self, text: str) -> None:
        self.show([(_TIME_STYLE, self._stamp()), ("", " "), (_INFO_STYLE, f"--- {text}")])

    def error(self, text: str) -> None:
        self.show([(_ERROR_STYLE, f"error: {sanitize(text)}")])

    def lines(self, lines: Iterable[str]) -> None:
        """Several plain lines in one print: a table shows whole, with one redraw."""
        text = "\n".join(lines)
        if text:
            self.show([("", text)])

    def show_history(self, room: str, limit: int = RECENT_LINES) -> None:
        """The last lines of a room from the message history, greyed, with their dates."""
        store = self.node.history
        entries = store.recent(room, limit) if store is not None else []
        if entries:
            self.info(f"last {len(entries)} line(s) of #{sanitize(room)} from history:")
        for entry in entries:
            self.show(entry_fragments(entry, dim=True))

    async def catch_up(self, room: str) -> None:
        """Ask the room's members for the lines the history lacks (shown as they come)."""
        if not self.catch_up_rooms:
            return
        try:
            await self.node.recall(room)
        except LanchatError as exc:
            self.error(f"cannot catch up on #{room}: {exc}")

    def check_history(self) -> None:
        """Report the first failed history write (the chat goes on without it)."""
        store = self.node.history
        if store is None or store.errors <= self.history_errors:
            return
        if not self.history_errors:
            self.error(f"cannot save to the message history: {store.last_error}")
        self.history_errors = store.errors

    @staticmethod
    def _stamp() -> str:
        return datetime.now().strftime("%H:%M:%S")

    def prompt(self) -> str:
        room = f"#{self.room}" if self.room else "no room"
        with contextlib.suppress(LanchatError):
            partner = self.node.partner
            if partner is not None:
                return f"[private: {sanitize(partner.nick)}] {self.node.nick}> "
            if self.node.pair_state == "seeking":
                room += ", seeking"
        return f"[{room}] {self.node.nick}> "

    def prompt_fragments(self, columns: int) -> Fragments:
        """What stands above the typed line: the pinned notice, direct messages in
        flight (their state changes in place), then the prompt itself."""
        above: list[Fragments] = []
        now = asyncio.get_running_loop().time()
        if self.pinned is not None and now - self.pinned[0] < _NOTICE_PINNED:
            above.append(self.pinned[1])
        flying = list(self.sent.values())
        for sent in flying[-_MAX_SHOWN_IN_FLIGHT:]:
            above.append(direct_fragments(sent, "sent"))
        if len(flying) > _MAX_SHOWN_IN_FLIGHT:
            more = len(flying) - _MAX_SHOWN_IN_FLIGHT
            above.append([(_INFO_STYLE, f"         (+{more} more direct messages in flight)")])
        out: Fragments = []
        for line in above:
            out += [*_fit(line, columns - 1), ("", "\n")]
        return [*out, ("", self.prompt())]

    # -- events

    async def pump(self, queue: asyncio.Queue[ev.Event]) -> None:
        while True:
            self.on_event(await queue.get())

    def on_event(self, event: ev.Event) -> None:
        if not self._flap_settled(event):
            return
        if (
            isinstance(event, ev.ChatReceived | ev.ChatRecalled)
            and event.room not in self.node.rooms
        ):
            return  # queued before we left the room
        if isinstance(event, ev.HistoryRecalled) and not event.count:
            return  # nothing earlier from peers: nothing to say
        nicks: dict[str, str] | None = None
        if isinstance(event, ev.DirectDelivered | ev.DirectFailed | ev.NoticeAcknowledged):
            nicks = {p.peer_id: p.nick for p in self.node.peers()}
        fragments = event_fragments(event, datetime.now(), sent=self.sent, nicks=nicks)
        if isinstance(event, ev.NoticeReceived):
            self.pinned = (asyncio.get_running_loop().time(), fragments)
        outcome = self.sent.get(event.msg_id) if isinstance(event, _OUTCOMES) else None
        if self.interactive and outcome is not None:
            # The "sent" line above the prompt turns into its final state, in place.
            self.show(direct_fragments(outcome, *_outcome_state(event)))  # type: ignore[arg-type]
        else:
            self.show(fragments)
        if isinstance(event, ev.PairEnded) and event.reason != "unconfirmed":
            self.info(f"back in #{self.room}" if self.room else "you are in no room")
        self.check_history()
        if (
            isinstance(event, ev.DirectDelivered | ev.DirectFailed)
            and self.sent.pop(event.msg_id, None) is not None
        ):
            self.changed.set()

    def linger(self, seconds: float) -> None:
        """Stay at least `seconds` longer at exit: repeats of what was just sent are due."""
        now = asyncio.get_running_loop().time()
        self.linger_until = max(self.linger_until, now + seconds)

    async def settle(self, timeout: float) -> None:
        """Wait (bounded) for direct messages in flight and for repeats still to go out."""
        loop = asyncio.get_running_loop()
        if self.sent:
            self.info(f"waiting up to {timeout:.0f}s for {len(self.sent)} direct message(s)")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.sent:
                    self.changed.clear()
                    await self.changed.wait()
                await asyncio.sleep(max(0.0, self.linger_until - loop.time()))
        if self.sent:
            self.info(f"{len(self.sent)} direct message(s) still unconfirmed at exit")

    # -- commands

    async def handle(self, line: str) -> bool:
        """Carry out one typed line; False when the session should end."""
        command = parse_line(line)
        if command is None:
            return True
        if isinstance(command, Quit):
            return False
        try:
            await self._run(command)
        except LanchatError as exc:
            self.error(str(exc))
        self.check_history()
        return True

    async def _run(self, command: Command) -> None:
        node = self.node
        match command:
            case Say(text=text):
                if self.room is None:
                    self.error("you are in no room; /join ROOM first")
                    return
                if node.partner is not None:
                    await self._direct(node.partner, text)
                    return
                seq = await node.say(self.room, text)
                self.linger(_CHAT_LINGER)
                echo = ev.ChatReceived(node.peer_id, node.nick, self.room, text, seq)
                self.show(event_fragments(echo, datetime.now()))
            case Msg(peer=name, text=text):
                await self._direct(await node.lookup(name), text)
            case Notice(text=text):
                await node.notice(text)
                self.linger(_NOTICE_LINGER)
                self.show(
                    [
                        (_TIME_STYLE, self._stamp()),
                        (_NOTICE_STYLE, f" *** NOTICE sent: {sanitize(text)} ***"),
                    ]
                )
            case Nick(nick=nick):
                await node.set_nick(nick)
                self.linger(_ANNOUNCE_LINGER)
                self.info(f"you are now {sanitize(node.nick)}")
            case Join(room=room):
                room = check_room(room)
                was_in = room in node.rooms
                await node.join_room(room)
                self.linger(_ANNOUNCE_LINGER)
                self.room = room
                self.info(f"{'talking in' if was_in else 'joined'} #{room}")
                if not was_in:
                    self.show_history(room)
                    await self.catch_up(room)
            case Leave(room=name):
                await self._leave(name)
            case Away(text=text):
                await node.set_away(text)
                self.away = text
                self.linger(_ANNOUNCE_LINGER)
                self.info(f"you are away: {sanitize(text)}" if text else "you are away")
            case Back():
                await node.set_away(None)
                self.away = None
                self.linger(_ANNOUNCE_LINGER)
                self.info("you are back")
            case Who(room=name):
                where = check_room(name) if name is not None else self.room
                if where is None:
                    self.error("you are in no room; /who ROOM")
                    return
                me = self._me() if where in node.rooms else None
                now = asyncio.get_running_loop().time()
                self.lines(format_who(where, node.peers(), now, me))
            case Random():
                await self._random()
            case Peers():
                self.lines(format_peers(node.peers(), asyncio.get_running_loop().time()))
            case Rooms():
                self.lines(format_rooms(node.rooms, self.room, node.peers()))
            case Help():
                self.lines(["commands:", *help_lines()])
            case Invalid(reason=reason):
                self.error(reason)

    async def _direct(self, peer: ev.PeerInfo, text: str) -> None:
        """Send a direct message; its state shows as it changes (sent, then the outcome)."""
        msg_id = await self.node.send_direct(peer.peer_id, text)
        self.sent[msg_id] = sent = SentDirect(peer.nick, text, self._stamp())
        if not self.interactive:  # a terminal shows it above the prompt until the outcome
            self.show(direct_fragments(sent, "sent"))

    def _me(self) -> ev.PeerInfo:
        """This node as a /who row."""
        node = self.node
        status, text = ("away", self.away) if self.away is not None else ("online", "")
        now = asyncio.get_running_loop().time()
        return ev.PeerInfo(
            node.peer_id, 0, node.nick, "", "", 0, (), node.rooms, status, text, "alive", now, 0.0
        )

    async def _random(self) -> None:
        partner = self.node.partner
        if partner is not None:
            self.info(f"you are talking with {sanitize(partner.nick)}; /leave first")
        elif await self.node.seek_partner():
            self.info("looking for a partner: whoever else types /random; /leave to stop")
        else:
            self.info("still looking for a partner; /leave to stop")

    async def _leave(self, name: str | None) -> None:
        if name is None and self.node.pair_state != "idle":
            was_paired = self.node.partner is not None
            await self.node.end_pair()
            self.linger(_ANNOUNCE_LINGER)
            if not was_paired:
                self.info("stopped looking for a partner")
            return
        room = check_room(name) if name is not None else self.room
        if room is None or room not in self.node.rooms:
            self.error(f"you are not in #{sanitize(room)}" if room else "you are in no room")
            return
        await self.node.leave_room(room)
        self.linger(_ANNOUNCE_LINGER)
        if room == self.room:
            self.room = self.node.rooms[0] if self.node.rooms else None
        now_in = f"; talking in #{self.room}" if self.room else "; you are in no room now"
        self.info(f"left #{room}{now_in}")


_OUTCOMES: Final = (ev.DirectDelivered, ev.DirectFailed)


def _outcome_state(event: ev.DirectDelivered | ev.DirectFailed) -> tuple[str, str]:
    """A direct message's final state and its detail, as the in-place line shows them."""
    if isinstance(event, ev.DirectDelivered):
        return "delivered", ""
    if event.peer_alive:
        return "unconfirmed", ": peer was alive; acknowledgements lost"
    return "failed", f": no answer after {event.attempts} attempts"


def _fit(fragments: Fragments, columns: int) -> Fragments:
    """Fragments cut to one line of `columns` cells (an ellipsis marks the cut)."""
    out: Fragments = []
    room = max(1, columns)
    for style, text in fragments:
        width = get_cwidth(text)
        if width <= room:
            out.append((style, text))
            room -= width
            continue
        cut = ""
        for ch in text:
            if get_cwidth(cut + ch) > room - 1:
                break
            cut += ch
        out.append((style, cut + "…"))
        break
    return out


class _ChatCompleter(Completer):
    """Tab completion of commands, nicknames and rooms."""

    def __init__(self, session: _Session) -> None:
        self.session = session

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterable[Completion]:
        text = document.text_before_cursor
        node = self.session.node
        try:
            peers = node.peers()
        except LanchatError:
            return
        rooms = {*node.rooms, *(r for p in peers for r in p.rooms)}
        word = text.split(" ")[-1]
        for choice in completions(text, (p.nick for p in peers), rooms):
            yield Completion(choice, start_position=-len(word), display=sanitize(choice))


async def _interactive(session: _Session) -> None:
    def message() -> FormattedText:
        return FormattedText(session.prompt_fragments(prompt.app.output.get_size().columns))

    prompt: PromptSession[str] = PromptSession(
        history=InMemoryHistory(),
        completer=_ChatCompleter(session),
        complete_while_typing=False,
        erase_when_done=True,  # the line is echoed once, formatted, by the session
        color_depth=None if session.colour else ColorDepth.DEPTH_1_BIT,
    )
    with patch_stdout():
        session.info("type /help for commands, /quit to leave")
        while True:
            try:
                line = await prompt.prompt_async(message)
            except (EOFError, KeyboardInterrupt):
                break
            if not await session.handle(line):
                break
        await session.settle(SETTLE_TIMEOUT)


async def _batch(session: _Session, lines: AsyncIterable[str]) -> None:
    iterator = aiter(lines)
    try:
        async for line in iterator:
            if not await session.handle(line):
                break
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
    await session.settle(SETTLE_TIMEOUT)


async def run_join(
    node: Node,
    *,
    interactive: bool,
    room: str,
    lines: AsyncIterable[str] | None = None,
    out: TextIO | None = None,
    colour: bool | None = None,
    catch_up: bool = True,
) -> int:
    """Chat on a started node until /quit, Ctrl-C/Ctrl-D or end of input; returns 0.

    With the node's history on, the last lines of each joined room are shown
    first (the current room last, nearest the prompt). `lines` and `out`
    replace stdin and stdout in non-interactive mode (tests). `colour`: ANSI
    colours on or off (default: on in interactive mode only). With `catch_up`,
    the room's members are asked for what was said before (and after the
    history's last line): those lines follow, marked "(earlier)", within a second.
    """
    room = check_room(room)
    if room not in node.rooms:
        await node.join_room(room)
    colour = interactive if colour is None else colour
    session = _Session(node, room, out=out, interactive=interactive, colour=colour)
    session.catch_up_rooms = catch_up
    for joined in sorted(node.rooms, key=lambda r: r == room):
        session.show_history(joined)
    queue = node.subscribe()
    for joined in sorted(node.rooms, key=lambda r: r == room):
        await session.catch_up(joined)
    pump = asyncio.create_task(session.pump(queue), name="lanchat-chat-events")
    try:
        if interactive:
            await _interactive(session)
        else:
            await _batch(session, lines if lines is not None else read_lines(sys.stdin.fileno()))
    finally:
        pump.cancel()
        await asyncio.wait([pump])
        for handle in session.held.values():  # no line after the session ended
            handle.cancel()
        node.unsubscribe(queue)
        if not pump.cancelled() and (failure := pump.exception()) is not None:
            raise failure  # a bug in the event display: do not hide it
    return 0
