"""The ``coalition`` command line.

The CLI is the service's composition root: it is the one module of the kernel that reaches up
into ``partners``, ``settlement`` and ``api``, and only inside the command that needs them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from coalition.config import ConfigError, Settings, load_settings
from coalition.db import (
    make_engine,
    migrate,
    schema_is_current,
    session_factory,
    transaction,
    utcnow,
)


@dataclass(frozen=True, slots=True)
class Runtime:
    """Settings, engine and session factory of one process."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]


def runtime(settings: Settings | None = None) -> Runtime:
    """Build the runtime from the environment."""
    settings = settings or load_settings()
    engine = make_engine(settings.database_url, prepared_statements=not settings.database_pgbouncer)
    return Runtime(settings, engine, session_factory(engine))


def _require_schema(rt: Runtime) -> None:
    if not schema_is_current(rt.engine):
        raise SystemExit("the database schema is missing or old: run `coalition init` first")


def cmd_init(args: argparse.Namespace) -> int:
    """Create or upgrade the schema; create the first operator key when there is none (and
    record that in the audit log)."""
    from coalition import audit
    from partners.keys import create_key, has_operator_key
    from settlement.signing import ensure_key

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
    if args.json:
        if new is None:
            print(json.dumps({"key_id": None, "secret": None, "alg": None, "revision": after}))
        else:
            print(json.dumps({"key_id": new.key.id, "secret": new.secret, "alg": "hmac-sha256"}))
        return 0
    print(f"schema: {before or 'empty'} -> {after}")
    if new is None:
        print("an operator key exists already; create more with POST /v1/admin/operator-keys")
    else:
        print("operator key created; the secret is shown this once, keep it safe:")
        print(f"  key_id: {new.key.id}")
        print(f"  secret: {new.secret}")
        print("  alg:    hmac-sha256")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Verify every ledger invariant; exit 1 with a report on any violation."""
    from settlement.check import run_checks

    rt = runtime()
    _require_schema(rt)
    with transaction(rt.sessions) as session:
        findings = run_checks(session)
    ok = all(f.ok for f in findings)
    if args.json:
        print(
            json.dumps(
                {
                    "ok": ok,
                    "invariants": [
                        {
                            "invariant": f.invariant,
                            "name": f.name,
                            "ok": f.ok,
                            "violations": f.violations,
                        }
                        for f in findings
                    ],
                },
                indent=2,
            )
        )
    else:
        for f in findings:
            print(f"[{'ok' if f.ok else 'VIOLATED'}] {f.invariant}. {f.name}")
            for violation in f.violations:
                print(f"      {violation}")
        print("all invariants hold" if ok else "INVARIANTS VIOLATED")
    return 0 if ok else 1


def jobs(rt: Runtime) -> list[object]:
    """The periodic jobs every worker runs."""
    from coalition.scheduler import Job
    from partners.operations import Operations

    ops = Operations(rt.settings, rt.sessions)
    return [
        Job("hold-expiry", ops.expire_holds, every_s=5),
        Job("points-expiry", ops.expire_points, every_s=60),
        Job("idempotency-purge", lambda: purge_idempotency_keys(rt), every_s=600),
        Job("nonce-purge", lambda: purge_request_nonces(rt), every_s=60),
        Job("settlement-close", lambda: close_due_period(rt), every_s=60),
        Job("signature-use-purge", lambda: purge_signature_uses(rt), every_s=60),
        Job("rate-counter-purge", lambda: purge_rate_counters(rt), every_s=60),
        Job("webhook-dispatch", lambda: dispatch_webhooks(rt), every_s=1),
        Job("webhook-purge", lambda: purge_webhooks(rt), every_s=600),
        Job("sign-in-purge", lambda: purge_sign_ins(rt), every_s=600),
    ]


def purge_sign_ins(rt: Runtime) -> int:
    """Delete console links and sessions that ended more than a day ago; how many."""
    from partners.signin import purge

    with transaction(rt.sessions) as session:
        return purge(session, utcnow())


def purge_webhooks(rt: Runtime) -> int:
    """Forget deliveries done before the webhook retention, then their events; how many."""
    from partners.webhooks.outbox import PURGE_BATCH, purge

    total = 0
    for _ in range(100):  # bounded: the next run takes the rest
        with transaction(rt.sessions) as session:
            deleted = purge(session, utcnow())
        total += deleted
        if deleted < PURGE_BATCH:
            break
    return total


def dispatch_webhooks(rt: Runtime) -> int:
    """Send the due webhook deliveries; how many attempts were made."""
    from partners.webhooks.delivery import Dispatcher

    return Dispatcher(rt.settings, rt.sessions).run()


def close_due_period(rt: Runtime) -> int:
    """Close the period at the latest scheduled cut-off once it has passed; statements issued."""
    from settlement.close import close_due

    return close_due(rt.sessions, rt.settings, utcnow())


def purge_request_nonces(rt: Runtime) -> int:
    """Forget signature nonces whose window has passed; how many."""
    from partners.signatures import NONCE_PURGE_BATCH, purge_nonces

    total = 0
    for _ in range(100):  # bounded: the next run (a minute later) takes the rest
        with transaction(rt.sessions) as session:
            deleted = purge_nonces(session, utcnow())
        total += deleted
        if deleted < NONCE_PURGE_BATCH:
            break
    return total


def purge_signature_uses(rt: Runtime) -> int:
    """Forget used-up POST signatures that can no longer verify; how many."""
    from partners.replay import purge_signature_uses as purge

    with transaction(rt.sessions) as session:
        return purge(session, utcnow())


def purge_rate_counters(rt: Runtime) -> int:
    """Delete the rate-limit counters of windows that have ended; how many."""
    from partners.ratelimit import purge_counters

    with transaction(rt.sessions) as session:
        return purge_counters(session, utcnow(), rt.settings.rate_limit_window_s)


def purge_idempotency_keys(rt: Runtime) -> int:
    """Delete idempotency records past their 24 h retention, batch by batch, at most
    :data:`~coalition.idempotency.PURGE_BATCHES_PER_RUN` batches (the next run takes the rest);
    how many."""
    from coalition import idempotency

    total = 0
    for _ in range(idempotency.PURGE_BATCHES_PER_RUN):
        with transaction(rt.sessions) as session:
            deleted = idempotency.purge(session, utcnow())
        total += deleted
        if deleted < idempotency.PURGE_BATCH:
            break
    return total


def cmd_worker(args: argparse.Namespace) -> int:
    """Run only the scheduled jobs, until SIGTERM or SIGINT (or, as the scheduler of
    ``coalition serve``, until that parent is gone)."""
    from coalition.scheduler import Job, run_blocking

    rt = runtime()
    _require_schema(rt)
    run_blocking([j for j in jobs(rt) if isinstance(j, Job)], parent_pid=args.parent_pid)
    return 0


class _Terminated(Exception):
    """SIGTERM reached ``coalition serve`` (after uvicorn finished its graceful shutdown)."""


def _on_sigterm(_signum: int, _frame: object) -> None:
    raise _Terminated


def _metrics_dir() -> tempfile.TemporaryDirectory[str] | None:
    """Set ``PROMETHEUS_MULTIPROC_DIR`` for the workers: the operator's, emptied of an earlier
    run's samples, or a fresh temporary directory removed at exit (returned, to clean up).

    Before anything imports prometheus_client: it picks its multiprocess mode on import."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        return None
    made = tempfile.TemporaryDirectory(prefix="coalition-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = made.name
    return made


def _stop(child: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM ``child`` and wait for it (SIGKILL after ``timeout_s``)."""
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the HTTP API with uvicorn (``--workers`` processes) and, unless
    ``--no-scheduler``, the scheduled jobs in a child process (``coalition worker``).

    SIGTERM (or SIGINT): stop accepting connections, let the requests in flight finish (at most
    ``COALITION_SHUTDOWN_TIMEOUT_S``), stop the scheduler child (its running job finishes),
    exit 0. The child also stops by itself when this process is gone (even after SIGKILL), so
    restarts never stack schedulers.
    """
    import uvicorn

    from coalition import logs

    rt = runtime()
    _require_schema(rt)
    if rt.settings.secret_key_is_dev_default:
        logging.getLogger("coalition").warning(
            "serving with the development COALITION_SECRET_KEY; set it in production"
        )
    rt.engine.dispose()
    signal.signal(signal.SIGTERM, _on_sigterm)
    metrics_dir = _metrics_dir()
    scheduler = None
    if not args.no_scheduler:
        scheduler = subprocess.Popen(  # noqa: S603 (this very program, no shell)
            [sys.executable, "-m", "coalition.cli", "worker", "--parent-pid", str(os.getpid())]
        )
    try:
        uvicorn.run(
            "api.app:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_config=logs.logging_config(),
            access_log=False,  # the API writes its own JSON line per request
            timeout_graceful_shutdown=rt.settings.shutdown_timeout_s,
            # X-Forwarded-* only from a proxy on this machine; behind another proxy set
            # COALITION_PUBLIC_URL so signatures over the public URL verify.
            proxy_headers=True,
            forwarded_allow_ips="127.0.0.1",
            # httptools with a bound on how long a request may take to arrive (slow clients
            # are dropped) and on the size of its head (431): api/server.py; idle keep-alive
            # connections close after 5 s
            http="api.server:BoundedHttpToolsProtocol",
            timeout_keep_alive=5,
            # A worker answers the supervisor's health check once it has imported the app; on
            # a loaded host that import took 17 s, and uvicorn's default 5 s killed and
            # restarted the workers in a loop.
            timeout_worker_healthcheck=60,
        )
    except _Terminated:
        pass
    finally:
        if scheduler is not None:
            _stop(scheduler, rt.settings.shutdown_timeout_s)
        if metrics_dir is not None:
            metrics_dir.cleanup()
    logging.getLogger("coalition").info("serve stopped")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """A demo coalition on an empty database, with a period of traffic."""
    from cli.demo import PERIOD_DAYS, run_demo
    from cli.example import demo_lines
    from coalition.progress import progress

    rt = runtime()
    with progress("simulating the period", PERIOD_DAYS) as update:
        return run_demo(
            rt.settings,
            rt.engine,
            rt.sessions,
            seed=args.seed,
            members=args.members,
            describe_api=demo_lines,
            progress=lambda day, days: update(day, f"of {days} days"),
        )


# --- coalition import earns (partners/imports.py) ---------------------------------------


def cmd_import_earns(args: argparse.Namespace) -> int:
    """Import a partner's file of earns; exit 0 when no row was rejected, 1 otherwise, 2 when
    the file or the partner cannot be used at all."""
    from api.bulk import earn_from_fields, earn_from_json
    from api.problems import KINDS, problem_type
    from coalition.errors import NotFound
    from coalition.progress import progress
    from partners.imports import ImportError_, format_of, import_earns
    from partners.operations import Operations
    from partners.rates import get_partner

    rt = runtime()
    _require_schema(rt)
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
    else:
        for r in summary.rejected:
            print(f"line {r.line}: rejected ({kind(r.code)}) {r.detail}")
        print(
            f"{summary.imported:,} imported ({summary.points:,} points), "
            f"{summary.duplicates:,} duplicates, {len(summary.rejected):,} rejected "
            f"of {summary.rows:,} rows"
        )
    return 1 if summary.rejected else 0


# --- coalition bank import (settlement/payments/reconcile.py) ----------------------------


def cmd_bank_import(args: argparse.Namespace) -> int:
    """Import a bank account statement (camt.053 or MT940) and reconcile it; exit 0 when every
    entry matched, 1 when some wait in the reconciliation queue, 2 when the file cannot be
    used at all (nothing changed)."""
    from coalition import audit
    from coalition.errors import CoalitionError
    from settlement.bankfiles import MAX_BANK_FILE_BYTES
    from settlement.payments.reconcile import import_statement, imported_data
    from settlement.workflow import Actor

    rt = runtime()
    _require_schema(rt)
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
            result = imported_data(done)
    except CoalitionError as exc:
        print(f"coalition bank import: {path.name}: {exc.detail}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        if result["duplicate"]:
            print(f"{path.name} was imported before ({result['id']}): nothing changed")
        for m in result["matched"]:
            print(f"entry {m['line']}: settled {m['statement_id']}")
        for u in result["unmatched"]:
            print(f"entry {u['line']}: {u['amount']} {u['currency']} waits: {u['reason']}")
        print(
            f"{result['entries']} entries: {len(result['matched'])} matched, "
            f"{len(result['unmatched'])} in the reconciliation queue"
        )
    return 1 if result["unmatched"] else 0


def cmd_console_link(args: argparse.Namespace) -> int:
    """Print a single-use sign-in link to the web console (operator or finance), valid 10
    minutes, at the configured public URL."""
    from api.console.links import console_url
    from coalition.errors import CoalitionError
    from partners.signin import issue_link

    rt = runtime()
    _require_schema(rt)
    try:
        with transaction(rt.sessions) as session:
            link = issue_link(session, role=args.role, now=utcnow(), key_id=args.key)
    except CoalitionError as exc:
        print(f"coalition console-link: {exc.detail}", file=sys.stderr)
        return 2
    print(console_url(rt.settings, link.token))
    print(f"single use, valid until {link.expires_at:%Y-%m-%d %H:%M} UTC", file=sys.stderr)
    return 0


def cmd_member_link(args: argparse.Namespace) -> int:
    """Print a single-use link to a member's page with the whole coalition history (every
    brand), valid 15 minutes: the operator hands it to the member through its own channel."""
    from api.console.links import console_url
    from coalition.errors import CoalitionError
    from partners.signin import issue_link

    rt = runtime()
    _require_schema(rt)
    try:
        with transaction(rt.sessions) as session:
            link = issue_link(session, role="member", member_id=args.member_id, now=utcnow())
    except CoalitionError as exc:
        print(f"refused: {exc.detail}", file=sys.stderr)
        return 1
    print(console_url(rt.settings, link.token))
    print(f"single use, valid until {link.expires_at:%Y-%m-%d %H:%M} UTC", file=sys.stderr)
    return 0


def cmd_rotate_signing_key(_args: argparse.Namespace) -> int:
    """Make a new statement-signing key the one that signs; old public keys stay published."""
    from settlement.signing import rotate

    rt = runtime()
    _require_schema(rt)
    with transaction(rt.sessions) as session:
        key = rotate(session, secret_key=rt.settings.secret_key, now=utcnow())
    print(f"statement-signing key {key.kid} (generation {key.generation}) now signs;")
    print("earlier keys stay published at GET /v1/signing-keys")
    return 0


def cmd_verify_statement(args: argparse.Namespace) -> int:
    """Verify a statement export offline: exit 0 when it is byte for byte an export of the
    service and its hash and signature hold, else 1."""
    from pathlib import Path

    from settlement.canonical import ExportError, parse_keys, read_export, verify_document

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
    from settlement.signing import public_keys

    rt = runtime()
    _require_schema(rt)
    with transaction(rt.sessions) as session:
        keys = {k.kid: k.public_key for k in public_keys(session)}
    return keys, rt.engine.url.render_as_string(hide_password=True)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(prog="coalition", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="create or upgrade the schema and the first operator key")
    init.add_argument("--json", action="store_true", help="print the key as JSON")
    init.set_defaults(func=cmd_init)
    check = sub.add_parser("check", help="verify every ledger invariant")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(func=cmd_check)
    serve = sub.add_parser("serve", help="run the HTTP API (and the scheduled jobs)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--workers", type=int, default=1, help="API worker processes (default 1)")
    serve.add_argument(
        "--no-scheduler",
        action="store_true",
        help="do not run the scheduled jobs (run `coalition worker` elsewhere)",
    )
    serve.set_defaults(func=cmd_serve)
    worker = sub.add_parser("worker", help="run only the scheduled jobs")
    # Set by `coalition serve` for its scheduler child: stop when that process is gone.
    worker.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    worker.set_defaults(func=cmd_worker)
    demo = sub.add_parser("demo", help="a demo coalition with a period of traffic")
    demo.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    demo.add_argument("--members", type=int, default=400, help="members (default 400)")
    demo.set_defaults(func=cmd_demo)
    link = sub.add_parser("console-link", help="print a single-use sign-in link to the console")
    link.add_argument("--role", required=True, choices=("operator", "finance"))
    link.add_argument(
        "--key",
        help="the key (of that role) the session acts for: finance needs it to change or "
        "approve partners' bank details (four eyes count the key as the person)",
    )
    link.set_defaults(func=cmd_console_link)
    member_link = sub.add_parser(
        "member-link",
        help="print a single-use link to a member's page with the whole coalition history",
    )
    member_link.add_argument("member_id", help="the member id (mem_...)")
    member_link.set_defaults(func=cmd_member_link)
    statements = sub.add_parser("statements", help="settlement statements")
    statements_sub = statements.add_subparsers(dest="statements_command", required=True)
    verify = statements_sub.add_parser(
        "verify", help="verify a statement export (JSON or CSV) offline: hash and signature"
    )
    verify.add_argument("file", help="the export (.json or .csv)")
    verify.add_argument(
        "--keys", help="a saved answer of GET /v1/signing-keys (default: the database's keys)"
    )
    verify.set_defaults(func=cmd_verify_statement)
    signing = sub.add_parser("signing-keys", help="the statement-signing keys")
    signing_sub = signing.add_subparsers(dest="signing_command", required=True)
    rotate = signing_sub.add_parser("rotate", help="make a new key the one that signs")
    rotate.set_defaults(func=cmd_rotate_signing_key)
    imports = sub.add_parser("import", help="bulk imports").add_subparsers(
        dest="what", required=True
    )
    earns = imports.add_parser("earns", help="import a partner's file of earns (CSV or NDJSON)")
    earns.add_argument("--partner", required=True, help="the partner id (prt_...)")
    earns.add_argument("file", help="the file: CSV with a header row, or NDJSON")
    earns.add_argument("--format", choices=("csv", "ndjson"), help="default: from the extension")
    earns.add_argument("--json", action="store_true", help="print the summary as JSON")
    earns.set_defaults(func=cmd_import_earns)
    bank = sub.add_parser("bank", help="bank statements in").add_subparsers(
        dest="bank_command", required=True
    )
    bank_import = bank.add_parser(
        "import", help="import a bank statement (camt.053 or MT940) and reconcile it"
    )
    bank_import.add_argument("file", help="the bank's account statement file")
    bank_import.add_argument("--json", action="store_true", help="print the outcome as JSON")
    bank_import.set_defaults(func=cmd_bank_import)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``coalition`` console script."""
    from coalition import logs

    try:
        logs.configure()
    except ValueError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
