"""Tests for the history's quotas: a flood evicts its own lines, not the user's history.

Time is virtual: every received row is given its `now` (monotonic seconds); nothing sleeps.
Floods are forged `ChatReceived` events through `record_event`, the node's own path.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from lanchat import events as ev
from lanchat import history
from lanchat.history import HistoryStore

BOB = "b0b0b0b0b0b0b0b0"
ALICE = "a1a1a1a1a1a1a1a1"  # this node
FLOOD_RATE = 6_300.0  # lines a second one host got stored in the attack (issue 14)
FLOOD_LINES = 20_000


@pytest.fixture
def store(tmp_path: Path) -> Iterator[HistoryStore]:
    with HistoryStore(tmp_path / "history.sqlite3") as opened:
        yield opened


def tiers(store: HistoryStore) -> list[int]:
    return [tier for (tier,) in store._db.execute("SELECT tier FROM messages ORDER BY id")]


def chat(
    store: HistoryStore,
    peer_id: str,
    text: str,
    now: float,
    *,
    source: str | None = None,
    seq: int | None = None,
    instance: int | None = None,
) -> None:
    """A received chat line of room r, stored (within quota or not)."""
    assert store.add(
        "chat", "in", peer_id=peer_id, nick="x", text=text, room="r", now=now, source=source,
        seq=seq, instance=instance,
    )  # fmt: skip


# --------------------------------------------------------------------- quotas


def test_a_peer_past_its_rate_goes_to_the_flood_tier(store: HistoryStore) -> None:
    burst = int(history.QUOTA_PEER_BURST)
    for i in range(burst + 5):
        chat(store, BOB, f"m{i}", now=100.0)
    assert tiers(store) == [1] * burst + [2] * 5 and store.flooded == 5
    chat(store, "c4" * 8, "another peer", now=100.0)
    assert tiers(store)[-1] == 1, "only the flooder's own bucket is empty"
    chat(store, BOB, "a minute on", now=160.0)  # QUOTA_PEER_RATE lines a minute come back
    for i in range(int(history.QUOTA_PEER_RATE) - 1):
        chat(store, BOB, f"n{i}", now=160.0)
    chat(store, BOB, "one more", now=160.0)
    assert tiers(store)[-31:] == [1] * 30 + [2]
    assert [e.text for e in store.query(limit=1)] == ["one more"], "past quota: still stored"


def test_all_remote_peers_share_one_total(store: HistoryStore) -> None:
    burst = int(history.QUOTA_REMOTE_BURST)
    for i in range(burst):
        chat(store, f"{i:016x}", "hi", now=0.0)
    chat(store, "f" * 16, "a new id", now=0.0)
    store.add("direct", "in", peer_id="e" * 16, nick="e", text="dm", now=0.0)
    assert tiers(store)[-2:] == [2, 2], "a forged id of its own does not help"
    chat(store, "f" * 16, "a second later", now=1.0)  # QUOTA_REMOTE_RATE = 1 a second
    store.add("direct", "in", peer_id="e" * 16, nick="e", text="dm", now=2.0)
    assert tiers(store)[-2:] == [1, 0], "direct messages within quota are tier 0"


def test_a_source_address_is_limited_like_a_peer_id(store: HistoryStore) -> None:
    for i in range(int(history.QUOTA_PEER_BURST)):
        chat(store, BOB, f"hi {i}", now=0.0, source="10.0.0.9")
    chat(store, "c4" * 8, "another id, same host", now=0.0, source="10.0.0.9")
    chat(store, "c4" * 8, "that id from elsewhere", now=0.0, source="10.0.0.7")
    assert tiers(store)[-2:] == [2, 1]


def test_sent_rows_take_no_quota(store: HistoryStore) -> None:
    for i in range(2_000):
        store.add("chat", "out", peer_id=ALICE, nick="alice", text=f"{i}", room="r")
        store.add_direct(BOB, "bob", "psst", i, instance=1)
    chat(store, BOB, "hi", now=0.0)
    assert set(tiers(store)[:-1]) == {0} and tiers(store)[-1] == 1 and store.flooded == 0


def test_quota_table_is_bounded(store: HistoryStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(history, "_MAX_QUOTA_KEYS", 10)
    quotas = history._Quotas()
    for i in range(100):
        quotas.admit(f"{i:016x}", f"10.0.{i}.1", now=float(i))
    assert len(quotas._buckets) == 10
    assert ("remote", "") in quotas._buckets, "the total is heard last, never forgotten"


# -------------------------------------------------------------------- pruning


def test_flood_tier_is_capped_oldest_first(
    store: HistoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history, "MAX_ROWS", 1_000)  # flood tier: at most 100 rows
    for i in range(int(history.QUOTA_PEER_BURST) + 1_000):
        chat(store, BOB, f"m{i}", now=0.0)
    flooded = [e.text for e in store.query() if e.text not in {f"m{i}" for i in range(300)}]
    assert 90 <= len(flooded) <= 100
    assert flooded == [f"m{i}" for i in range(1_300 - len(flooded), 1_300)], "newest kept"
    assert store._tally() == (0, 300, len(flooded)), "the peer's lines within quota stay"


def test_own_rows_are_pruned_last_until_they_hold_their_share(
    store: HistoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history, "MAX_ROWS", 100)  # own rows keep their place up to 50
    for i in range(40):
        store.add("chat", "out", peer_id=ALICE, nick="alice", text=f"own{i}", room="r")
    for i in range(61):  # one row past the bound: prune to 90
        chat(store, BOB, f"bob{i}", now=float(i * 10))
    assert store._tally() == (40, 50, 0), "other peers' lines went first"
    for i in range(40, 80):
        store.add("chat", "out", peer_id=ALICE, nick="alice", text=f"own{i}", room="r")
    # own 51 + room 50: one row over, prune to 90: the oldest own row goes (back to its
    # share), then 10 of bob's; 29 more own rows fit under the bound again.
    assert store._tally() == (57, 40, 0)
    texts = [e.text for e in store.query()]
    assert texts == [
        *(f"own{i}" for i in range(23, 40)),
        *(f"bob{i}" for i in range(21, 61)),
        *(f"own{i}" for i in range(40, 80)),
    ]


def test_byte_bound_prunes_the_flood_tier_first(
    store: HistoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history, "MAX_BYTES", 1024 * 1024)
    for i in range(100):
        store.add("chat", "out", peer_id=ALICE, nick="alice", text=f"own{i} " + "o" * 900)
    for i in range(1_500):  # ~1.5 MB from one peer, most of it past its quota
        chat(store, BOB, f"{i:04} " + "x" * 990, now=0.0)
    assert store._bytes_used() <= 1024 * 1024
    own, room, flood = store._tally()
    assert (own, room) == (100, 300) and 0 < flood < 1_200
    texts = [e.text[:4] for e in store.query() if not e.text.startswith("own")]
    assert texts[-1] == "1499" and texts == sorted(texts)


# ------------------------------------------------------------------ the guarantee


def fill_history(
    store: HistoryStore, own: int, direct: int, others: int, peers: list[str]
) -> float:
    """Older history, within every quota: own lines, direct messages both ways, others' lines."""
    now = -1e6
    for i in range(own):
        store.add("chat", "out", peer_id=ALICE, nick="alice", text=f"own {i}", room="r")
    for i in range(direct):
        store.add_direct(BOB, "bob", f"dm out {i}", i, instance=1)
        store.add("direct", "in", peer_id=BOB, nick="bob", text=f"dm in {i}", seq=i, now=now)
        now += 2.0
    for i in range(others):
        peer = peers[i % len(peers)]
        chat(store, peer, f"old {i}", now=now, seq=i, instance=1)
        now += 2.0  # 30 lines a minute in all, well within QUOTA_REMOTE_RATE
    assert store.flooded == 0
    return now


