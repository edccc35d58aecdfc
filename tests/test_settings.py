"""The config file: parsing, checking, editing, and its place in click's precedence."""

from __future__ import annotations

import json
import os
import stat
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from lanchat import cli as cli_module
from lanchat import config as cfg
from lanchat import settings
from lanchat.errors import ConfigError
from lanchat.seal import new_key_text
from tests.loopback_helpers import cli as run_lanchat

ENV = [
    "LANCHAT_CONFIG", "LANCHAT_NICK", "LANCHAT_ROOM", "LANCHAT_INTERFACE",
    "LANCHAT_EXCLUDE_INTERFACE", "LANCHAT_KEY_FILE", "LANCHAT_KEY", "LANCHAT_COLOUR",
    "LANCHAT_COLOR", "LANCHAT_NO_HISTORY", "LANCHAT_GROUP", "LANCHAT_PORT", "LANCHAT_TTL",
    "NO_COLOR",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:  # conftest pins LANCHAT_INTERFACE=lo: these tests set it themselves
        monkeypatch.delenv(name, raising=False)


def write_config(text: str) -> Path:
    path = settings.config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli_module.cli, list(args), prog_name="lanchat")


# -- where the file is


def test_the_file_is_in_the_app_directory_unless_lanchat_config_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert settings.config_path() == Path(os.environ["LANCHAT_HOME"]) / "config.toml"
    assert invoke("config", "path").output.strip() == str(settings.config_path())
    monkeypatch.setenv("LANCHAT_CONFIG", str(tmp_path / "elsewhere.toml"))
    assert settings.config_path() == tmp_path / "elsewhere.toml"
    assert invoke("config", "set", "ttl", "2").exit_code == 0
    assert tomllib.loads((tmp_path / "elsewhere.toml").read_text()) == {"ttl": 2}


# -- values


@pytest.mark.parametrize(
    ("key", "raw", "expected"),
    [
        ("nick", "alice", "alice"),
        ("rooms", ["#dev", "ops"], ["dev", "ops"]),
        ("rooms", "dev", ["dev"]),  # a string is a one-item list
        ("interface", ["eth0", "10.0.0.1"], ["eth0", "10.0.0.1"]),
        ("colour", "never", "never"),
        ("history", False, False),
        ("group", "239.1.2.3", "239.1.2.3"),
        ("port", 4000, 4000),
        ("ttl", 255, 255),
    ],
)
def test_good_values_pass(key: str, raw: Any, expected: Any) -> None:
    assert settings.check_value(settings.KEYS[key], raw) == expected


