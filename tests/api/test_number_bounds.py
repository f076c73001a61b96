"""Every number the ledger keeps has one bound, refused at input with ``422`` naming the field:
rate-card fields at most 10^6, an operation at most 10^12 points worth at most 10^9 in the
partner's currency (at each price of the rate card in force), so that nothing accepted can
later fail to be billed."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from tests.api.conftest import Live, Partner, ok, problem, unique
from tests.api.test_input_strictness import row_counts

RATE_FIELDS = (
    "earn_points_per_unit",
    "issue_price_per_point",
    "burn_value_per_point",
    "reimburse_price_per_point",
)
TOO_LARGE_RATES = (
    "1000000.000000000001",
    "1000001",
    "10000000000000000",
    "9" * 18 + "." + "9" * 12,
)


def _card(**changes: str) -> dict[str, Any]:
    return {
        "earn_points_per_unit": "1",
        "issue_price_per_point": "0.01",
        "burn_value_per_point": "0.01",
        "reimburse_price_per_point": "0.008",
        "effective_from": (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat(),
        **changes,
    }


def _errors_at(doc: dict[str, Any], path: str) -> None:
    assert [e["path"] for e in doc["errors"]] == [path], doc


@pytest.mark.parametrize("field", RATE_FIELDS)
@pytest.mark.parametrize("value", TOO_LARGE_RATES)
def test_a_rate_over_a_million_is_refused_naming_the_field(
    api: Live, field: str, value: str
) -> None:
    partner = ok(
        api.operator.post("/v1/admin/partners", {"name": unique(), "currency": "EUR"}), 201
    )
    before = row_counts(api)
    response = api.operator.post(
        f"/v1/admin/partners/{partner['id']}/rate-cards", _card(**{field: value})
    )
    _errors_at(problem(response, 422, "validation"), f"$.{field}")
    assert row_counts(api) == before


def test_a_rate_of_a_million_is_accepted(api: Live) -> None:
    partner = ok(
        api.operator.post("/v1/admin/partners", {"name": unique(), "currency": "JPY"}), 201
    )
    card = _card(**dict.fromkeys(RATE_FIELDS, "1000000"))
    ok(api.operator.post(f"/v1/admin/partners/{partner['id']}/rate-cards", card), 201)


def _earn(partner: Partner, member: str, amount: str) -> Any:
    body = {"member_id": member, "reference": unique(), "amount": amount, "currency": "EUR"}
    return partner.client.post("/v1/earns", body)


def test_an_earn_worth_more_than_the_bound_at_the_issue_price_is_refused(api: Live) -> None:
    """10^9 EUR at 1000 points per EUR is 10^12 points (allowed), worth 10^10 EUR at the issue
    price of 0.01: more than one operation may be worth."""
    partner = api.partner(earn="1000")
    member = api.member(partner)
    before = row_counts(api)
    _errors_at(problem(_earn(partner, member, "1000000000"), 422, "validation"), "$.amount")
    assert row_counts(api) == before
    ok(_earn(partner, member, "100000"), 201)  # 10^8 points worth 10^6 EUR


def test_a_burn_worth_more_than_the_bound_is_refused(api: Live) -> None:
    partner = api.partner()
    member = api.member(partner, points=10)
    body = {"member_id": member, "reference": unique(), "points": 10**12}
    _errors_at(problem(partner.client.post("/v1/burns", body), 422, "validation"), "$.points")


def test_a_partner_funded_bonus_worth_more_than_the_bound_is_refused(api: Live) -> None:
    partner = api.partner()
    member = api.member(partner)
    body = {"member_id": member, "points": 10**12, "reason": "welcome", "funded_by": partner.id}
    response = api.operator.post("/v1/admin/bonuses", body)
    _errors_at(problem(response, 422, "validation"), "$.points")
    body["funded_by"] = "coalition"  # the coalition's own points are billed to nobody
    ok(api.operator.post("/v1/admin/bonuses", body), 201)
