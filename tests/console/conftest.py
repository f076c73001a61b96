"""Fixtures of the console tests: a coalition with a closed period (two partners, a member)
served by the app under Litestar's test client, and sign-in through the pages."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest
from litestar.testing import TestClient

from api.app import create_app
from coalition.db import transaction
from partners.signin import issue_link
from tests.conftest import Db
from tests.settlement.helpers import close_at

CSRF = re.compile(r'name="csrf" value="([0-9a-f]{64})"')


@dataclass
class World:
    db: Db
    client: TestClient  # type: ignore[type-arg]
    alpha: str
    beta: str
    alpha_statement: str
    beta_statement: str
    member: str

    def link(self, role: str, partner_id: str | None = None, member_id: str | None = None) -> str:
        with transaction(self.db.sessions) as s:
            return issue_link(
                s, role=role, partner_id=partner_id, member_id=member_id, now=self.db.clock()
            ).token

    def sign_in(self, token: str) -> tuple[int, str]:
        """Open the link's page and press its button: (status, the page after)."""
        shown = self.client.get(f"/console/sign-in/{token}")
        found = CSRF.search(shown.text)
        if found is None:
            return shown.status_code, shown.text
        done = self.client.post("/console/sign-in", data={"csrf": found.group(1), "token": token})
        return done.status_code, done.text

    def csrf(self) -> str:
        found = CSRF.search(self.client.get("/console/statements").text)
        assert found is not None
        return found.group(1)


def _world(db: Db, public_url: str) -> Iterator[World]:
    alpha = db.partner(name="Alpha Grocer")
    beta = db.partner(name="Beta Air")
    member = db.member(250, alpha)
    db.member(40, beta)
    db.clock.advance(hours=1)
    closed = close_at(db, db.clock())
    by_partner = {s.partner_id: s.id for s in closed.statements}
    settings = replace(db.settings, database_url=db.url, public_url=public_url)
    app = create_app(settings, db.clock)
    with TestClient(app=app, base_url=public_url) as client:
        yield World(
            db, client, alpha.id, beta.id, by_partner[alpha.id], by_partner[beta.id], member
        )


@pytest.fixture
def world(lite: Db) -> Iterator[World]:
    yield from _world(lite, "https://console.coalition.test")


@pytest.fixture
def plain_world(lite: Db) -> Iterator[World]:
    yield from _world(lite, "http://console.coalition.test")