def flood(store: HistoryStore, ids: list[str], lines: int, start: float, rate: float) -> None:
    """Forged chat lines, round robin over `ids`, at `rate` a second of virtual time."""
    rng = random.Random(14)
    for i in range(lines):
        line = ev.ChatReceived(
            ids[i % len(ids)], "mallory", "r", f"flood {i}", rng.randrange(2**64),
            instance=rng.randrange(1, 2**64),
        )  # fmt: skip
        assert store.record_event(line, instance=1, now=start + i / rate)


def survivors(store: HistoryStore, prefix: str) -> int:
    return sum(1 for e in store.query() if e.text.startswith(prefix))


def forged_ids(count: int) -> list[str]:
    return [BOB] if count == 1 else [f"{i:016x}" for i in range(1, count + 1)]


@pytest.mark.parametrize("ids", [1, 500], ids=["one known id", "500 ids"])
def test_a_flood_burst_wipes_no_history(
    store: HistoryStore, monkeypatch: pytest.MonkeyPatch, ids: int
) -> None:
    """20,000 forged lines at 6,300/s: every older line survives, the flood evicts itself."""
    monkeypatch.setattr(history, "MAX_ROWS", 5_000)
    peers = [BOB, "c4" * 8, "d5" * 8, "e6" * 8]  # the one-id flood forges BOB, a known peer
    start = fill_history(store, own=1_000, direct=100, others=2_400, peers=peers)
    flood(store, forged_ids(ids), FLOOD_LINES, start, FLOOD_RATE)
    assert survivors(store, "own ") == 1_000
    assert survivors(store, "dm ") == 200
    assert survivors(store, "old ") == 2_400, "the store had room for what the quota let in"
    own, room, flooded = store._tally()
    admitted = history.QUOTA_REMOTE_BURST + FLOOD_LINES / FLOOD_RATE  # 1 a second
    assert own == 1_200 and room - 2_400 <= admitted and flooded <= 500
    assert survivors(store, "flood ") == room - 2_400 + flooded
    assert store.query(limit=1)[0].text == f"flood {FLOOD_LINES - 1}", "the newest is on disk"


def test_an_hour_of_flood_from_many_ids_evicts_what_the_docstring_says(
    store: HistoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20,000 forged lines over an hour from 500 ids, into a store 1,000 rows short of full."""
    monkeypatch.setattr(history, "MAX_ROWS", 10_000)
    start = fill_history(store, own=900, direct=50, others=8_000, peers=["c4" * 8, "d5" * 8])
    flood(store, forged_ids(500), FLOOD_LINES, start, FLOOD_LINES / 3600)
    assert survivors(store, "own ") == 900 and survivors(store, "dm ") == 100
    in_an_hour = 4_200  # the module docstring's figure, from the quotas:
    assert in_an_hour == history.QUOTA_REMOTE_BURST + history.QUOTA_REMOTE_RATE * 60
    step = history.MAX_ROWS // 10  # pruning goes in steps, down to PRUNE_TO (90%)
    lost = 8_000 - survivors(store, "old ")
    assert 0 < lost <= in_an_hour - 1_000 + step
    kept = [int(e.text[4:]) for e in store.query() if e.text.startswith("old ")]
    assert kept == list(range(lost, 8_000)), "the oldest went first"
