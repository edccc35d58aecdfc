"""The `lanchat` command: parses options and wires them to a Node; no protocol logic here."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import getpass
import json
import os
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final, NoReturn, TypeVar

import click

from lanchat import __version__, netif, settings
from lanchat import config as cfg
from lanchat import events as ev
from lanchat.codec import check_nick, check_text
from lanchat.errors import ConfigError, LanchatError
from lanchat.history import default_path, parse_since, print_history
from lanchat.node import Node
from lanchat.render import format_peers, format_table, json_line, sanitize
from lanchat.seal import key_from_passphrase, new_key_text, read_key_file

T = TypeVar("T")

# Exit codes of `lanchat send` beyond 0 (delivered), 1 (error) and 2 (usage).
EXIT_FAILED = 3  # no acknowledgement and the peer was not heard: not delivered
EXIT_UNCONFIRMED = 4  # no acknowledgement but the peer was alive: may have arrived


class GroupType(click.ParamType):  # type: ignore[type-arg]
    """An IPv4 multicast group address."""

    name = "GROUP"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return cfg.check_group(str(value))
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)


class NickType(click.ParamType):  # type: ignore[type-arg]
    """A nickname: 1-32 bytes, no spaces or control characters."""

    name = "NICK"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return check_nick(str(value))
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)


def default_nick() -> str:
    """The login name, cleaned up to a valid nickname."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = "anon"
    name = re.sub(r"[\s\x00-\x1f]+", "", name)[:32] or "anon"
    return name


@dataclasses.dataclass
class Common:
    """Options every command takes."""

    group: str
    port: int
    interfaces: tuple[str, ...]
    exclude: tuple[str, ...]
    ttl: int
    nick: str
    key_files: tuple[Path, ...]
    passphrase: str | None
    ipv4_only: bool
    ipv6_only: bool

    def keys(self) -> list[bytes]:
        """The group keys: key files first (the first one seals), then the passphrase."""
        keys = [read_key_file(path) for path in self.key_files]
        if self.passphrase is not None:
            keys.append(key_from_passphrase(self.passphrase, self.group, self.port))
        return keys

    def node(self, *, report_errors: bool = True, **kwargs: Any) -> Node:
        """The Node these options describe; `report_errors` prints its network errors on stderr.

        Call it inside the running loop (every command's coroutine does).
        """
        node = Node(
            kwargs.pop("nick", self.nick),
            group=self.group,
            port=self.port,
            interfaces=self.interfaces,
            exclude_interfaces=self.exclude,
            ttl=self.ttl,
            keys=self.keys(),
            ipv4_only=self.ipv4_only,
            ipv6_only=self.ipv6_only,
            **kwargs,
        )
        if node.choice.loopback_only and not self.interfaces:
            skipped = "; ".join(f"{v.name}: {v.reason}" for v in node.choice.verdicts if not v.used)
            click.echo(
                "lanchat: only the loopback interface is usable: you will reach this machine only"
                + (f" ({skipped})" if skipped else ""),
                err=True,
            )
        if report_errors:
            queue = node.subscribe()  # before start: errors of the first sends are printed too
            _error_printers.add(asyncio.get_running_loop().create_task(_print_errors(queue)))
        return node


_error_printers: set[asyncio.Task[None]] = set()  # kept referenced until the loop ends


async def _print_errors(queue: asyncio.Queue[ev.Event]) -> None:
    """Print each `NetworkErrorReported` as one line on stderr."""
    while True:
        event = await queue.get()
        if isinstance(event, ev.NetworkErrorReported):
            suffix = f" ({event.count} more since the last report)" if event.count > 1 else ""
            click.echo(f"lanchat: {sanitize(event.message)}{suffix}", err=True)


