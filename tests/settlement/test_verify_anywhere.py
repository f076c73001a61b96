"""The verifier docs/settlement.md gives (Python with only ``cryptography``) accepts a statement
export and refuses a tampered one; ``coalition statements verify`` does the same for both
exports, with the database's keys or a keys file."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import main
from partners.keys import b64url
from tests.conftest import Db
from tests.settlement.helpers import export_files

DOCS = Path(__file__).parents[2] / "docs" / "settlement.md"


def test_the_documented_python_verifier_accepts_an_export_and_refuses_a_tampered_one(
    lite: Db, tmp_path: Path
) -> None:
    block = DOCS.read_text().split("A verifier of the JSON export", 1)[1]
    code = re.search(r"```python\n(.*?)```", block, re.S)
    assert code is not None
    assert len(code.group(1).strip().splitlines()) <= 25
    verifier = tmp_path / "verify.py"
    verifier.write_text(code.group(1))
    export, _, keys = export_files(lite, tmp_path)
    run = [sys.executable, str(verifier), str(export), str(keys)]
    good = subprocess.run(run, capture_output=True, text=True, check=False)
    assert good.returncode == 0 and "verified" in good.stdout, good.stderr
    exported = export.read_text()
    export.write_text(exported.replace('"1.256"', '"1.266"'))
    bad = subprocess.run(run, capture_output=True, text=True, check=False)
    assert bad.returncode != 0 and "content hash mismatch" in bad.stderr
    forgeries = {
        "a key appears twice": exported.replace('"totals":{', '"totals":{"net_amount":"9.000",'),
        "not byte for byte": exported.replace('"kid":', '"payee_iban":"DE89","kid":'),
        "not byte for byte ": exported.replace(",", ", "),
    }
    for reason, forged in forgeries.items():
        export.write_text(forged)
        bad = subprocess.run(run, capture_output=True, text=True, check=False)
        assert bad.returncode != 0 and reason.strip() in bad.stderr, (reason, bad.stderr)


def test_coalition_statements_verify_uses_the_database_keys_or_a_keys_file(
    lite: Db,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    as_json, as_csv, keys = export_files(lite, tmp_path)
    monkeypatch.setenv("COALITION_DATABASE_URL", lite.url)
    monkeypatch.setenv("COALITION_SECRET_KEY", b64url(b"k" * 32))
    for export in (as_json, as_csv):
        assert main(["statements", "verify", str(export)]) == 0
        assert main(["statements", "verify", str(export), "--keys", str(keys)]) == 0
    as_csv.write_text(as_csv.read_text().replace(",1.256,", ",1.257,"))
    capsys.readouterr()
    assert main(["statements", "verify", str(as_csv), "--keys", str(keys)]) == 1
    assert "content hash mismatch" in capsys.readouterr().err
    keys.write_text("[]")
    assert main(["statements", "verify", str(as_json), "--keys", str(keys)]) == 1
    assert "no public key with kid" in capsys.readouterr().err
    (tmp_path / "junk.csv").write_text("a,b\n1,2\n")
    assert main(["statements", "verify", str(tmp_path / "junk.csv")]) == 1
