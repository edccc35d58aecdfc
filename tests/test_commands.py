"""Tests for lanchat.commands: what a typed line means, tab completion, the /help text."""

from __future__ import annotations

import pytest

from lanchat.commands import (
    COMMANDS,
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

# ---------------------------------------------------------------- parse_line


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("", None),
        ("   \t ", None),
        ("\n", None),
        ("hello world", Say("hello world")),
        ("  indented stays  ", Say("  indented stays  ")),
        ("hello\r\n", Say("hello")),
        ("//not a command", Say("/not a command")),
        ("/help", Help()),
        ("/HELP me", Help()),
        ("/nick robert", Nick("robert")),
        ("/nick", Invalid("usage: /nick NEW (one word, no spaces)")),
        ("/nick two words", Invalid("usage: /nick NEW (one word, no spaces)")),
        ("/msg alice hi there  you", Msg("alice", "hi there  you")),
        ("/msg   a1b2   spaced", Msg("a1b2", "spaced")),
        ("/msg alice", Invalid("usage: /msg PEER TEXT")),
        ("/msg", Invalid("usage: /msg PEER TEXT")),
        ("/notice fire drill at 3", Notice("fire drill at 3")),
        ("/notice   ", Invalid("usage: /notice TEXT")),
        ("/peers", Peers()),
        ("/peers now", Invalid("usage: /peers (no arguments)")),
        ("/join dev", Join("dev")),
        ("/join #dev", Join("#dev")),
        ("/join", Invalid("usage: /join ROOM")),
        ("/join a b", Invalid("usage: /join ROOM")),
        ("/leave", Leave(None)),
        ("/leave dev", Leave("dev")),
        ("/leave a b", Invalid("usage: /leave [ROOM]")),
        ("/rooms", Rooms()),
        ("/rooms x", Invalid("usage: /rooms (no arguments)")),
        ("/away", Away("")),
        ("/away gone to lunch", Away("gone to lunch")),
        ("/back", Back()),
        ("/back x", Invalid("usage: /back (no arguments)")),
        ("/quit", Quit()),
        ("/exit", Quit()),
        ("/quit now", Invalid("usage: /quit")),
        ("/", Invalid("empty command; try /help")),
        ("/ nick", Invalid("empty command; try /help")),
        ("/frobnicate x", Invalid("unknown command /frobnicate; try /help")),
    ],
)
def test_parse_line(line: str, expected: Command | None) -> None:
    assert parse_line(line) == expected


def test_every_command_is_in_help_and_known_to_the_parser() -> None:
    text = "\n".join(help_lines())
    for command in COMMANDS:
        assert f"  {command}" in text
        for line in (command, f"{command} x y"):
            parsed = parse_line(line)
            assert parsed is not None
            assert not (isinstance(parsed, Invalid) and "unknown" in parsed.reason), line


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("/who", Who(None)),
        ("/who #dev", Who("#dev")),
        ("/who a b", Invalid("usage: /who [ROOM]")),
        ("/random", Random()),
        ("/RANDOM", Random()),
        ("/random bob", Invalid("usage: /random (no arguments)")),
    ],
)
def test_parse_who_and_random(line: str, expected: Command) -> None:
    assert parse_line(line) == expected


# ---------------------------------------------------------------- completions


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/", [f"{c} " for c in COMMANDS]),
        ("/n", ["/nick ", "/notice "]),
        ("/MS", ["/msg "]),
        ("/msg ", ["bob ", "bobby ", "carol "]),
        ("/msg bo", ["bob ", "bobby "]),
        ("/msg CA", ["carol "]),
        ("/msg bob hello c", ["carol"]),
        ("/join ", ["dev", "lobby"]),
        ("/join #d", ["#dev"]),
        ("/leave l", ["lobby"]),
        ("/join dev x", []),
        ("/nick b", []),
        ("hi ca", ["carol"]),
        ("hi ", []),
        ("", []),
    ],
)
def test_completions(text: str, expected: list[str]) -> None:
    assert completions(text, ["carol", "bob", "bobby", "bob"], ["lobby", "dev"]) == expected


def test_completions_of_who_and_random() -> None:
    assert completions("/w", [], []) == ["/who "]
    assert completions("/ra", [], []) == ["/random "]
    assert completions("/who l", ["bob"], ["lobby", "dev"]) == ["lobby"]
    assert completions("/random b", ["bob"], ["lobby"]) == []
