"""pytest fixtures for multi-host tests in network namespaces (`tests.lab`).

Mark such tests ``@pytest.mark.netns``. Without root or usable network namespaces they are
skipped, but under ``CI=true`` that skip is a failure: CI must really run them. A kernel
feature a test needs and this machine lacks (nftables for loss and partitions, IPv6,
multicast routing) is a skip with its reason, under CI too: the suite must pass on any
fresh machine of this kind, and the skip line says what was not tested.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e_helpers import LanchatNet
from tests.lab import Lab, LabError, LabUnsupported

__all__ = ["lab", "net", "netns_required"]


def _netns_problem() -> str | None:
    """Why the namespace lab cannot run here, or None if a probe lab came up."""
    if os.geteuid() != 0:
        return "network-namespace tests need root"
    try:
        with Lab() as probe:
            probe.hosts(1)
    except (LabError, OSError) as exc:
        return f"network namespaces unusable: {exc}"
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """A lab feature this kernel lacks (LabUnsupported) skips the test with the reason."""
    try:
        return (yield)
    except LabUnsupported as exc:
        pytest.skip(f"this machine cannot run it: {exc}")


@pytest.fixture(scope="session")
def netns_required() -> None:
    """Skip (fail under CI=true) unless network-namespace labs work here."""
    problem = _netns_problem()
    if problem is None:
        return
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"CI=true, yet {problem}", pytrace=False)
    pytest.skip(problem)


@pytest.fixture
def lab(netns_required: None) -> Iterator[Lab]:
    """A fresh, empty Lab, closed (processes ended, namespaces deleted) after the test."""
    with Lab() as new_lab:
        yield new_lab


@pytest.fixture
def net(lab: Lab, tmp_path: Path) -> Iterator[LanchatNet]:
    """lanchat in the lab's hosts; listeners stopped before the lab is closed.

    Teardown also checks that every line a ``listen --json`` printed was a JSON event.
    """
    lanchat_net = LanchatNet(lab, tmp_path / "homes")
    yield lanchat_net
    listeners = list(lanchat_net.listeners)
    lanchat_net.close()
    assert [line for x in listeners for line in x.bad_lines] == []
