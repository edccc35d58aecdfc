"""Tests for lanchat.identity's app directory: where click would put it, without click."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from lanchat import identity


@pytest.mark.parametrize("xdg", ["/srv/conf", None])
def test_app_dir_is_where_click_puts_it(
    xdg: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LANCHAT_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    if xdg is None:
        monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_CONFIG_HOME", xdg)
    assert identity.app_dir() == Path(click.get_app_dir("lanchat"))
    assert identity.app_dir() == Path(xdg or tmp_path / ".config") / "lanchat"


@pytest.mark.parametrize(
    ("platform", "environ", "expected"),
    [
        ("darwin", {}, "HOME/Library/Application Support/lanchat"),
        ("win32", {"APPDATA": "C:/Users/a/AppData/Roaming"}, "C:/Users/a/AppData/Roaming/lanchat"),
        ("win32", {}, "HOME/lanchat"),
    ],
)
def test_app_dir_on_other_platforms(
    platform: str,
    environ: dict[str, str],
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("LANCHAT_HOME", "APPDATA", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("lanchat.identity.sys.platform", platform)
    assert identity.app_dir() == Path(expected.replace("HOME", str(tmp_path)))


def test_lanchat_home_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANCHAT_HOME", str(tmp_path / "elsewhere"))
    assert identity.app_dir() == tmp_path / "elsewhere"
