"""Keyset pagination (coalition.pages), as every listing uses it: newest first, one page after
another without gaps or repeats, bounded; a refused page names its field, not a location."""

from __future__ import annotations

import pytest

from coalition.db import transaction
from coalition.errors import ValidationFailed
from partners.queries import list_partners, list_transactions
from partners.rates import create_partner
from settlement.workflow import list_statements
from tests.conftest import Db


def test_pages_follow_each_other_newest_first_without_gaps(db: Db) -> None:
    with transaction(db.sessions) as s:
        made = [
            create_partner(s, name=f"P{i}", currency="EUR", now=db.clock()).id for i in range(5)
        ]
    seen: list[str] = []
    before: str | None = None
    with transaction(db.sessions) as s:
        while True:
            page = list_partners(s, before_id=before, limit=2)
            seen += [p.id for p in page.rows]
            if page.last_id is None:
                break
            before = page.last_id
    assert seen == sorted(made, reverse=True)


@pytest.mark.parametrize("limit", [0, 501])
def test_a_page_beyond_its_bounds_names_the_field(db: Db, limit: int) -> None:
    with transaction(db.sessions) as s:
        for listing in (
            lambda: list_partners(s, limit=limit),
            lambda: list_transactions(s, partner_id=None, limit=limit),
            lambda: list_statements(s, partner_id=None, status=None, before_id=None, limit=limit),
        ):
            with pytest.raises(ValidationFailed) as refused:
                listing()
            assert refused.value.errors == [{"path": "limit", "message": "from 1 to 500"}]
