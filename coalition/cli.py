"""The ``coalition`` command line.

The CLI is the service's composition root: it is the one module of the kernel that reaches up
into ``partners``, ``settlement`` and ``api``, and only inside the command that needs them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass

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
    engine = make_engine(settings.database_url)
    return Runtime(settings, engine, session_factory(engine))


def _require_schema(rt: Runtime) -> None:
    if not schema_is_current(rt.engine):
        raise SystemExit("the database schema is missing or old: run `coalition init` first")


def cmd_init(args: argparse.Namespace) -> int:
    """Create or upgrade the schema; create the first operator key when there is none (and
    record that in the audit log)."""
    from coalition import audit
    from partners.keys import create_key, has_operator_key

    rt = runtime()
    before, after = migrate(rt.engine)
    with transaction(rt.sessions) as session:
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
    from coalition.check import run_checks

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
        Job("signature-use-purge", lambda: purge_signature_uses(rt), every_s=60),
        Job("rate-counter-purge", lambda: purge_rate_counters(rt), every_s=60),
    ]


def purge_request_nonces(rt: Runtime) -> int:
    """Forget signature nonces whose window has passed; how many."""
    from partners.signatures import purge_nonces

    with transaction(rt.sessions) as session:
        return purge_nonces(session, utcnow())


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
    """Delete idempotency records past their 24 h retention, batch by batch; how many."""
    from coalition import idempotency

    total = 0
    while True:
        with transaction(rt.sessions) as session:
            deleted = idempotency.purge(session, utcnow())
        total += deleted
        if deleted < idempotency.PURGE_BATCH:
            return total


def cmd_worker(_args: argparse.Namespace) -> int:
    """Run only the scheduled jobs."""
    from coalition.scheduler import Job, run_blocking

    rt = runtime()
    _require_schema(rt)
    run_blocking([j for j in jobs(rt) if isinstance(j, Job)])
    return 0


def _run_scheduler() -> None:
    """The scheduler process of ``coalition serve`` (a child process of its own)."""
    from coalition.scheduler import Job, run_blocking

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    rt = runtime()
    with contextlib.suppress(KeyboardInterrupt):  # the parent stops it on shutdown
        run_blocking([j for j in jobs(rt) if isinstance(j, Job)])


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the HTTP API with uvicorn (``--workers`` processes) and, unless
    ``--no-scheduler``, the scheduled jobs in a separate process."""
    import multiprocessing

    import uvicorn

    rt = runtime()
    _require_schema(rt)
    if rt.settings.secret_key_is_dev_default:
        logging.getLogger("coalition").warning(
            "serving with the development COALITION_SECRET_KEY; set it in production"
        )
    rt.engine.dispose()
    scheduler = None
    if not args.no_scheduler:
        scheduler = multiprocessing.get_context("spawn").Process(
            target=_run_scheduler, name="coalition-scheduler", daemon=True
        )
        scheduler.start()
    try:
        uvicorn.run(
            "api.app:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level="info",
            # X-Forwarded-* only from a proxy on this machine; behind another proxy set
            # COALITION_PUBLIC_URL so signatures over the public URL verify.
            proxy_headers=True,
            forwarded_allow_ips="127.0.0.1",
            # h11 with a bound on how long a request may take to arrive (slow clients are
            # dropped: api/server.py); idle keep-alive connections close after 5 s
            http="api.server:BoundedH11Protocol",
            timeout_keep_alive=5,
        )
    finally:
        if scheduler is not None and scheduler.is_alive():
            scheduler.terminate()
            scheduler.join(timeout=10)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """A demo coalition on an empty database, with a period of traffic."""
    from api.example import demo_lines
    from partners.demo import run_demo

    rt = runtime()
    return run_demo(
        rt.settings,
        rt.engine,
        rt.sessions,
        seed=args.seed,
        members=args.members,
        describe_api=demo_lines,
    )


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
    worker.set_defaults(func=cmd_worker)
    demo = sub.add_parser("demo", help="a demo coalition with a period of traffic")
    demo.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    demo.add_argument("--members", type=int, default=400, help="members (default 400)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``coalition`` console script."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