@pytest.mark.parametrize(
    ("key", "raw", "why"),
    [
        ("nick", "a b", "spaces"),
        ("nick", 7, "expected a string"),
        ("rooms", ["ok", 3], "list of strings"),
        ("rooms", ["a b"], "spaces"),
        ("interface", [" eth0"], "not an interface"),
        ("colour", "sometimes", "auto, always, never"),
        ("history", "off", "true or false"),
        ("group", "10.0.0.1", "not a multicast"),
        ("port", 0, "not in 1..65535"),
        ("port", "47667", "expected an integer"),
        ("ttl", True, "expected an integer"),
        ("ttl", 256, "not in 1..255"),
    ],
)
def test_bad_values_say_why(key: str, raw: Any, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        settings.check_value(settings.KEYS[key], raw)


@pytest.mark.parametrize(
    ("key", "words", "expected"),
    [
        ("rooms", ["lobby", "dev"], ["lobby", "dev"]),
        ("history", ["off"], False),
        ("history", ["On"], True),
        ("port", ["+4000"], 4000),
        ("colour", ["always"], "always"),
    ],
)
def test_command_line_words_become_values(key: str, words: list[str], expected: Any) -> None:
    assert settings.parse_args(settings.KEYS[key], words) == expected


@pytest.mark.parametrize(
    ("key", "words", "why"),
    [
        ("ttl", ["x"], "expected an integer, got 'x'"),
        ("ttl", ["1", "2"], "takes one value, got 2"),
        ("history", ["maybe"], "on or off"),
        ("key_file", ["/no/such/key"], "no such file"),
    ],
)
def test_bad_command_line_words_say_why(key: str, words: list[str], why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        settings.parse_args(settings.KEYS[key], words)


def test_colour_modes() -> None:
    on_tty = {"TERM": "xterm"}
    assert settings.colour_enabled("auto", True, on_tty)
    assert not settings.colour_enabled("auto", False, on_tty)
    assert not settings.colour_enabled("auto", True, {**on_tty, "NO_COLOR": "1"})
    assert settings.colour_enabled("auto", True, {**on_tty, "NO_COLOR": ""})  # empty: unset
    assert not settings.colour_enabled("auto", True, {"TERM": "dumb"})
    assert settings.colour_enabled("always", False, {"NO_COLOR": "1"})  # explicit wins
    assert not settings.colour_enabled("never", True, on_tty)


# -- writing

_scalars = st.one_of(
    st.text(), st.integers(-(2**63), 2**63 - 1), st.booleans(), st.lists(st.text(), max_size=4)
)


@given(st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_-]{0,12}", fullmatch=True), _scalars))
def test_dumps_round_trips_through_tomllib(values: dict[str, Any]) -> None:
    assert tomllib.loads(settings.dumps(values)) == values


KEEP = """\
# my lanchat settings
nick = "alice"   # me
rooms = [
  "lobby",  # everyone
  "dev",
]
color = "never"
"""


def test_edit_keeps_comments_and_replaces_a_multi_line_value(tmp_path: Path) -> None:
    out = settings.edit(KEEP, "rooms", ["ops"], tmp_path / "c.toml")
    assert out.splitlines() == [
        "# my lanchat settings",
        'nick = "alice"   # me',
        'rooms = ["ops"]',
        'color = "never"',
    ]


def test_edit_writes_the_canonical_spelling_and_drops_the_alias(tmp_path: Path) -> None:
    out = settings.edit(KEEP, "colour", "always", tmp_path / "c.toml")
    assert tomllib.loads(out) == {"nick": "alice", "rooms": ["lobby", "dev"], "colour": "always"}
    assert "color" not in out and "# my lanchat settings" in out


def test_edit_adds_before_a_table_and_removes_keys(tmp_path: Path) -> None:
    text = "ttl = 2\n\n[extra]\nx = 1\n"
    out = settings.edit(text, "port", 4000, tmp_path / "c.toml")
    assert tomllib.loads(out) == {"ttl": 2, "port": 4000, "extra": {"x": 1}}
    assert settings.edit(out, "ttl", None, tmp_path / "c.toml") == "port = 4000\n\n[extra]\nx = 1\n"
    assert settings.edit("ttl = 2", "nick", "bo", tmp_path / "c.toml") == 'ttl = 2\nnick = "bo"\n'


def test_edit_refuses_what_it_cannot_do_safely(tmp_path: Path) -> None:
    # A dotted key's parent cannot be removed line by line; the check after the edit notices.
    with pytest.raises(ConfigError, match="cannot change extra safely"):
        settings.edit("[extra]\nx = 1\n", "extra", None, tmp_path / "c.toml")
    with pytest.raises(ConfigError, match=r"not valid TOML.*line 1.*in an editor"):
        settings.edit('nick = "open\n', "ttl", 2, tmp_path / "c.toml")


def test_write_atomic_creates_the_directory_and_keeps_mode_and_symlink(tmp_path: Path) -> None:
    target = tmp_path / "dotfiles" / "lanchat.toml"
    settings.write_atomic(target, "ttl = 2\n")
    assert target.read_text() == "ttl = 2\n"
    target.chmod(0o600)
    link = tmp_path / "home" / "config.toml"
    link.parent.mkdir()
    link.symlink_to(target)
    settings.write_atomic(link, "ttl = 3\n")
    assert link.is_symlink() and target.read_text() == "ttl = 3\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == ["lanchat.toml"]  # no temp left


# -- loading


def test_a_missing_file_is_an_empty_one() -> None:
    loaded = settings.load()
    assert (loaded.exists, loaded.values, loaded.problems) == (False, {}, [])


def test_each_bad_entry_is_one_problem_and_the_good_ones_stay() -> None:
    path = write_config('nick = "bob"\nttl = 999\nfoo = 1\ncolour = "never"\ncolor = "always"\n')
    loaded = settings.load()
    assert loaded.values == {"nick": "bob", "colour": "never"}
    lines = [str(p) for p in loaded.problems]
    assert lines == [
        f"{path}: ttl: 999 is not in 1..255",
        f"{path}: foo: unknown key (known: {', '.join(settings.KEYS)})",
        f"{path}: color: given twice (as colour and color)",
    ]
    assert "lanchat config unset foo" in loaded.problems[1].hint()


def test_key_files_are_relative_to_the_config_file() -> None:
    path = write_config('key_file = "team.key"\n')
    (path.parent / "team.key").write_text(new_key_text())
    loaded = settings.load()
    assert loaded.values == {"key_file": ["team.key"]}
    mapped = settings.default_map(loaded.values, cli_module.cli.commands, path.parent)
    assert mapped["join"]["key_files"] == [str(path.parent / "team.key")]
    (path.parent / "team.key").unlink()
    assert [p.why for p in settings.load().problems] == [f"no such file: {path.parent}/team.key"]


def test_default_map_gives_each_command_only_its_own_keys() -> None:
    values = {"nick": "n", "rooms": ["r"], "colour": "never", "history": False, "ttl": 2}
    mapped = settings.default_map(values, cli_module.cli.commands, Path("/"))
    assert mapped["join"] == {"nick": "n", "rooms": ["r"], "colour": "never",
                              "no_history": True, "ttl": 2}  # fmt: skip
    assert mapped["send"] == {"nick": "n", "no_history": True, "ttl": 2}
    assert mapped["peers"] == {"nick": "n", "ttl": 2}
    assert "keygen" not in mapped and "history" not in mapped and "config" not in mapped


def test_every_key_names_the_variables_of_its_option() -> None:
    join = {p.name: p for p in cli_module.join.params}
    for key in settings.KEYS.values():
        envvar = join[key.param].envvar
        assert list(key.envvars) == ([envvar] if isinstance(envvar, str) else envvar), key.name


# -- precedence: option > environment > file > default, through click itself


def _key_files(tmp_path: Path) -> dict[str, str]:
    paths = {}
    for name in ("file", "env", "opt"):
        paths[name] = str(tmp_path / f"{name}.key")
        Path(paths[name]).write_text(new_key_text())
    return paths


# key: (file value, environment variable and value, option words, then the
# join parameter's value from each source: default, file, env, option)
def _matrix(keys: dict[str, str]) -> dict[str, tuple[Any, ...]]:
    return {
        "nick": ("f", ("LANCHAT_NICK", "e"), ["--nick", "o"],
                 cli_module.default_nick(), "f", "e", "o"),
        "rooms": (["f1", "f2"], ("LANCHAT_ROOM", "e1 e2"), ["-r", "o1", "-r", "o2"],
                  (), ("f1", "f2"), ("e1", "e2"), ("o1", "o2")),
        "interface": (["fi"], ("LANCHAT_INTERFACE", "ei ej"), ["-i", "oi"],
                      (), ("fi",), ("ei", "ej"), ("oi",)),
        "exclude_interface": (["fx"], ("LANCHAT_EXCLUDE_INTERFACE", "ex"),
                              ["--exclude-interface", "ox"], (), ("fx",), ("ex",), ("ox",)),
        "key_file": ([keys["file"]], ("LANCHAT_KEY_FILE", keys["env"]),
                     ["--key-file", keys["opt"]], (), (Path(keys["file"]),),
                     (Path(keys["env"]),), (Path(keys["opt"]),)),
        "colour": ("never", ("LANCHAT_COLOR", "always"), ["--colour", "auto"],
                   "auto", "never", "always", "auto"),
        "history": (False, ("LANCHAT_NO_HISTORY", "0"), ["--no-history"],
                    False, True, False, True),
        "group": ("239.1.1.1", ("LANCHAT_GROUP", "239.2.2.2"), ["--group", "239.3.3.3"],
                  cfg.DEFAULT_GROUP, "239.1.1.1", "239.2.2.2", "239.3.3.3"),
        "port": (1000, ("LANCHAT_PORT", "2000"), ["--port", "3000"],
                 cfg.DEFAULT_PORT, 1000, 2000, 3000),
        "ttl": (2, ("LANCHAT_TTL", "3"), ["--ttl", "4"], cfg.DEFAULT_TTL, 2, 3, 4),
    }  # fmt: skip


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, tuple[Any, str]]]:
    """What `lanchat join` was called with: parameter -> (value, source)."""
    found: dict[str, tuple[Any, str]] = {}

    def record(**params: Any) -> None:
        ctx = click.get_current_context()
        for name, value in params.items():
            source = ctx.get_parameter_source(name)
            found[name] = (value, source.name if source else "")

    monkeypatch.setattr(cli_module.join, "callback", record)
    yield found


