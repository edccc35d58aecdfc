"""Loss repair on real sockets: room chat through 20 % inbound loss in the namespace lab.

A short run of scripts/lab-delivery: 4 hosts, one of them dropping a fifth of
all UDP it receives, one sender chatting 100 messages at 20/s.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.lab import Lab
from tests.script_loader import load_script

pytest_plugins = ["tests.lab_fixtures"]
pytestmark = pytest.mark.netns


def test_chat_through_twenty_percent_loss_arrives_or_is_reported(lab: Lab, tmp_path: Path) -> None:
    script = load_script("lab-delivery")
    (lossy, clean), senders = script.measure(
        lab, hosts=4, messages=100, rate=20.0, senders=1, loss=0.2, home=tmp_path
    )
    for host in (lossy, clean):
        assert host.expected == 100
        assert host.delivered >= 99, host  # repaired: >= 99 % arrive
        assert host.unreported == 0, host  # what is missing was reported lost
        assert host.in_time >= 95, host  # a busy machine may be slow; the figure is in the report
    assert lossy.stats["nacks_sent"] > 0  # the loss was real, and repaired by request
    assert clean.stats["nacks_sent"] == 0
    (sender,) = senders.values()
    assert sender["nacks_received"] == lossy.stats["nacks_sent"]  # its outbound is clean
    assert sender["repairs_sent"] >= sender["nacks_received"]
