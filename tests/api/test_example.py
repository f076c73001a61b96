"""The demo's signed example script really works: openssl + curl against the live server."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

from cli.example import signed_example_script
from tests.api.conftest import Live


def test_the_signed_example_script_earns_and_reads_the_balance(live: Live, tmp_path: Path) -> None:
    partner = live.partner("EUR", scopes=("earn", "read"))
    member = live.member(partner)
    secret = base64.urlsafe_b64encode(partner.key.material).decode().rstrip("=")
    script = tmp_path / "signed-example.sh"
    script.write_text(
        signed_example_script(
            base_url=live.base_url,
            key_id=partner.key.key_id,
            secret=secret,
            member_id=member,
            amount="12.50",
            currency="EUR",
        )
    )
    for _ in range(2):  # runnable again: a fresh reference, nonce and Idempotency-Key each time
        run = subprocess.run(
            ["sh", str(script)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "LC_ALL": "C"},
        )
        assert run.returncode == 0, run.stderr
        earn_line, balance_line = run.stdout.strip().splitlines()
        earn = json.loads(earn_line)
        assert earn["kind"] == "earn" and earn["points"] == 12 and earn["member_id"] == member
    assert json.loads(balance_line)["available"] == 24
