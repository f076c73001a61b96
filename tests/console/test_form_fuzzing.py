"""A fuzzing pass over every form of the console: arbitrary text (control characters, NUL, bidi
overrides, huge strings, invalid UTF-8, odd dates) posted with a valid session and its CSRF
token. Whatever is sent, the answer is an HTML page (never JSON), never a 500; a refused form
stores nothing, and what an accepted one stores follows the text rule (coalition/text.py)."""

from __future__ import annotations

import datetime as dt
import hashlib
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from coalition import text as rule
from coalition.db import transaction
from coalition.models import Transaction
from partners.webhooks.endpoints import Webhooks
from settlement.models import Dispute, Statement
from tests.console.conftest import CSRF, World, _world

#: The tables a form may write to: a refused form leaves every one as it was.
TABLES = (
    "statements",
    "statement_events",
    "disputes",
    "api_keys",
    "partners",
    "webhook_events",
    "webhook_deliveries",
)
HOSTILE_CHARACTERS = "\x00\r\n\t\x1b\x07\x7f\x85\u2028\u2029\u202a\u202e\u2066\u2069\ufeff\ud800"

#: A form field's value: raw bytes (invalid UTF-8 included) once percent-encoded.
Value = bytes

_texts = st.text(
    alphabet=st.one_of(st.characters(), st.sampled_from(HOSTILE_CHARACTERS)), max_size=40
).map(lambda t: t.encode("utf-8", "surrogatepass"))
#: Huge: just under the 64 KiB a body may have, and over it (a 413 page).
_huge = st.sampled_from([b"x" * 60_000, b"x" * 70_000, "\u202e".encode() * 5000, b"9" * 3000])
_invalid_utf8 = st.binary(max_size=20).filter(lambda b: not _is_utf8(b))
_dates = st.one_of(
    st.dates().map(lambda d: d.isoformat().encode()),
    st.sampled_from(
        [b"1970-01-01", b"0001-01-01", b"9999-12-31", b"2026-02-30", b"2026-13-01", b"-1-01-01"]
    ),
    st.from_regex(r"\A[0-9]{1,6}-[0-9]{1,3}-[0-9]{1,3}\Z").map(str.encode),
)
#: The classics, each alone in a field.
_known = st.sampled_from(
    [b"wire\x00", b"a\r\nb", b"\x1b[31m\x07", "Acme\u202eRBE".encode(), b"\xff\xfe", b" ", b""]
)
VALUES: st.SearchStrategy[Value] = st.one_of(_known, _texts, _huge, _invalid_utf8, _dates)
#: What a query string can carry (an HTTP client refuses a URL of 64 KiB).
QUERY_VALUES: st.SearchStrategy[Value] = st.one_of(
    _known, _texts, _invalid_utf8, _dates, st.sampled_from(["\u202e".encode() * 500, b"9" * 3000])
)


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


def _body(fields: list[tuple[str, Value]]) -> bytes:
    return "&".join(
        f"{name}={urllib.parse.quote_from_bytes(value, safe='')}" for name, value in fields
    ).encode()


def _snapshot(s: Session) -> str:
    digest = hashlib.sha256()
    for table in TABLES:
        for row in s.execute(text(f"SELECT * FROM {table} ORDER BY 1")):
            digest.update(repr(tuple(row)).encode())
    return digest.hexdigest()


def _stored_texts_follow_the_rule(s: Session) -> None:
    texts = [
        *s.scalars(select(Statement.payment_reference)),
        *s.scalars(select(Dispute.reason)),
        *s.scalars(select(Dispute.resolution_note)),
    ]
    for stored in texts:
        if stored is not None:
            assert rule.clean(stored, "stored", max_length=10_000) == stored, repr(stored)


@dataclass
class Form:
    """A form: who posts it, where, and its fields (the values come from hypothesis)."""

    role: str
    path: Callable[[World, dict[str, str]], str]
    fields: tuple[str, ...]