def _warn_visible_secret(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    source = ctx.get_parameter_source(param.name or "")
    if value is not None and source is click.core.ParameterSource.COMMANDLINE:
        click.echo(
            "lanchat: warning: a passphrase on the command line is visible to other local "
            "users (ps); use LANCHAT_KEY or --key-file",
            err=True,
        )
    return value


def common_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add the shared network options (each also read from a LANCHAT_* variable)."""
    options = [
        click.option("--group", type=GroupType(), default=cfg.DEFAULT_GROUP, show_default=True,
                     envvar="LANCHAT_GROUP", help="Multicast group (224.0.0.0/4)."),
        click.option("--port", type=click.IntRange(1, 65535), default=cfg.DEFAULT_PORT,
                     show_default=True, envvar="LANCHAT_PORT", help="UDP port of the group."),
        click.option("--interface", "-i", "interfaces", multiple=True, envvar="LANCHAT_INTERFACE",
                     metavar="NAME|ADDRESS",
                     help="Use this interface (repeatable). Default: every usable one."),
        click.option("--exclude-interface", "exclude", multiple=True,
                     envvar="LANCHAT_EXCLUDE_INTERFACE", metavar="NAME|ADDRESS",
                     help="Never use this interface (repeatable)."),
        click.option("--ttl", type=click.IntRange(1, 255), default=cfg.DEFAULT_TTL,
                     show_default=True, envvar="LANCHAT_TTL",
                     help="Multicast TTL; 1 keeps traffic on the local network."),
        click.option("--nick", "-n", type=NickType(), default=default_nick,
                     envvar="LANCHAT_NICK", help="Your nickname (default: login name)."),
        click.option("--key-file", "key_files", multiple=True, envvar="LANCHAT_KEY_FILE",
                     type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="Group key file (repeatable: the first seals, all are accepted)."),
        click.option("--key", "passphrase", envvar="LANCHAT_KEY", metavar="PASSPHRASE",
                     callback=_warn_visible_secret,
                     help="Group passphrase (prefer LANCHAT_KEY or --key-file)."),
        click.option("--ipv4-only", "ipv4_only", is_flag=True, envvar="LANCHAT_IPV4_ONLY",
                     help="Use IPv4 only (default: IPv4 and link-local IPv6)."),
        click.option("--ipv6-only", "ipv6_only", is_flag=True, envvar="LANCHAT_IPV6_ONLY",
                     help="Use link-local IPv6 only (group ff02:: + the IPv4 group's bits)."),
    ]  # fmt: skip
    for option in reversed(options):
        fn = option(fn)
    return fn


def history_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--no-history: keep no local record of the messages this command sends or receives."""
    return click.option(
        "--no-history/--history",
        "no_history",
        default=False,
        envvar="LANCHAT_NO_HISTORY",
        help="Keep no local message history (--history: keep it, whatever the config file says).",
    )(fn)


def colour_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--colour auto|always|never (also spelt --color)."""
    return click.option(
        "--colour",
        "--color",
        "colour",
        type=click.Choice(settings.COLOUR_MODES),
        default="auto",
        show_default=True,
        envvar=list(settings.KEYS["colour"].envvars),
        help="Colours: auto = on a terminal unless NO_COLOR is set.",
    )(fn)


def _common(kwargs: dict[str, Any]) -> Common:
    common = Common(**{f.name: kwargs.pop(f.name) for f in dataclasses.fields(Common)})
    if common.ipv4_only and common.ipv6_only:
        raise click.UsageError(
            "--ipv4-only and --ipv6-only exclude each other (check LANCHAT_IPV4_ONLY and "
            "LANCHAT_IPV6_ONLY): choose one, or neither for both families"
        )
    return common


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    """Run a command's coroutine; SIGTERM cancels it; LanchatError becomes one line and exit 1."""

    async def main() -> T:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        assert task is not None
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
        return await coro_fn()

    try:
        return asyncio.run(main())
    except LanchatError as exc:
        fail(str(exc))
    except (KeyboardInterrupt, asyncio.CancelledError):
        sys.exit(0)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one line on stderr and exit (it may quote a peer's strings: sanitized)."""
    click.echo(f"lanchat: {sanitize(message)}", err=True)
    sys.exit(code)


def peer_json(peer: ev.PeerInfo, now: float) -> dict[str, Any]:
    """A peer as a JSON object."""
    data = dataclasses.asdict(peer)
    data["short_id"] = peer.short_id
    data["rooms"] = list(peer.rooms)
    data["addresses"] = list(peer.addresses)
    data["last_heard"] = round(max(0.0, now - peer.last_heard), 3)
    return data


def event_json(event: ev.Event, now: float) -> dict[str, Any]:
    """An event as a JSON object: {"event": "peer_joined", "time": ..., fields...}."""
    name = re.sub(r"(?<!^)(?=[A-Z])", "_", type(event).__name__).lower()
    out: dict[str, Any] = {"event": name, "time": round(time.time(), 3)}
    for field in dataclasses.fields(event):
        value = getattr(event, field.name)
        out[field.name] = peer_json(value, now) if isinstance(value, ev.PeerInfo) else value
    return out


def _ipv6_text(info: netif.InterfaceInfo, addr: netif.IPv6Addr) -> str:
    """An IPv6 address of an interface with its prefix, link-local ones with their %scope."""
    scope = f"%{info.name}" if addr.link_local else ""
    return f"{addr.address}{scope}/{addr.prefixlen}"


def interface_json(
    info: netif.InterfaceInfo, verdict: netif.Verdict, choice: netif.Choice
) -> dict[str, Any]:
    """An interface and lanchat's verdict on it as a JSON object."""
    return {
        "name": info.name,
        "index": info.index,
        "used": verdict.used,
        "reason": verdict.reason,
        "up": info.up,
        "ipv4": [net.cidr for net in info.ipv4],
        "ipv6": [_ipv6_text(info, addr) for addr in info.ipv6],
        "ipv6_used": choice.uses_ipv6(info),
        "loopback": info.loopback,
        "point_to_point": info.point_to_point,
        "multicast": info.multicast,
        "kind": info.virtual_kind,
    }


def _text(words: tuple[str, ...]) -> str:
    """Join the words of a message and check it before touching the network."""
    try:
        return check_text(" ".join(words))
    except ConfigError as exc:
        fail(str(exc))


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


class SinceType(click.ParamType):  # type: ignore[type-arg]
    """`--since 2h` or `--since 2024-05-06`: converted to Unix seconds."""

    name = "since"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_since(str(value), time.time())
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@click.group(
    context_settings={"auto_envvar_prefix": "LANCHAT", "help_option_names": ["-h", "--help"]}
)
@click.version_option(__version__, prog_name="lanchat")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Serverless chat, presence and notices for the local network.

    Peers find each other by UDP multicast; no server anywhere. Every command
    takes --interface, --group, --port, --ttl and --nick (or LANCHAT_INTERFACE,
    LANCHAT_GROUP, ... in the environment, or a config file: `lanchat config`).
    """
    _apply_settings(ctx)


def _apply_settings(ctx: click.Context) -> None:
    """Make the config file's values the defaults of the command about to run.

    click ranks an option's sources as command line > environment variable >
    default_map > default, so the file sits exactly where it should. Commands
    with no setting (and `config`, which must work on a broken file) skip it.
    """
    command = cli.commands.get(ctx.invoked_subcommand or "")
    mapped = {key.param for key in settings.KEYS.values()}
    if command is None or not mapped & {p.name for p in command.params}:
        return
    loaded = settings.load()
    for problem in loaded.problems:
        click.echo(f"lanchat: {problem}; {problem.hint()}", err=True)
    if loaded.problems:
        sys.exit(1)
    ctx.default_map = settings.default_map(loaded.values, cli.commands, loaded.path.parent)


@cli.command()
@common_options
@click.option("--room", "-r", "rooms", multiple=True, envvar="LANCHAT_ROOM", metavar="ROOM",
              help="Room to join (repeatable; default lobby). The first is current.")  # fmt: skip
@history_option
@colour_option
def join(rooms: tuple[str, ...], no_history: bool, colour: str, **kwargs: Any) -> None:
    """Chat interactively (reads lines from stdin when it is not a terminal)."""
    common = _common(kwargs)
    from lanchat.chat import run_join

    use_colour = settings.colour_enabled(colour, sys.stdout.isatty(), os.environ)

    async def go() -> int:
        node = common.node(  # the chat line shows network errors itself
            rooms=rooms or (cfg.DEFAULT_ROOM,), history=not no_history, report_errors=False
        )
        await node.start()
        try:
            code: int = await run_join(
                node, interactive=sys.stdin.isatty(), room=node.rooms[0], colour=use_colour
            )
            return code
        finally:
            await node.close()

    sys.exit(run(go))


@cli.command()
@common_options
@click.option("--wait", type=click.FloatRange(0.05, 60), default=1.0, show_default=True,
              help="Seconds to collect answers.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def peers(wait: float, as_json: bool, **kwargs: Any) -> None:
    """List the peers on the LAN (asks the group; peers answer at once)."""
    common = _common(kwargs)

    async def go() -> tuple[list[ev.PeerInfo], float]:
        async with common.node(member=False) as node:
            await asyncio.sleep(wait)
            return node.peers(), _loop_time()

    found, now = run(go)
    if as_json:
        click.echo(json.dumps([peer_json(p, now) for p in found], indent=2))
        return
    if not found:
        click.echo("no peers found", err=True)
        return
    for line in format_peers(found, now):  # remote strings sanitized, as in /peers
        click.echo(line)


@cli.command()
@common_options
@click.option("--wait", type=click.FloatRange(0.1, 60), default=1.5, show_default=True,
              help="Seconds to wait for acknowledgements.")  # fmt: skip
@click.argument("text", nargs=-1, required=True)
@history_option
def notice(wait: float, text: tuple[str, ...], no_history: bool, **kwargs: Any) -> None:
    """Send a notice to every peer on the LAN and report who acknowledged it."""
    common = _common(kwargs)
    message = _text(text)

    async def go() -> tuple[set[str], list[ev.PeerInfo]]:
        async with common.node(member=False, history=not no_history) as node:
            acks = node.subscribe()
            await asyncio.sleep(0.3)  # let the peers answer the query first
            seq = await node.notice(message)
            acked: set[str] = set()
            deadline = _loop_time() + wait
            while (remaining := deadline - _loop_time()) > 0:
                known = {p.peer_id for p in node.peers()}
                if known and known <= acked:
                    break
                with contextlib.suppress(TimeoutError):
                    event = await asyncio.wait_for(acks.get(), remaining)
                    if isinstance(event, ev.NoticeAcknowledged) and event.seq == seq:
                        acked.add(event.peer_id)
            return acked, node.peers()

    acked, known = run(go)
    missing = [sanitize(p.nick) for p in known if p.peer_id not in acked]
    # A peer whose acknowledgement came but whose Beat did not is known all the same.
    everyone = {p.peer_id for p in known} | acked
    line = f"notice sent; acknowledged by {len(acked)} of {len(everyone)} known peers"
    if missing:
        line += f" (no acknowledgement from {', '.join(sorted(missing))})"
    click.echo(line)


@cli.command()
@common_options
@click.option("--to", "to", required=True, metavar="PEER", help="Nickname or peer id prefix.")
@click.option("--wait", type=click.FloatRange(0.1, 60), default=1.5, show_default=True,
              help="Seconds to look for the peer.")  # fmt: skip
@click.argument("text", nargs=-1, required=True)
@history_option
def send(to: str, wait: float, text: tuple[str, ...], no_history: bool, **kwargs: Any) -> None:
    """Send one direct message; exit 0 only when the peer acknowledged it.

    Exit 3: no acknowledgement and nothing heard from the peer. Exit 4: no
    acknowledgement although the peer was heard (it may have the message).
    """
    common = _common(kwargs)
    message = _text(text)

    async def go() -> tuple[ev.PeerInfo, ev.DirectDelivered | ev.DirectFailed]:
        async with common.node(member=False, history=not no_history) as node:
            await node.lookup(to, wait)
            # A second peer of the same name may answer a moment later: look again.
            await asyncio.sleep(0.1)
            peer = node.find_peer(to)
            return peer, await node.send_direct_wait(peer.peer_id, message)

    peer, outcome = run(go)
    if isinstance(outcome, ev.DirectDelivered):
        where = f"{peer.short_id} on {peer.host}"
        click.echo(sanitize(f"delivered to {peer.nick} ({where})"))
        return
    tries = outcome.attempts
    if outcome.peer_alive:
        fail(
            f"unconfirmed: {peer.nick} was heard but never acknowledged after {tries} tries;"
            " it may have the message",
            EXIT_UNCONFIRMED,
        )
    fail(f"failed: no acknowledgement from {peer.nick} after {tries} tries", EXIT_FAILED)


@cli.command()
@common_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--room", "-r", "rooms", multiple=True, metavar="ROOM",
              help="Rooms to show as joined (chat of every room is printed anyway).")  # fmt: skip
@history_option
def listen(as_json: bool, rooms: tuple[str, ...], no_history: bool, **kwargs: Any) -> None:
    """Print every event (peers, chat in all rooms, notices, direct messages)."""
    common = _common(kwargs)

    def emit(event: ev.Event | dict[str, Any], now: float) -> None:
        data = event if isinstance(event, dict) else event_json(event, now)
        if as_json:
            click.echo(json_line(data))
        else:
            fields = " ".join(f"{k}={v!r}" for k, v in data.items() if k not in ("event", "time"))
            click.echo(sanitize(f"{data['event']}: {fields}"))  # repr escapes; sanitize is sure
        sys.stdout.flush()

    async def go() -> None:
        node = common.node(
            rooms=rooms or (cfg.DEFAULT_ROOM,), all_rooms=True, history=not no_history
        )
        queue = node.subscribe()
        await node.start()
        try:
            emit({"event": "started", "time": round(time.time(), 3), "peer_id": node.peer_id,
                  "nick": node.nick, "port": node.unicast_port,
                  "interfaces": [i.name for i in node.choice.used]}, 0.0)  # fmt: skip
            while True:
                emit(await queue.get(), _loop_time())
        finally:
            await node.close()

    run(go)


@cli.command()
@common_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def interfaces(as_json: bool, **kwargs: Any) -> None:
    """Show every network interface, whether lanchat would use it, and why not.

    Takes --interface and --exclude-interface into account, as the other
    commands would; reads the interfaces only (no socket is opened). Exit 1
    when no interface is usable.
    """
    common = _common(kwargs)
    try:
        infos = netif.read_interfaces()
        choice = netif.choose_interfaces(
            infos,
            common.interfaces,
            common.exclude,
            ipv4=not common.ipv6_only,
            ipv6=not common.ipv4_only,
        )
    except LanchatError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot read the network interfaces: {exc.strerror or exc}")
    pairs = list(zip(infos, choice.verdicts, strict=True))
    if as_json:
        click.echo(json.dumps([interface_json(info, v, choice) for info, v in pairs], indent=2))
        return
    # The IPv6 column appears when some interface has a link-local address to use.
    with_ipv6 = any(info.link_local_ipv6 is not None for info in infos)
    rows: list[tuple[str, ...]] = [
        ("INTERFACE", "USED", "IPV4", *(("IPV6",) if with_ipv6 else ()), "WHY")
    ]
    for info, verdict in pairs:
        cidrs = ", ".join(net.cidr for net in info.ipv4) or "-"
        ipv6 = ", ".join(_ipv6_text(info, a) for a in info.ipv6 if a.link_local) or "-"
        used = "yes" if verdict.used else "no"
        rows.append((info.name, used, cidrs, *((ipv6,) if with_ipv6 else ()), verdict.reason))
    for line in format_table(rows):
        click.echo(line)


@cli.command()
@common_options
@click.option("--wait", type=click.FloatRange(0.5, 30), default=2.0, show_default=True,
              help="Seconds to listen on each interface.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def doctor(wait: float, as_json: bool, **kwargs: Any) -> None:
    """Find out why you cannot see anyone: a verdict per interface, its evidence and the fix.

    Asks the group who is there from every interface lanchat would use and
    listens for a few seconds: can it join, do its own datagrams come back,
    which peers answer, what arrives that cannot be used (another key, another
    version, another program), plus the group's scope, other lanchat processes
    here and the default route. Exit 1 when nothing can work.
    """
    common = _common(kwargs)
    if common.ipv6_only:
        fail(
            "lanchat doctor checks IPv4 only; for IPv6 see `lanchat interfaces --ipv6-only` "
            "and `lanchat peers --ipv6-only`"
        )
    from lanchat import doctor as doc

    async def go() -> doc.Evidence:
        return await doc.gather(
            group=common.group,
            port=common.port,
            ttl=common.ttl,
            interfaces=common.interfaces,
            exclude=common.exclude,
            keys=common.keys(),
            wait=wait,
        )

    evidence = run(go)
    findings = doc.diagnose(evidence)
    if as_json:
        click.echo(json.dumps(doc.report_json(evidence, findings), indent=2))
    else:
        click.echo(doc.render(evidence, findings))
    sys.exit(0 if doc.can_work(findings) else 1)


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def keygen(path: Path, force: bool) -> None:
    """Write a new random group key to PATH (readable by you only).

    Give the file to every member, e.g. `lanchat join --key-file PATH`.
    """
    if path.exists() and not force:
        fail(f"{path} exists; use --force to overwrite it")
    try:
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(new_key_text())
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror}")
    click.echo(f"wrote a new group key to {path}")


@cli.command("history")
@click.option("--room", "-r", metavar="ROOM", help="Only this room's chat (and loss markers).")
@click.option(
    "--peer", "-p", metavar="PEER", help="Only messages from or to this nickname or peer id prefix."
)
@click.option(
    "--notices", is_flag=True, help="Only notices (with --room: that room's chat and notices)."
)
@click.option(
    "--since",
    type=SinceType(),
    metavar="2h|DATE",
    help="Since a duration ago (90s, 15m, 2h, 3d, 1w) or a date (2026-05-06[ 14:30]).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True,
              help="The last N messages.")  # fmt: skip
def history_cmd(
    room: str | None,
    peer: str | None,
    notices: bool,
    since: float | None,
    as_json: bool,
    limit: int,
) -> None:
    """Print the messages kept on this machine, newest last."""
    code = print_history(default_path(), room=room, peer=peer, notices=notices, since=since,
                         as_json=as_json, limit=limit, out=sys.stdout)  # fmt: skip
    sys.exit(code)


@cli.group("config")
def config_group() -> None:
    """The config file: your defaults for the options of every command (TOML).

    Precedence, highest first: command-line option, LANCHAT_* environment
    variable, config file, built-in default.
    """


@config_group.command("path")
def config_path_cmd() -> None:
    """Print where the config file is (LANCHAT_CONFIG names another)."""
    click.echo(settings.config_path())


_SOURCES: Final = {
    click.core.ParameterSource.COMMANDLINE: "option",
    click.core.ParameterSource.ENVIRONMENT: "env",
    click.core.ParameterSource.DEFAULT_MAP: "file",
    click.core.ParameterSource.DEFAULT: "default",
}


@config_group.command("show", context_settings={"ignore_unknown_options": True})
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.argument("options", nargs=-1, type=click.UNPROCESSED, metavar="[JOIN OPTIONS]...")
@click.pass_context
def config_show(ctx: click.Context, as_json: bool, options: tuple[str, ...]) -> None:
    """Print each setting's value and where it comes from: option, env, file or default.

    The values are those `lanchat join` would use, resolved by the same code;
    options of `lanchat join` given here count as given to it. Exit 1 when the
    file has problems (printed first; the bad keys show their fallback).
    """
    loaded = settings.load()
    for problem in loaded.problems:
        click.echo(f"lanchat: {problem}; {problem.hint()}", err=True)
    defaults = settings.default_map(loaded.values, {"join": join}, loaded.path.parent)
    sub = join.make_context("join", list(options), parent=ctx, default_map=defaults.get("join"))
    rows = {
        key.name: {
            "value": key.from_param(sub.params[key.param]),
            "source": _SOURCES.get(sub.get_parameter_source(key.param), "default"),  # type: ignore[arg-type]
        }
        for key in settings.KEYS.values()
    }
    if as_json:
        out = {"file": str(loaded.path), "exists": loaded.exists, "settings": rows}
        click.echo(json.dumps(out, indent=2))
    else:
        state = "" if loaded.exists else " (no such file: built-in defaults)"
        click.echo(f"# {loaded.path}{state}")
        width = max(len(name) for name in rows) + 3
        for name, row in rows.items():
            line = f"{name} = {settings.toml_value(row['value'])}"
            click.echo(f"{line.ljust(width + 24)} # {row['source']}")
    sys.exit(1 if loaded.problems else 0)


@config_group.command("set")
@click.argument("key")
@click.argument("values", nargs=-1, required=True, metavar="VALUE...")
def config_set(key: str, values: tuple[str, ...]) -> None:
    """Set KEY in the config file (creating it); a list takes one VALUE per item.

    Keys: nick, rooms, interface, exclude_interface, key_file, colour (auto,
    always, never), history (on, off), group, port, ttl. The rest of the file
    (comments, order) is kept; the file is replaced in one step.
    """
    path = settings.config_path()
    try:
        name = settings.canonical(key)
        try:
            value = settings.parse_args(settings.KEYS[name], values)
        except ConfigError as exc:
            raise ConfigError(f"{name}: {exc}") from None
        text = settings.read_text(path) or ""
        settings.write_atomic(path, settings.edit(text, name, value, path))
    except ConfigError as exc:
        fail(str(exc))
    click.echo(f"{path}: {name} = {settings.toml_value(value)}")
    for problem in settings.load(path).problems:
        click.echo(f"lanchat: warning: {problem}; {problem.hint()}", err=True)


@config_group.command("unset")
@click.argument("key")
def config_unset(key: str) -> None:
    """Remove KEY from the config file (an unknown key too): back to its default."""
    path = settings.config_path()
    try:
        with contextlib.suppress(ConfigError):
            key = settings.canonical(key)
        text = settings.read_text(path)
        changed = settings.edit(text, key, None, path) if text is not None else None
        if changed is None or changed == text:
            click.echo(f"{key} is not set in {path}", err=True)
            return
        settings.write_atomic(path, changed)
    except ConfigError as exc:
        fail(str(exc))
    click.echo(f"{path}: {key} removed")


def main() -> None:
    """Entry point of the `lanchat` command."""
    cli(prog_name="lanchat")