SOURCE = {
    "default": "DEFAULT",
    "file": "DEFAULT_MAP",
    "env": "ENVIRONMENT",
    "option": "COMMANDLINE",
}


@pytest.mark.parametrize("level", ["default", "file", "env", "option"])
@pytest.mark.parametrize("name", list(settings.KEYS))
def test_option_beats_environment_beats_file_beats_default(
    name: str,
    level: str,
    seen: dict[str, tuple[Any, str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    file_value, (envvar, env_value), words, *expected = _matrix(_key_files(tmp_path))[name]
    depth = ["default", "file", "env", "option"].index(level)
    if depth >= 1:  # every lower source is present too, so the higher one must win
        settings.write_atomic(settings.config_path(), settings.dumps({name: file_value}))
    if depth >= 2:
        monkeypatch.setenv(envvar, env_value)
    args = words if depth >= 3 else []
    result = invoke("join", *args)
    assert result.exit_code == 0, result.output
    key = settings.KEYS[name]
    assert seen[key.param] == (expected[depth], SOURCE[level])
    # `lanchat config show` reports the same value and source, resolved the same way.
    shown = json.loads(invoke("config", "show", "--json", *args).output)["settings"][name]
    assert shown == {"value": _jsonable(key.from_param(expected[depth])), "source": level}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def test_the_other_colour_variable_and_option_spelling(
    seen: dict[str, tuple[Any, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LANCHAT_COLOUR", "never")
    assert invoke("join").exit_code == 0
    assert seen["colour"] == ("never", "ENVIRONMENT")
    assert invoke("join", "--color", "always").exit_code == 0
    assert seen["colour"] == ("always", "COMMANDLINE")


def test_history_option_overrides_a_file_that_turns_history_off(
    seen: dict[str, tuple[Any, str]],
) -> None:
    write_config("history = false\n")
    assert invoke("join", "--history").exit_code == 0
    assert seen["no_history"] == (False, "COMMANDLINE")


# -- the commands


def test_config_set_then_show(tmp_path: Path) -> None:
    key = tmp_path / "team.key"
    key.write_text(new_key_text())
    for words in (["nick", "alice"], ["rooms", "lobby", "dev"], ["color", "never"],
                  ["history", "off"], ["ttl", "2"], ["key_file", str(key)]):  # fmt: skip
        result = invoke("config", "set", *words)
        assert result.exit_code == 0, result.output
    text = settings.config_path().read_text()
    assert tomllib.loads(text) == {"nick": "alice", "rooms": ["lobby", "dev"], "colour": "never",
                                   "history": False, "ttl": 2, "key_file": [str(key)]}  # fmt: skip
    shown = invoke("config", "show")
    assert shown.exit_code == 0
    lines = shown.output.splitlines()
    assert lines[0] == f"# {settings.config_path()}"
    assert [line.split() for line in lines[1:4]] == [
        ["nick", "=", '"alice"', "#", "file"],
        ["rooms", "=", '["lobby",', '"dev"]', "#", "file"],
        ["interface", "=", "[]", "#", "default"],
    ]
    assert invoke("config", "unset", "colour").exit_code == 0
    assert "colour" not in tomllib.loads(settings.config_path().read_text())
    result = invoke("config", "unset", "colour")
    assert result.exit_code == 0 and "colour is not set" in result.output


def test_config_set_refuses_bad_values_in_one_line() -> None:
    for words, message in [
        (["ttl", "999"], "lanchat: ttl: 999 is not in 1..255\n"),
        (["nosuch", "1"], "lanchat: unknown key 'nosuch'"),
        (["colour", "pink"], "lanchat: colour: expected one of auto, always, never, got 'pink'\n"),
    ]:
        result = invoke("config", "set", *words)
        assert result.exit_code == 1 and result.output.startswith(message)
        assert "Traceback" not in result.output
    assert not settings.config_path().exists()


def test_a_broken_entry_stops_commands_with_the_fix_and_config_set_fixes_it(
    seen: dict[str, tuple[Any, str]],
) -> None:
    path = write_config('nick = "bob"\nttl = 999\n')
    result = invoke("join")
    assert result.exit_code == 1 and not seen
    assert result.output == (
        f"lanchat: {path}: ttl: 999 is not in 1..255; "
        "fix it: `lanchat config set ttl VALUE` or `lanchat config unset ttl`\n"
    )
    show = invoke("config", "show")
    assert show.exit_code == 1 and "ttl = 1" in show.output  # the fallback, and the problem
    assert invoke("config", "set", "ttl", "3").exit_code == 0
    assert invoke("join").exit_code == 0
    assert seen["ttl"] == (3, "DEFAULT_MAP") and seen["nick"] == ("bob", "DEFAULT_MAP")


def test_an_unknown_key_can_be_unset() -> None:
    write_config("ttl = 2\nfoo = 1\n")
    assert "remove it with `lanchat config unset foo`" in invoke("peers").output
    assert invoke("config", "unset", "foo").exit_code == 0
    assert settings.config_path().read_text() == "ttl = 2\n"


def test_a_file_that_is_not_toml_says_where_and_how_to_fix_it() -> None:
    path = write_config('nick = "bob\nttl = 2\n')
    result = invoke("join")
    assert result.exit_code == 1
    assert result.output.startswith(f"lanchat: {path}: not valid TOML: ")
    assert "(at line 1, column 12); fix that line in an editor, or move the file away\n" in (
        result.output
    )
    result = invoke("config", "set", "ttl", "3")
    assert result.exit_code == 1 and "fix that line in an editor" in result.output
    assert invoke("config", "path").exit_code == 0  # still tells where the file is
    assert invoke("keygen", "--help").exit_code == 0  # commands without settings still run


def test_join_uses_the_files_rooms_colour_and_history(lo_port: int) -> None:
    write_config('nick = "bot"\nrooms = ["dev", "ops"]\ncolour = "always"\nhistory = false\n')
    result = run_lanchat("join", port=lo_port, input="/rooms\n/bogus\n")
    assert result.returncode == 0, result.stderr
    assert "* #dev: (nobody else)" in result.stdout and "  #ops: " in result.stdout
    assert "\x1b[31;1merror: unknown command" in result.stdout  # coloured though piped
    assert not (Path(os.environ["LANCHAT_HOME"]) / "history.sqlite3").exists()
    plain = run_lanchat("join", "--colour", "never", port=lo_port, input="/bogus\n")
    assert "error: unknown command" in plain.stdout and "\x1b" not in plain.stdout
