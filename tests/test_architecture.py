"""The protocol core does no I/O: checked by scanning its imports and by importing it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import lanchat

PACKAGE = Path(lanchat.__file__).parent
CORE = [
    "codec.py", "config.py", "core.py", "events.py", "membership.py", "errors.py", "fakelan.py",
    "part.py", "stats.py", "dedup.py", "heartbeat.py", "delivery.py", "reports.py", "repair.py",
    "catchup.py", "pairing.py", "ratelimit.py", "seal.py", "trace.py",
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


# What importing a module may load, checked in a fresh interpreter: the set of modules
# it leaves in sys.modules, whatever files the core is split into.
NO_IO = {"socket", "asyncio", "click", "netifaces", "prompt_toolkit", "sqlite3", "selectors"}


def modules_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return set(result.stdout.split())


@pytest.mark.parametrize("statement", ["import lanchat.core", "import lanchat"])
def test_importing_the_core_loads_no_io(statement: str) -> None:
    loaded = modules_after(statement)
    assert "lanchat.core" in loaded
    banned = {name for name in loaded if name.split(".")[0] in NO_IO}
    assert not banned, f"{statement!r} loads {sorted(banned)}"
    assert "lanchat.node" not in loaded


def test_node_is_still_a_name_of_the_package() -> None:
    loaded = modules_after("from lanchat import Node\nassert Node.__module__ == 'lanchat.node'")
    assert {"lanchat.node", "asyncio", "socket"} <= loaded  # the check above sees I/O modules


def test_only_the_cli_imports_click() -> None:
    exempt = {"cli", "__main__"}
    names = sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem not in exempt)
    assert {"identity", "settings", "node", "doctor", "render"} <= set(names)
    loaded = modules_after("\n".join(f"import lanchat.{name}" for name in names))
    assert "click" not in loaded
