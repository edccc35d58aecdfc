"""How chat shows things: events, stored lines and tables as styled fragments or plain lines.

Pure (no I/O, no terminal library): every function takes what it shows, and the
time where it shows one, as arguments. A fragment list is prompt_toolkit's
formatted-text shape, [(style, text), ...]; `plain` and `ansi` turn it into a
string. `sanitize` makes every remote string safe for a terminal, once, here.
"""

from __future__ import annotations

import json
import re
import unicodedata
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Final

from wcwidth import wcwidth

from lanchat import events as ev

if TYPE_CHECKING:
    from lanchat.history import Entry  # history imports this module to print its lines

__all__ = [
    "Fragments",
    "SentDirect",
    "ansi",
    "cells",
    "direct_fragments",
    "entry_fragments",
    "error_fragments",
    "event_fragments",
    "fit",
    "format_event",
    "format_peers",
    "format_rooms",
    "format_table",
    "format_who",
    "in_flight_fragments",
    "info_fragments",
    "json_line",
    "nick_style",
    "notice_sent_fragments",
    "outcome_state",
    "plain",
    "sanitize",
]

Fragments = list[tuple[str, str]]

# Outcome lines quote this much of the direct message they report on.
_QUOTE_CHARS: Final = 40

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


# What `json_line` writes as a \u escape although JSON allows it raw: C1 controls (8-bit
# CSI and OSC reach a terminal like ESC does), bidi controls and line separators.
_JSON_ESCAPED: Final = re.compile(
    "[\x7f-\x9f" + "".join(sorted(_BIDI_CONTROLS)) + "\u2028\u2029\u200e\u200f\u061c]"
)


def json_line(data: object) -> str:
    """`data` as one line of JSON, UTF-8 kept readable, terminal-safe.

    json.dumps escapes C0 controls (ESC among them) but writes C1 controls and bidi
    overrides raw with ensure_ascii=False; they are escaped here, so a peer's string
    printed by `listen --json` or a pipe into a terminal cannot act on it.
    """
    text = json.dumps(data, ensure_ascii=False)
    return _JSON_ESCAPED.sub(lambda m: f"\\u{ord(m[0]):04x}", text)


def nick_style(nick: str) -> str:
    """A colour for a nickname, the same in every run (a CRC, not the salted hash())."""
    return _NICK_COLOURS[zlib.crc32(nick.encode("utf-8", "replace")) % len(_NICK_COLOURS)]


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


def info_fragments(now: datetime, text: str) -> Fragments:
    """A line of the session's own, greyed and stamped: "12:34:56 --- joined #lobby"."""
    return [(_TIME_STYLE, now.strftime("%H:%M:%S")), ("", " "), (_INFO_STYLE, f"--- {text}")]


def error_fragments(text: str) -> Fragments:
    """A local error (a command that failed), in red."""
    return [(_ERROR_STYLE, f"error: {sanitize(text)}")]


def notice_sent_fragments(now: datetime, text: str) -> Fragments:
    """The echo of a notice this session sent."""
    return [
        (_TIME_STYLE, now.strftime("%H:%M:%S")),
        (_NOTICE_STYLE, f" *** NOTICE sent: {sanitize(text)} ***"),
    ]


def in_flight_fragments(more: int) -> Fragments:
    """The count of direct messages in flight beyond those shown above the prompt."""
    return [(_INFO_STYLE, f"         (+{more} more direct messages in flight)")]


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


# ---------------------------------------------------------------------- tables


def cells(text: str) -> int:
    """Terminal cells `text` takes: wide characters count 2, combining ones 0
    (prompt_toolkit's get_cwidth, without importing prompt_toolkit)."""
    return sum(max(0, wcwidth(ch)) for ch in text)


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - cells(text))


def format_table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows as aligned columns, measured by display width (wide characters count 2)."""
    widths = [max(cells(row[i]) for row in rows) for i in range(len(rows[0]))]
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


def outcome_state(event: ev.DirectDelivered | ev.DirectFailed) -> tuple[str, str]:
    """A direct message's final state and its detail, as the in-place line shows them."""
    if isinstance(event, ev.DirectDelivered):
        return "delivered", ""
    if event.peer_alive:
        return "unconfirmed", ": peer was alive; acknowledgements lost"
    return "failed", f": no answer after {event.attempts} attempts"


def fit(fragments: Fragments, columns: int) -> Fragments:
    """Fragments cut to one line of `columns` cells (an ellipsis marks the cut)."""
    out: Fragments = []
    room = max(1, columns)
    for style, text in fragments:
        width = cells(text)
        if width <= room:
            out.append((style, text))
            room -= width
            continue
        cut = ""
        for ch in text:
            if cells(cut + ch) > room - 1:
                break
            cut += ch
        out.append((style, cut + "…"))
        break
    return out
