"""The commands that read a file in: ``import earns`` (a partner's file of earns,
partners/imports.py) and ``bank import`` (a bank statement, settlement/payments/reconcile.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import msgspec

from api.bulk import earn_from_fields, earn_from_json
from api.problems import KINDS, problem_type
from cli.runtime import freeze_heap, ready_runtime
from coalition import audit
from coalition.db import transaction, utcnow
from coalition.errors import CoalitionError, NotFound
from coalition.progress import progress
from partners.imports import ImportError_, Summary, format_of, import_earns
from partners.operations import Operations
from partners.rates import get_partner
from settlement.bankfiles import MAX_BANK_FILE_BYTES
from settlement.payments.reconcile import BankStatementImported, import_statement, imported_out
from settlement.workflow import Actor


def cmd_import_earns(args: argparse.Namespace) -> int:
    """Import a partner's file of earns; exit 0 when no row was rejected, 1 otherwise, 2 when
    the file or the partner cannot be used at all."""
    rt = ready_runtime()
    path = Path(args.file)
    try:
        fmt = format_of(path, args.format)
        size = path.stat().st_size
        with transaction(rt.sessions) as session:
            get_partner(session, args.partner)
    except (ImportError_, OSError, NotFound) as exc:
        print(f"coalition import earns: {exc}", file=sys.stderr)
        return 2
    ops = Operations(rt.settings, rt.sessions)
    freeze_heap()
    with progress(f"importing {path.name}", size) as update:
        try:
            summary = import_earns(
                ops,
                args.partner,
                path,
                fmt,
                to_item=earn_from_fields,
                from_json=earn_from_json,
                progress=lambda done, rows: update(done, f"{rows:,} rows"),
            )
        except ImportError_ as exc:
            print(f"coalition import earns: {exc}", file=sys.stderr)
            return 2
    _print_import(args, summary)
    return 1 if summary.rejected else 0


def _print_import(args: argparse.Namespace, summary: Summary) -> None:
    def kind(code: str) -> str:
        return problem_type(code if code in KINDS else "conflict")

    if args.json:
        rejected = [
            {"line": r.line, "reference": r.reference, "type": kind(r.code), "detail": r.detail}
            for r in summary.rejected
        ]
        print(
            json.dumps(
                {
                    "imported": summary.imported,
                    "duplicates": summary.duplicates,
                    "rejected": rejected,
                    "points": summary.points,
                }
            )
        )
        return
    for r in summary.rejected:
        print(f"line {r.line}: rejected ({kind(r.code)}) {r.detail}")
    print(
        f"{summary.imported:,} imported ({summary.points:,} points), "
        f"{summary.duplicates:,} duplicates, {len(summary.rejected):,} rejected "
        f"of {summary.rows:,} rows"
    )


def cmd_bank_import(args: argparse.Namespace) -> int:
    """Import a bank account statement (camt.053 or MT940) and reconcile it; exit 0 when every
    entry matched, 1 when some wait in the reconciliation queue, 2 when the file cannot be
    used at all (nothing changed)."""
    rt = ready_runtime()
    path = Path(args.file)
    try:
        if path.stat().st_size > MAX_BANK_FILE_BYTES:
            print(f"coalition bank import: {path} is larger than 16 MiB", file=sys.stderr)
            return 2
        data = path.read_bytes()
    except OSError as exc:
        print(f"coalition bank import: {exc}", file=sys.stderr)
        return 2
    actor = Actor(audit.COMMAND_LINE, "finance")
    try:
        with transaction(rt.sessions) as session:
            done = import_statement(
                session, data, actor, secret_key=rt.settings.secret_key, now=utcnow()
            )
            audit.record(
                session,
                audit.Action(
                    role="finance",
                    key_id=audit.COMMAND_LINE,
                    action=f"coalition bank import {path.name}",
                    source_address=audit.COMMAND_LINE,
                    status=None,
                    outcome="ok",
                    request_id=None,
                ),
                utcnow(),
            )
            result = imported_out(done)
    except CoalitionError as exc:
        print(f"coalition bank import: {path.name}: {exc.detail}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(msgspec.to_builtins(result)))
    else:
        _print_bank_import(path, result)
    return 1 if result.unmatched else 0


def _print_bank_import(path: Path, result: BankStatementImported) -> None:
    if result.duplicate:
        print(f"{path.name} was imported before ({result.id}): nothing changed")
    for m in result.matched:
        print(f"entry {m.line}: settled {m.statement_id}")
    for u in result.unmatched:
        print(f"entry {u.line}: {u.amount} {u.currency} waits: {u.reason}")
    print(
        f"{result.entries} entries: {len(result.matched)} matched, "
        f"{len(result.unmatched)} in the reconciliation queue"
    )
