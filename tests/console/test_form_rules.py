"""The console's forms follow the API's rules, because both call the same domain checks
(coalition/text.py, settlement/workflow.py): a payment reference with a NUL, a line break,
escape or bell, a payment day in 1970, a dispute reason on two lines, a line disputed twice
are refused, nothing is stored, and the statement's page comes back with the problem above
its forms (HTML, never a 500 or JSON). A text stored before the rule shows harmlessly."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from sqlalchemy import select, update

from coalition.db import transaction
from coalition.models import Transaction
from partners.models import Partner
from settlement.models import Dispute, Statement
from tests.conftest import Db
from tests.console.conftest import World, _world


def _settle(world: World, reference: str, day: str) -> tuple[int, str, str]:
    url = f"/console/statements/{world.alpha_statement}/settle"
    done = world.client.post(
        url, data={"csrf": world.csrf(), "payment_reference": reference, "paid_at": day}
    )
    return done.status_code, done.headers["content-type"], done.text


def _statement(world: World, statement_id: str) -> Statement:
    with transaction(world.db.sessions) as s:
        found = s.get(Statement, statement_id)
        assert found is not None
        s.expunge(found)
        return found


@pytest.mark.parametrize(
    "reference", ["wire\x00", "wire\r\nX-Injected: 1", "wire\x1b[31m\x07", "wire\u202e1"]
)
def test_a_payment_reference_breaking_the_text_rule_re_renders_the_page(
    world: World, reference: str
) -> None:
    assert world.sign_in(world.link("finance"))[0] == 200
    status, kind, text = _settle(world, reference, world.db.clock().date().isoformat())
    assert (status, kind.split(";")[0]) == (422, "text/html")
    assert 'id="problem"' in text and "payment_reference" in text and 'id="settle-form"' in text
    after = _statement(world, world.alpha_statement)
    assert (after.status, after.payment_reference) == ("issued", None)


def test_a_payment_day_long_before_the_period_is_refused(world: World) -> None:
    assert world.sign_in(world.link("finance"))[0] == 200
    status, _, text = _settle(world, "wire-1970", "1970-01-01")
    assert status == 422 and "paid_at" in text and "the day the period ended" in text
    assert 'value="wire-1970"' in text  # what was typed is kept
    assert _statement(world, world.alpha_statement).status == "issued"


def test_a_dispute_reason_on_two_lines_is_refused_and_a_line_is_disputed_once(
    world: World,
) -> None:
    with transaction(world.db.sessions) as s:
        line = s.scalars(
            select(Transaction.id).where(Transaction.partner_id == world.alpha)
        ).first()
    assert world.sign_in(world.link("partner", world.alpha))[0] == 200
    url = f"/console/statements/{world.alpha_statement}/disputes"
    form = {"csrf": world.csrf(), "transaction_ids": [line]}
    two_lines = world.client.post(url, data={**form, "reason": "first\nsecond"})
    assert two_lines.status_code == 422 and 'id="problem"' in two_lines.text
    first = world.client.post(url, data={**form, "reason": "billed twice"})
    assert first.status_code == 200  # the statement's page, after its redirect
    again = world.client.post(url, data={**form, "reason": "still wrong"})
    assert again.status_code == 409 and "text/html" in again.headers["content-type"]
    with transaction(world.db.sessions) as s:
        disputes = s.scalars(select(Dispute)).all()
        assert [(d.reason, d.transaction_ids) for d in disputes] == [("billed twice", line)]
        assert disputes[0].id in again.text


def test_the_operator_resolves_with_the_domains_outcomes(world: World) -> None:
    assert world.sign_in(world.link("partner", world.alpha))[0] == 200
    url = f"/console/statements/{world.alpha_statement}/disputes"
    world.client.post(url, data={"csrf": world.csrf(), "reason": "check"})
    world.client.cookies.clear()
    assert world.sign_in(world.link("operator"))[0] == 200
    page = world.client.get(f"/console/statements/{world.alpha_statement}").text
    offered = re.findall(r'<option value="([a-z_]+)">', page)
    assert offered == ["upheld", "partially_upheld", "rejected"]
    with transaction(world.db.sessions) as s:
        dispute_id = s.scalars(select(Dispute.id)).one()
    note = world.client.post(
        f"/console/disputes/{dispute_id}/resolve",
        data={"csrf": world.csrf(), "outcome": "upheld", "note": "line\nbreak"},
    )
    assert note.status_code == 422 and 'id="problem"' in note.text
    done = world.client.post(
        f"/console/disputes/{dispute_id}/resolve",
        data={"csrf": world.csrf(), "outcome": "upheld", "note": "refunded"},
    )
    assert done.status_code == 200
    with transaction(world.db.sessions) as s:
        assert s.get(Dispute, dispute_id).outcome == "upheld"  # type: ignore[union-attr]


def test_a_bidi_override_stored_before_the_rule_is_shown_harmlessly(world: World) -> None:
    with transaction(world.db.sessions) as s:
        s.execute(
            update(Partner).where(Partner.id == world.alpha).values(name="Alpha\u202eRBE 001")
        )
    assert world.sign_in(world.link("operator"))[0] == 200
    for path in ("/console/partners", f"/console/statements/{world.alpha_statement}"):
        text = world.client.get(path).text
        assert "\u202e" not in text and "Alpha\ufffdRBE 001" in text


@pytest.fixture
def pg_world(pg: Db) -> Iterator[World]:
    yield from _world(pg, "https://console.coalition.test")


@pytest.mark.parametrize("line", ["txn_\x00", "wire\x00", "txn_01\u202e", "x" * 5000])
def test_a_disputed_line_that_is_not_a_transaction_id_is_refused_on_postgresql(
    pg_world: World, line: str
) -> None:
    world = pg_world
    assert world.sign_in(world.link("partner", world.alpha))[0] == 200
    refused = world.client.post(
        f"/console/statements/{world.alpha_statement}/disputes",
        data={"csrf": world.csrf(), "reason": "why", "transaction_ids": [line]},
    )
    assert refused.status_code == 422 and "transaction_ids[0]" in refused.text
    with transaction(world.db.sessions) as s:
        assert s.scalars(select(Dispute)).all() == []


@pytest.mark.parametrize("reference", ["wire\x00", "wire\r\n"])
def test_a_payment_reference_with_a_nul_is_refused_on_postgresql(
    pg_world: World, reference: str
) -> None:
    world = pg_world
    assert world.sign_in(world.link("finance"))[0] == 200
    status, kind, _ = _settle(world, reference, world.db.clock().date().isoformat())
    assert (status, kind.split(";")[0]) == (422, "text/html")
    assert _statement(world, world.alpha_statement).status == "issued"
