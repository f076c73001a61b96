"""Ids sort by creation: "newest first" by id is what the lists and the console promise."""

from __future__ import annotations

import time

import pytest

from coalition import ids


def test_ids_minted_in_one_millisecond_still_sort_in_the_order_they_were_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(time, "time_ns", lambda: 1_800_000_000_000_000_000)
    made = [ids.new_id("txn") for _ in range(2_000)]
    assert made == sorted(made) and len(set(made)) == len(made)


def test_ids_keep_increasing_when_the_wall_clock_steps_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1_800_000_000_000_000_000]
    monkeypatch.setattr(time, "time_ns", lambda: now[0])
    before = ids.new_id("txn")
    now[0] -= 5_000_000_000  # NTP stepped the clock back five seconds
    after = ids.new_id("txn")
    assert after > before


def test_an_id_is_its_prefix_and_26_crockford_digits() -> None:
    made = ids.new_id("mem")
    assert made.startswith("mem_") and len(made) == 30
    assert set(made[4:]) <= set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")
