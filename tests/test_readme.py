"""README.md's example of testing your own code on the fake LAN runs here, as written."""

from __future__ import annotations

import re
import types
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = "<!-- tests/test_readme.py runs the next block as a test: keep it runnable -->"


def readme_example() -> str:
    """The python block right after the marker in README.md."""
    text = README.read_text(encoding="utf-8")
    assert text.count(MARKER) == 1, "README.md lost (or doubled) the tested example's marker"
    found = re.match(r"\s*```python\n(.*?)\n```", text.split(MARKER, 1)[1], re.DOTALL)
    assert found is not None, "no python block follows the marker in README.md"
    return found.group(1)


def test_readme_fake_lan_example_runs() -> None:
    module = types.ModuleType("readme_example")
    exec(compile(readme_example(), str(README), "exec"), module.__dict__)
    tests = [getattr(module, name) for name in vars(module) if name.startswith("test_")]
    assert tests, "the README example defines no test"
    for test in tests:
        test()
