"""The config file: flat TOML in the app directory, feeding click's option defaults.

Precedence, highest first: a command-line option, then its LANCHAT_*
environment variable, then the file, then the built-in default. click does
the ranking: the file's values become the context's `default_map`, which
click consults after the option and its environment variable and before the
option's own default. So the file only ever changes defaults.

The file is `config.toml` in the app directory (LANCHAT_HOME, else the
platform's per-user directory); LANCHAT_CONFIG names another file. Reading
uses the standard library's `tomllib`; `edit` changes one key in place and
keeps the rest of the text (comments, order) as it was, checked by parsing
the result again. Problems are reported per key, one line each, so one bad
entry never hides the others and `lanchat config set` can still fix it.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from lanchat import config as cfg
from lanchat.codec import check_nick, check_room
from lanchat.errors import ConfigError
from lanchat.identity import app_dir

if TYPE_CHECKING:
    import click  # only the CLI imports click; this module reads its commands' parameters

__all__ = [
    "COLOUR_MODES",
    "CONFIG_FILE",
    "KEYS",
    "Key",
    "Loaded",
    "Problem",
    "canonical",
    "check_value",
    "colour_enabled",
    "config_path",
    "default_map",
    "dumps",
    "edit",
    "load",
    "parse_args",
    "read_text",
    "toml_value",
    "write_atomic",
]

CONFIG_FILE: Final = "config.toml"
# A settings file is a few hundred bytes; anything this big is not one (and
# `edit` parses candidate spans repeatedly, so it must stay small).
_MAX_FILE_BYTES: Final = 64 * 1024

Kind = Literal["str", "int", "list", "bool", "choice"]
_TRUE: Final = ("on", "true", "yes", "1")
_FALSE: Final = ("off", "false", "no", "0")
COLOUR_MODES: Final = ("auto", "always", "never")


def _interface(name: str) -> str:
    if not name or name != name.strip():
        raise ConfigError(f"{name!r} is not an interface name or address")
    return name


def _key_file(path: str) -> str:
    if not path:
        raise ConfigError("empty path")
    return path


@dataclass(frozen=True)
class Key:
    """One setting: its type, the click parameter it gives a default to, its variables."""

    name: str
    kind: Kind
    param: str  # the click parameter name in every command that has it
    envvars: tuple[str, ...]  # the option's variables, in click's order
    check: Callable[[str], str] | None = None  # per string (or per list item)
    low: int = 0
    high: int = 0
    choices: tuple[str, ...] = ()
    alias: str | None = None  # another spelling accepted in the file and by `config set`

    def to_param(self, value: Any, base: Path) -> Any:
        """The file's value as click's default_map wants it for `param`."""
        if self.name == "history":
            return not value  # the parameter is --no-history
        if self.name == "key_file":
            return [str(base / Path(p).expanduser()) for p in value]
        return value

    def from_param(self, value: Any) -> Any:
        """A parameter's value as this key's value (for `lanchat config show`)."""
        if self.name == "history":
            return not value
        if self.name == "rooms" and not value:
            return [cfg.DEFAULT_ROOM]  # what `lanchat join` does with no room
        if self.kind == "list":
            return [str(item) for item in value]
        return value


KEYS: Final[Mapping[str, Key]] = {
    key.name: key
    for key in (
        Key("nick", "str", "nick", ("LANCHAT_NICK",), check=check_nick),
        Key("rooms", "list", "rooms", ("LANCHAT_ROOM",), check=check_room),  # join only
        Key("interface", "list", "interfaces", ("LANCHAT_INTERFACE",), check=_interface),
        Key("exclude_interface", "list", "exclude", ("LANCHAT_EXCLUDE_INTERFACE",),
            check=_interface),
        Key("key_file", "list", "key_files", ("LANCHAT_KEY_FILE",), check=_key_file),
        Key("colour", "choice", "colour", ("LANCHAT_COLOUR", "LANCHAT_COLOR"),
            choices=COLOUR_MODES, alias="color"),
        Key("history", "bool", "no_history", ("LANCHAT_NO_HISTORY",)),
        Key("group", "str", "group", ("LANCHAT_GROUP",), check=cfg.check_group),
        Key("port", "int", "port", ("LANCHAT_PORT",), low=1, high=65535),
        Key("ttl", "int", "ttl", ("LANCHAT_TTL",), low=1, high=255),
    )
}  # fmt: skip
_ALIASES: Final = {key.alias: key.name for key in KEYS.values() if key.alias}


def canonical(name: str) -> str:
    """The key a name or alias stands for; ConfigError naming the known keys otherwise."""
    name = _ALIASES.get(name, name)
    if name not in KEYS:
        raise ConfigError(f"unknown key {name!r} (known: {', '.join(KEYS)})")
    return name


def colour_enabled(mode: str, isatty: bool, environ: Mapping[str, str]) -> bool:
    """Whether to colour: always, never, or auto = on a terminal unless NO_COLOR or TERM=dumb.

    An explicit `always` (option, variable or file) beats NO_COLOR, as no-color.org asks.
    """
    if mode != "auto":
        return mode == "always"
    return isatty and not environ.get("NO_COLOR") and environ.get("TERM") != "dumb"


def config_path() -> Path:
    """Where the config file is: LANCHAT_CONFIG, else config.toml in the app directory."""
    override = os.environ.get("LANCHAT_CONFIG")
    return Path(override).expanduser() if override else app_dir() / CONFIG_FILE


def check_value(key: Key, value: Any) -> Any:
    """A value read from TOML, checked against the key's type; ConfigError says why not."""
    if key.kind == "list":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"expected a list of strings, got {toml_value(value)}")
        return [key.check(i) if key.check else i for i in items]
    if key.kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"expected an integer, got {toml_value(value)}")
        if not key.low <= value <= key.high:
            raise ConfigError(f"{value} is not in {key.low}..{key.high}")
        return value
    if key.kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, got {toml_value(value)}")
        return value
    if not isinstance(value, str):
        raise ConfigError(f"expected a string, got {toml_value(value)}")
    if key.kind == "choice" and value not in key.choices:
        raise ConfigError(f"expected one of {', '.join(key.choices)}, got {value!r}")
    return key.check(value) if key.check else value


