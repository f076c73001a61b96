"""A member's page shows a partner nothing of another brand (contract, Partner API: no face
lets a partner learn what a member did at another partner): a link a partner minted shows the
member's balance, tier and expiring points and that partner's own transactions only, on every
page of the history; the link the operator mints shows the member's whole coalition history."""

from __future__ import annotations

import re

from api.pages import encode_cursor
from tests.console.conftest import World

HISTORY_ROW = re.compile(r"<tr><td>[^<]*</td><td>(?P<where>[^<]*)</td>")


def _history(text: str) -> str:
    start = text.find('id="history"')
    return text[start : text.find("</table>", start)] if start >= 0 else ""


def _visits(world: World) -> tuple[str, str]:
    """The member earns at Alpha (a reference and an amount of its own) and twice at Beta;
    the newest Alpha transaction's id."""
    ops = world.db.ops
    alpha = ops.earn(
        world.alpha,
        member_id=world.member,
        reference="alpha-private-order-77",
        amount="6543",
        currency="EUR",
    )
    for i in range(2):
        world.db.clock.advance(minutes=1)
        ops.earn(
            world.beta, member_id=world.member, reference=f"beta-{i}", amount="3", currency="EUR"
        )
    return alpha.transaction.id, "alpha-private-order-77"


def test_a_partners_member_link_shows_nothing_of_another_brand(world: World) -> None:
    alpha_txn, alpha_reference = _visits(world)
    assert world.sign_in(world.link("member", world.beta, world.member))[0] == 200
    page = world.client.get("/console/member")
    assert page.status_code == 200
    text = page.text
    for secret in ("Alpha Grocer", alpha_reference, alpha_txn, world.alpha, "seed-"):
        assert secret not in text
    # the coalition balance is the member's: 250 + 6,543 at Alpha, 3 + 3 at Beta
    assert "6,799" in text
    # but no sum that holds Alpha's earns (the tier's qualifying points), and no Alpha row
    assert "points earned in the last" not in text
    history = _history(text)
    assert [m["where"] for m in HISTORY_ROW.finditer(history)] == ["Beta Air", "Beta Air"]
    assert "6,543" not in history and "250" not in history
    assert "Opened from Beta Air" in text


def test_no_cursor_leads_a_partners_member_link_to_another_brand(world: World) -> None:
    ops = world.db.ops
    for i in range(60):
        ops.earn(
            world.alpha, member_id=world.member, reference=f"a-{i}", amount="1", currency="EUR"
        )
    newest = ops.earn(
        world.beta, member_id=world.member, reference="b-last", amount="2", currency="EUR"
    )
    assert world.sign_in(world.link("member", world.beta, world.member))[0] == 200
    first = world.client.get("/console/member").text
    assert 'id="older"' not in first  # Alpha's 61 rows make no second page
    # a cursor made by hand, past Beta's newest row, into Alpha's rows
    forged = encode_cursor(newest.transaction.id[:-1] + "Z")
    paged = world.client.get("/console/member", params={"cursor": forged})
    assert paged.status_code == 200
    assert "Alpha Grocer" not in paged.text
    assert {m["where"] for m in HISTORY_ROW.finditer(_history(paged.text))} <= {"Beta Air"}


def test_the_operators_member_link_shows_the_whole_coalition_history(world: World) -> None:
    _visits(world)
    for i in range(50):
        world.db.ops.earn(
            world.beta, member_id=world.member, reference=f"more-{i}", amount="1", currency="EUR"
        )
    assert world.sign_in(world.link("member", None, world.member))[0] == 200
    first = world.client.get("/console/member")
    assert first.status_code == 200
    assert "Opened from" not in first.text
    assert "points earned in the last" in first.text
    older = re.search(r'id="older" href="(?P<url>[^"]+)"', first.text)
    assert older is not None
    second = world.client.get(older["url"].replace("&amp;", "&"))
    wheres = [m["where"] for m in HISTORY_ROW.finditer(_history(second.text))]
    assert "Alpha Grocer" in wheres and "Beta Air" in wheres