FORMS = {
    "settle": Form("operator", lambda w, ids: f"/console/statements/{w.beta_statement}/settle",
                   ("payment_reference", "paid_at")),
    "dispute": Form("partner", lambda w, ids: f"/console/statements/{w.alpha_statement}/disputes",
                    ("reason", "transaction_ids", "transaction_ids")),
    "acknowledge": Form("partner",
                        lambda w, ids: f"/console/statements/{w.alpha_statement}/acknowledge",
                        ("extra",)),
    "resolve": Form("operator", lambda w, ids: f"/console/disputes/{ids['dispute']}/resolve",
                    ("outcome", "note", "adjustment")),
    "issue key": Form("operator", lambda w, ids: f"/console/partners/{w.alpha}/keys",
                      ("scopes", "public_key", "expires_at")),
    "revoke key": Form("operator", lambda w, ids: f"/console/keys/{ids['key']}/revoke",
                       ("extra",)),
    "webhook test": Form("partner", lambda w, ids: f"/console/webhooks/{ids['endpoint']}/test",
                         ("extra",)),
    "webhook recover": Form("partner",
                            lambda w, ids: f"/console/webhooks/{ids['endpoint']}/recover",
                            ("since",)),
    "sign out": Form("partner", lambda w, ids: "/console/sign-out", ("extra",)),
}  # fmt: skip


@dataclass
class Sessions:
    """One signed-in browser per role: its cookie and its forms' CSRF token."""

    world: World
    cookies: dict[str, tuple[str, str]]
    ids: dict[str, str]

    def use(self, role: str) -> str:
        cookie, csrf = self.cookies[role]
        self.world.client.cookies.clear()
        self.world.client.cookies.set("coalition_console", cookie, domain="console.coalition.test")
        return csrf


def _sessions(world: World) -> Sessions:
    hooks = Webhooks(world.db.settings.secret_key, allow_private=True)
    with transaction(world.db.sessions) as s:
        endpoint = hooks.create(
            s, world.alpha, url="http://127.0.0.1:9/h", events=None, description=None,
            now=world.db.clock(),
        ).endpoint.id  # fmt: skip
        line = s.scalars(
            select(Transaction.id).where(Transaction.partner_id == world.alpha)
        ).first()
    cookies = {}
    for role, partner, member in (
        ("partner", world.alpha, None),
        ("operator", None, None),
        ("member", world.beta, world.member),
    ):
        world.client.cookies.clear()
        assert world.sign_in(world.link(role, partner, member))[0] == 200
        found = CSRF.search(world.client.get("/console/").text)
        assert found is not None
        cookies[role] = (world.client.cookies["coalition_console"], found.group(1))
    # an open dispute to resolve, and a key to revoke
    sessions = Sessions(world, cookies, {"endpoint": endpoint, "line": str(line)})
    csrf = sessions.use("partner")
    world.client.post(
        f"/console/statements/{world.alpha_statement}/disputes",
        data={"csrf": csrf, "reason": "to resolve"},
    )
    csrf = sessions.use("operator")
    world.client.post(
        f"/console/partners/{world.alpha}/keys", data={"csrf": csrf, "scopes": "read"}
    )
    with transaction(world.db.sessions) as s:
        sessions.ids["dispute"] = s.scalars(select(Dispute.id)).one()
        sessions.ids["key"] = s.scalar(text("SELECT id FROM api_keys ORDER BY id DESC LIMIT 1"))
    return sessions


@pytest.fixture(params=["sqlite", "postgres"])
def any_world(request: pytest.FixtureRequest) -> Iterator[World]:
    """The console's world on each backend (PostgreSQL refuses a NUL SQLite stores)."""
    db = request.getfixturevalue("lite" if request.param == "sqlite" else "pg")
    yield from _world(db, "https://console.coalition.test")