def parse_args(key: Key, words: Sequence[str]) -> Any:
    """The value of `lanchat config set KEY WORD...`: one word per list item, else one word."""
    if key.kind == "list":
        if key.name == "key_file":
            missing = [w for w in words if not Path(w).expanduser().is_file()]
            if missing:
                raise ConfigError(f"no such file: {missing[0]} (make one with `lanchat keygen`)")
            words = [str(Path(w).expanduser().absolute()) for w in words]
        return check_value(key, list(words))
    if len(words) != 1:
        raise ConfigError(f"{key.name} takes one value, got {len(words)}")
    word = words[0]
    if key.kind == "int":
        if not re.fullmatch(r"[+-]?[0-9]+", word.strip()):
            raise ConfigError(f"expected an integer, got {word!r}")
        return check_value(key, int(word))
    if key.kind == "bool":
        if word.lower() in _TRUE + _FALSE:
            return word.lower() in _TRUE
        raise ConfigError(f"expected on or off, got {word!r}")
    return check_value(key, word)


@dataclass(frozen=True)
class Problem:
    """Something wrong in the file: one key, or the whole file (key None)."""

    path: Path
    key: str | None
    why: str

    def __str__(self) -> str:
        where = f"{self.path}: {self.key}" if self.key else str(self.path)
        return f"{where}: {self.why}"

    def hint(self) -> str:
        """How to fix it, for the end of the error line."""
        if self.key in KEYS or self.key in _ALIASES:
            key = self.key
            return f"fix it: `lanchat config set {key} VALUE` or `lanchat config unset {key}`"
        if self.key:
            return f"remove it with `lanchat config unset {self.key}`"
        return "fix that line in an editor, or move the file away"


@dataclass(frozen=True)
class Loaded:
    """The file's valid settings (canonical key names) and its problems."""

    path: Path
    exists: bool
    values: dict[str, Any]
    problems: list[Problem]


def read_text(path: Path) -> str | None:
    """The file's text, None when it does not exist; ConfigError when it cannot be read."""
    try:
        if path.stat().st_size > _MAX_FILE_BYTES:
            raise ConfigError(f"{path}: larger than {_MAX_FILE_BYTES} bytes: not a config file")
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None


