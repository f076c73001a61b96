"""Keyset pagination of GET /v1/transactions stays stable while transactions are inserted:
no row twice, none that existed before the first page skipped, newest first throughout."""

from __future__ import annotations

import threading
from typing import Any

from tests.api.conftest import Client, Live, ok, unique


def test_paging_is_stable_under_concurrent_inserts(live_pg: Live) -> None:
    p = live_pg.partner()
    member = live_pg.member(p)

    def earn(client: Client) -> str:
        body = {"member_id": member, "reference": unique(), "amount": "1", "currency": "EUR"}
        return str(ok(client.post("/v1/earns", body), 201)["id"])

    existing = {earn(p.client) for _ in range(12)} | {
        t["id"] for t in ok(p.client.get("/v1/transactions", params={"limit": 500}))["data"]
    }
    stop = threading.Event()
    inserted: list[str] = []

    def writer() -> None:
        client = Client(live_pg.base_url, p.key)
        for _ in range(40):
            if stop.is_set():
                return
            inserted.append(earn(client))

    thread = threading.Thread(target=writer)
    thread.start()
    seen: list[str] = []
    cursor = None
    try:
        for _ in range(100):
            params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
            page = ok(p.client.get("/v1/transactions", params=params))
            seen += [t["id"] for t in page["data"]]
            if not page["has_more"]:
                break
            cursor = page["next_cursor"]
    finally:
        stop.set()
        thread.join(timeout=60)
    assert inserted, "the writer ran alongside"
    assert len(seen) == len(set(seen)), "no row twice"
    assert seen == sorted(seen, reverse=True), "newest first throughout"
    assert existing <= set(seen), "nothing that existed before the first page is skipped"
