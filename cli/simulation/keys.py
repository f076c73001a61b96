"""The API keys the demo makes (the operator's, unless one exists, and one per partner) and the
lines that show them, each secret once."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cli.simulation.world import PARTNERS
from coalition.config import Settings
from coalition.db import transaction, utcnow
from partners.keys import NewKey, create_key, has_operator_key
from partners.models import PARTNER_SCOPES, Partner


@dataclass(frozen=True, slots=True)
class DemoKeys:
    """The API keys the demo created: the operator's (unless one existed) and each partner's."""

    operator: NewKey | None
    partners: dict[str, NewKey]
    currencies: dict[str, str] = dataclasses.field(default_factory=dict)
    #: A member of the demo, for an example request.
    member_id: str | None = None


#: Lines the demo prints about the API, given the keys it made.
DescribeApi = Callable[[Settings, DemoKeys], list[str]]


def create_keys(settings: Settings, sessions: sessionmaker[Session]) -> DemoKeys:
    """An operator key (unless one exists) and a key per partner with every partner scope."""
    now = utcnow()
    with transaction(sessions) as s:
        operator = None
        if not has_operator_key(s):
            operator = create_key(
                s,
                secret_key=settings.secret_key,
                role="operator",
                partner_id=None,
                alg="hmac-sha256",
                scopes=[],
                public_key=None,
                expires_at=None,
                now=now,
            )
        partner_keys = {}
        currencies = {}
        for partner in s.scalars(select(Partner).order_by(Partner.created_at, Partner.id)):
            slug = next(p.slug for p in PARTNERS if p.name == partner.name)
            currencies[slug] = partner.currency
            partner_keys[slug] = create_key(
                s,
                secret_key=settings.secret_key,
                role="partner",
                partner_id=partner.id,
                alg="hmac-sha256",
                scopes=list(PARTNER_SCOPES),
                public_key=None,
                expires_at=None,
                now=now,
            )
    return DemoKeys(operator, partner_keys, currencies)


def api_example(settings: Settings, keys: DemoKeys) -> list[str]:
    """The keys the demo created, each secret shown this once.

    ``coalition demo`` passes a richer ``describe_api`` (cli/example.py: a ready-to-run signed
    request, which builds on these lines).
    """
    lines = ["", "API keys (hmac-sha256; each secret is shown this once, keep it if you need it)"]
    if keys.operator is None:
        lines.append("  operator: a key exists already (`coalition init` printed it)")
    else:
        lines.append(f"  operator key id: {keys.operator.key.id}")
        lines.append(f"  operator secret: {keys.operator.secret}")
    for slug, new in keys.partners.items():
        lines.append(f"  {slug:<8} key id: {new.key.id}  secret: {new.secret}")
    lines.append(f"  the API answers at {settings.public_url}/v1 once `coalition serve` runs")
    return lines