def _field(name: str, world: World, sessions: Sessions) -> st.SearchStrategy[Value]:
    """A field's values: anything, and often the one valid value of a field beside it (today
    for a date, a line of the statement), so the other fields' text reaches the rules."""
    valid = {
        "paid_at": world.db.clock().date().isoformat().encode(),
        "since": world.db.clock().date().isoformat().encode(),
        "expires_at": (world.db.clock().date() + dt.timedelta(days=30)).isoformat().encode(),
        "transaction_ids": sessions.ids["line"].encode(),
        "outcome": b"upheld",
        "scopes": b"read",
    }.get(name)
    return VALUES if valid is None else st.one_of(st.just(valid), VALUES)


@pytest.mark.parametrize("name", list(FORMS))
def test_no_form_answers_anything_but_a_page_and_a_refused_one_stores_nothing(
    any_world: World, name: str
) -> None:
    world = any_world
    form = FORMS[name]
    sessions = _sessions(world)

    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(values=st.tuples(*(_field(f, world, sessions) for f in form.fields)))
    def post(values: tuple[Value, ...]) -> None:
        if name == "sign out":
            _sign_out_keeps_the_other_sessions(world, sessions, values[0])
            return
        csrf = sessions.use(form.role)
        fields = [("csrf", csrf.encode()), *zip(form.fields, values, strict=True)]
        with transaction(world.db.sessions) as s:
            before = _snapshot(s)
        answer = world.client.post(
            form.path(world, sessions.ids),
            content=_body(fields),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert answer.status_code < 500, answer.text[:2000]
        assert answer.headers["content-type"].startswith("text/html"), answer.headers
        with transaction(world.db.sessions) as s:
            if answer.status_code >= 400:
                assert _snapshot(s) == before, f"{answer.status_code} stored something"
            _stored_texts_follow_the_rule(s)

    post()


def _sign_out_keeps_the_other_sessions(world: World, sessions: Sessions, value: Value) -> None:
    """Sign-out ends only the session that posts it; posted with junk beside the token it is
    still a page. The partner's session is opened again for the next example."""
    csrf = sessions.use("partner")
    answer = world.client.post(
        "/console/sign-out",
        content=_body([("csrf", csrf.encode()), ("extra", value)]),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code in (200, 413)  # 413: over the 64 KiB a body may have
    assert answer.headers["content-type"].startswith("text/html")
    world.client.cookies.clear()
    assert world.sign_in(world.link("partner", world.alpha))[0] == 200
    found = CSRF.search(world.client.get("/console/statements").text)
    assert found is not None
    sessions.cookies["partner"] = (world.client.cookies["coalition_console"], found.group(1))


@given(token=VALUES, csrf=VALUES)
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_the_sign_in_form_answers_a_page_whatever_it_is_sent(
    world: World, token: Value, csrf: Value
) -> None:
    answer = world.client.post(
        "/console/sign-in",
        content=_body([("csrf", csrf), ("token", token)]),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code in (403, 404, 410, 413), answer.text[:500]
    assert answer.headers["content-type"].startswith("text/html")


FILTERS = {
    "/console/statements": ("partner", ("status", "period_id", "cursor")),
    "/console/transactions": ("partner", ("kind", "member_id", "since", "until", "cursor")),
    "/console/member": ("member", ("cursor",)),
}


@pytest.mark.parametrize("path", list(FILTERS))
def test_the_filter_forms_answer_a_page_whatever_they_are_sent(world: World, path: str) -> None:
    role, names = FILTERS[path]
    sessions = _sessions(world)

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(values=st.lists(QUERY_VALUES, min_size=len(names), max_size=len(names)))
    def get(values: list[Value]) -> None:
        sessions.use(role)
        query = _body(list(zip(names, values, strict=True))).decode()
        answer = world.client.get(f"{path}?{query}")
        assert answer.status_code < 500, answer.text[:2000]
        assert answer.headers["content-type"].startswith("text/html")

    get()
