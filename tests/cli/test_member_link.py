"""``coalition member-link MEMBER_ID``: the operator's link to a member's whole coalition
history (a member link that names no partner)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from cli.main import main
from coalition.db import transaction
from partners.signin import SignInLink, token_hash
from tests.conftest import Db


def test_the_operator_prints_a_link_to_a_members_whole_history(
    lite: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    member = lite.member()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COALITION_DATABASE_URL", lite.url)
    monkeypatch.setenv("COALITION_PUBLIC_URL", "https://coalition.test")
    monkeypatch.setenv("COALITION_SECRET_KEY", base64.urlsafe_b64encode(b"s" * 32).decode())
    assert main(["member-link", member]) == 0
    url = capsys.readouterr().out.strip()
    assert url.startswith("https://coalition.test/console/sign-in/")
    with transaction(lite.sessions) as s:
        link = s.get(SignInLink, token_hash(url.rsplit("/", 1)[1]))
        assert link is not None
        assert (link.role, link.partner_id, link.member_id) == ("member", None, member)
    for unknown in ("mem_nobody", "not a member id"):
        assert main(["member-link", unknown]) == 1
        assert "no member" in capsys.readouterr().err
