"""The chat session behind `lanchat join`: typed lines in, node events out.

The pure parts live beside it: `lanchat.commands` says what a typed line means
and `lanchat.render` how an event, a stored line or a table looks. This module
is the thin loop around them: a prompt_toolkit line on a terminal, plain lines
otherwise, the timers of what stays on screen, and the history shown on joining.
It reads the time only through its `Clock`, so a test can hand it another.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import sys
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Final, TextIO

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.output import ColorDepth
from prompt_toolkit.patch_stdout import patch_stdout
from prompt_toolkit.shortcuts import print_formatted_text

from lanchat import config as cfg
from lanchat import events as ev
from lanchat.codec import check_room
from lanchat.commands import (
    Away,
    Back,
    Command,
    Help,
    Invalid,
    Join,
    Leave,
    Msg,
    Nick,
    Notice,
    Peers,
    Quit,
    Random,
    Rooms,
    Say,
    Who,
    completions,
    help_lines,
    parse_line,
)
from lanchat.errors import LanchatError
from lanchat.history import RECENT_LINES
from lanchat.node import Node
from lanchat.render import (
    Fragments,
    SentDirect,
    ansi,
    direct_fragments,
    entry_fragments,
    error_fragments,
    event_fragments,
    fit,
    format_peers,
    format_rooms,
    format_who,
    in_flight_fragments,
    info_fragments,
    notice_sent_fragments,
    outcome_state,
    plain,
    sanitize,
)

__all__ = ["Clock", "loop_clock", "read_lines", "run_join"]

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


@dataclass(frozen=True, slots=True)
class Clock:
    """Where a session reads the time: `monotonic` seconds for what expires (the
    node's clock, the one `PeerInfo.last_heard` uses) and `wall` for printed stamps."""

    monotonic: Callable[[], float]
    wall: Callable[[], datetime]


def loop_clock() -> Clock:
    """The running event loop's time and the local wall clock, as a real session uses."""
    return Clock(asyncio.get_running_loop().time, datetime.now)


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
        self,
        node: Node,
        room: str,
        *,
        out: TextIO | None,
        interactive: bool,
        colour: bool,
        clock: Clock,
    ) -> None:
        self.node = node
        self.clock = clock
        self.room: str | None = room
        self.out = out
        self.interactive = interactive
        self.colour = colour
        self.sent: dict[int, SentDirect] = {}
        self.changed = asyncio.Event()
        self.linger_until = float("-inf")  # clock time before which exiting drops repeats
        self.history_errors = 0  # failed history writes already reported
        self.catch_up_rooms = True  # ask peers for a room's recent lines on joining it
        self.away: str | None = None  # our own away text, for /who
        # The last notice, pinned above the prompt (interactive) until a newer one or
        # _NOTICE_PINNED seconds pass: (clock time, its line).
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
        self.show(event_fragments(event, self.clock.wall()))

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
        self.show(info_fragments(self.clock.wall(), text))

    def error(self, text: str) -> None:
        self.show(error_fragments(text))

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

    def _stamp(self) -> str:
        return self.clock.wall().strftime("%H:%M:%S")

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
        now = self.clock.monotonic()
        if self.pinned is not None and now - self.pinned[0] < _NOTICE_PINNED:
            above.append(self.pinned[1])
        flying = list(self.sent.values())
        for sent in flying[-_MAX_SHOWN_IN_FLIGHT:]:
            above.append(direct_fragments(sent, "sent"))
        if len(flying) > _MAX_SHOWN_IN_FLIGHT:
            more = len(flying) - _MAX_SHOWN_IN_FLIGHT
            above.append(in_flight_fragments(more))
        out: Fragments = []
        for line in above:
            out += [*fit(line, columns - 1), ("", "\n")]
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
        fragments = event_fragments(event, self.clock.wall(), sent=self.sent, nicks=nicks)
        if isinstance(event, ev.NoticeReceived):
            self.pinned = (self.clock.monotonic(), fragments)
        outcome = self.sent.get(event.msg_id) if isinstance(event, _OUTCOMES) else None
        if self.interactive and outcome is not None:
            # The "sent" line above the prompt turns into its final state, in place.
            self.show(direct_fragments(outcome, *outcome_state(event)))  # type: ignore[arg-type]
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
        self.linger_until = max(self.linger_until, self.clock.monotonic() + seconds)

    async def settle(self, timeout: float) -> None:
        """Wait (bounded) for direct messages in flight and for repeats still to go out."""
        if self.sent:
            self.info(f"waiting up to {timeout:.0f}s for {len(self.sent)} direct message(s)")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.sent:
                    self.changed.clear()
                    await self.changed.wait()
                await asyncio.sleep(max(0.0, self.linger_until - self.clock.monotonic()))
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
                self.show(event_fragments(echo, self.clock.wall()))
            case Msg(peer=name, text=text):
                await self._direct(await node.lookup(name), text)
            case Notice(text=text):
                await node.notice(text)
                self.linger(_NOTICE_LINGER)
                self.show(notice_sent_fragments(self.clock.wall(), text))
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
                self.lines(format_who(where, node.peers(), self.clock.monotonic(), me))
            case Random():
                await self._random()
            case Peers():
                self.lines(format_peers(node.peers(), self.clock.monotonic()))
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
        now = self.clock.monotonic()
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
    clock: Clock | None = None,
) -> int:
    """Chat on a started node until /quit, Ctrl-C/Ctrl-D or end of input; returns 0.

    With the node's history on, the last lines of each joined room are shown
    first (the current room last, nearest the prompt). `lines` and `out`
    replace stdin and stdout in non-interactive mode (tests). `colour`: ANSI
    colours on or off (default: on in interactive mode only). With `catch_up`,
    the room's members are asked for what was said before (and after the
    history's last line): those lines follow, marked "(earlier)", within a second.
    `clock`: where the session reads the time (default: `loop_clock()`).
    """
    room = check_room(room)
    if room not in node.rooms:
        await node.join_room(room)
    colour = interactive if colour is None else colour
    clock = clock if clock is not None else loop_clock()
    session = _Session(node, room, out=out, interactive=interactive, colour=colour, clock=clock)
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
