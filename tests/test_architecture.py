"""The protocol core does no I/O: checked by scanning its imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lanchat

PACKAGE = Path(lanchat.__file__).parent
CORE = [
    "codec.py", "config.py", "core.py", "events.py", "membership.py", "errors.py", "testing.py",
    "part.py", "stats.py", "dedup.py", "heartbeat.py", "delivery.py", "reports.py", "repair.py",
    "catchup.py",
]  # fmt: skip
BANNED = {"socket", "asyncio", "time", "netifaces", "click", "select", "selectors", "os"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
            if node.module == "lanchat":
                names.update(f"lanchat.{alias.name}" for alias in node.names)
            elif node.module.startswith("lanchat."):
                names.add(node.module)
    return names


@pytest.mark.parametrize("name", CORE)
def test_core_module_does_no_io(name: str) -> None:
    mods = imported_modules(PACKAGE / name)
    assert not (mods & BANNED), f"{name} imports {sorted(mods & BANNED)}"
    # ...nor reaches I/O through another lanchat module.
    io_modules = {"lanchat.node", "lanchat.netif", "lanchat.cli", "lanchat.identity"}
    assert not (mods & io_modules), f"{name} imports {sorted(mods & io_modules)}"


def test_scan_sees_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import socket\nfrom time import monotonic\nfrom lanchat import node\n")
    assert {"socket", "time", "lanchat.node"} <= imported_modules(probe)
