"""The administrative commands: ``init``, ``check``, ``signing-keys rotate`` and ``statements
verify``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cli.runtime import ready_runtime, runtime
from coalition import audit
from coalition.db import migrate, transaction, utcnow
from partners.keys import NewKey, create_key, has_operator_key
from settlement.canonical import ExportError, parse_keys, read_export, verify_document
from settlement.check import run_checks
from settlement.signing import ensure_key, public_keys, rotate


def cmd_init(args: argparse.Namespace) -> int:
    """Create or upgrade the schema; create the first operator key when there is none (and
    record that in the audit log)."""
    rt = runtime()
    before, after = migrate(rt.engine)
    with transaction(rt.sessions) as session:
        ensure_key(session, secret_key=rt.settings.secret_key, now=utcnow())
        new = None
        if not has_operator_key(session):
            new = create_key(
                session,
                secret_key=rt.settings.secret_key,
                role="operator",
                partner_id=None,
                alg="hmac-sha256",
                scopes=[],
                public_key=None,
                expires_at=None,
                now=utcnow(),
            )
            audit.record(
                session,
                audit.Action(
                    role="operator",
                    key_id=new.key.id,
                    action="coalition init: the first operator key",
                    source_address=audit.COMMAND_LINE,
                    status=None,
                    outcome="ok",
                    request_id=None,
                ),
                utcnow(),
            )
    _print_init(args, new, before, after)
    return 0


def _print_init(
    args: argparse.Namespace, new: NewKey | None, before: str | None, after: str
) -> None:
    if args.json:
        if new is None:
            print(json.dumps({"key_id": None, "secret": None, "alg": None, "revision": after}))
        else:
            print(json.dumps({"key_id": new.key.id, "secret": new.secret, "alg": "hmac-sha256"}))
        return
    print(f"schema: {before or 'empty'} -> {after}")
    if new is None:
        print("an operator key exists already; create more with POST /v1/admin/operator-keys")
    else:
        print("operator key created; the secret is shown this once, keep it safe:")
        print(f"  key_id: {new.key.id}")
        print(f"  secret: {new.secret}")
        print("  alg:    hmac-sha256")


def cmd_check(args: argparse.Namespace) -> int:
    """Verify every ledger invariant; exit 1 with a report on any violation."""
    rt = ready_runtime()
    with transaction(rt.sessions) as session:
        findings = run_checks(session)
    ok = all(f.ok for f in findings)
    if args.json:
        invariants = [
            {"invariant": f.invariant, "name": f.name, "ok": f.ok, "violations": f.violations}
            for f in findings
        ]
        print(json.dumps({"ok": ok, "invariants": invariants}, indent=2))
    else:
        for f in findings:
            print(f"[{'ok' if f.ok else 'VIOLATED'}] {f.invariant}. {f.name}")
            for violation in f.violations:
                print(f"      {violation}")
        print("all invariants hold" if ok else "INVARIANTS VIOLATED")
    return 0 if ok else 1


def cmd_rotate_signing_key(_args: argparse.Namespace) -> int:
    """Make a new statement-signing key the one that signs; old public keys stay published."""
    rt = ready_runtime()
    with transaction(rt.sessions) as session:
        key = rotate(session, secret_key=rt.settings.secret_key, now=utcnow())
    print(f"statement-signing key {key.kid} (generation {key.generation}) now signs;")
    print("earlier keys stay published at GET /v1/signing-keys")
    return 0


def cmd_verify_statement(args: argparse.Namespace) -> int:
    """Verify a statement export offline: exit 0 when it is byte for byte an export of the
    service and its hash and signature hold, else 1."""
    try:
        export = read_export(Path(args.file).read_bytes())
        if args.keys:
            keys = parse_keys(Path(args.keys).read_bytes())
            source = args.keys
        else:
            keys, source = _database_signing_keys()
    except (OSError, ExportError) as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    verdict = verify_document(export.document, keys)
    statement = export.document.get("id")
    if verdict.ok:
        print(f"OK: statement {statement}: {verdict.reason} (keys from {source})")
        for note in export.notes:
            print(f"note: {note}")
        return 0
    print(f"FAILED: statement {statement}: {verdict.reason}", file=sys.stderr)
    return 1


def _database_signing_keys() -> tuple[dict[str, bytes], str]:
    rt = ready_runtime()
    with transaction(rt.sessions) as session:
        keys = {k.kid: k.public_key for k in public_keys(session)}
    return keys, rt.engine.url.render_as_string(hide_password=True)