def parse_document(text: str, path: Path) -> dict[str, Any]:
    """The TOML document; ConfigError (with line and column) when it is not TOML."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def validate(document: Mapping[str, Any], path: Path) -> tuple[dict[str, Any], list[Problem]]:
    """Check every entry; the good ones by canonical name, and one Problem per bad one."""
    values: dict[str, Any] = {}
    problems: list[Problem] = []
    seen: set[str] = set()
    for name, raw in document.items():
        if _ALIASES.get(name, name) not in KEYS:
            problems.append(Problem(path, name, f"unknown key (known: {', '.join(KEYS)})"))
            continue
        try:
            key = KEYS[canonical(name)]
            if key.name in seen:
                raise ConfigError(f"given twice (as {key.name} and {key.alias})")
            seen.add(key.name)
            value = check_value(key, raw)
            if key.name == "key_file":
                missing = [p for p in key.to_param(value, path.parent) if not Path(p).is_file()]
                if missing:
                    raise ConfigError(f"no such file: {missing[0]}")
            values[key.name] = value
        except ConfigError as exc:
            problems.append(Problem(path, name, str(exc)))
    return values, problems


def load(path: Path | None = None) -> Loaded:
    """Read and check the config file; a missing file is an empty one."""
    path = path or config_path()
    try:
        text = read_text(path)
        if text is None:
            return Loaded(path, False, {}, [])
        values, problems = validate(parse_document(text, path), path)
    except ConfigError as exc:
        return Loaded(path, True, {}, [Problem(path, None, str(exc).removeprefix(f"{path}: "))])
    return Loaded(path, True, values, problems)


def default_map(
    values: Mapping[str, Any], commands: Mapping[str, click.Command], base: Path
) -> dict[str, dict[str, Any]]:
    """click's default_map for a group: each command gets the keys it has a parameter for."""
    out: dict[str, dict[str, Any]] = {}
    for name, command in commands.items():
        params = {p.name for p in command.params}
        mapped = {
            KEYS[key].param: KEYS[key].to_param(value, base)
            for key, value in values.items()
            if KEYS[key].param in params
        }
        if mapped:
            out[name] = mapped
    return out


# -- writing

_ESCAPES: Final = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n",
                   "\f": "\\f", "\r": "\\r"}  # fmt: skip


def _toml_string(text: str) -> str:
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def toml_value(value: Any) -> str:
    """A TOML literal for a string, integer, boolean or list of those (else repr)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return repr(value)


def dumps(values: Mapping[str, Any]) -> str:
    """Flat keys as TOML, one `key = value` line each."""
    return "".join(f"{name} = {toml_value(value)}\n" for name, value in values.items())


_HEADER: Final = re.compile(r"\s*\[")


def _statements(lines: list[str]) -> Iterable[tuple[int, int, dict[str, Any] | None]]:
    """Top-level statements as (first line, end line, parsed); a table header yields None."""
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if not stripped or stripped.startswith("#"):
            i += 1
            continue
        if _HEADER.match(lines[i]):
            yield i, i, None
            return
        for end in range(i + 1, len(lines) + 1):  # the shortest span that parses: multi-line values
            try:
                parsed = tomllib.loads("".join(lines[i:end]))
            except tomllib.TOMLDecodeError:
                continue
            yield i, end, parsed
            i = end
            break
        else:
            return


def edit(text: str, name: str, value: Any | None, path: Path) -> str:
    """The text with one top-level key set (value None: removed), everything else kept.

    Every spelling of the key is replaced; a new key goes before the first
    table or at the end. The result is parsed again and must equal the old
    document with just that change, else ConfigError (edit it by hand).
    """
    try:
        document = parse_document(text, path)
    except ConfigError as exc:
        raise ConfigError(f"{exc}; fix that line in an editor, or move the file away") from None
    key = KEYS.get(_ALIASES.get(name, name))
    names = {name, *((key.name, key.alias or key.name) if key else ())}
    written = key.name if key else name
    expected = {k: v for k, v in document.items() if k not in names}
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    spans: list[tuple[int, int]] = []
    insert_at = len(lines)
    last_end: int | None = None  # a new key goes after the last top-level one, not the table
    for start, end, parsed in _statements(lines):
        if parsed is None:
            insert_at = start if last_end is None else last_end
            continue
        last_end = end
        if set(parsed) & names:
            spans.append((start, end))
    new_line = [] if value is None else [f"{written} = {toml_value(value)}\n"]
    if spans:
        first = spans[0][0]
        for start, end in reversed(spans):
            del lines[start:end]
        lines[first:first] = new_line
    else:
        lines[insert_at:insert_at] = new_line
    result = "".join(lines)
    if value is not None:
        expected[written] = value
    try:
        same = tomllib.loads(result) == expected
    except tomllib.TOMLDecodeError:
        same = False
    if not same:
        raise ConfigError(f"{path}: cannot change {name} safely here; edit the file by hand")
    return result


def write_atomic(path: Path, text: str) -> None:
    """Replace the file in one step (a reader sees the old or the new text, never half)."""
    path = Path(os.path.realpath(path))  # a symlinked dotfile stays a symlink
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
