"""The ``coalition`` command line: its parser and the dispatch to each command's module.

``cli`` is the service's composition root: the one package that wires every layer together
(nothing imports it). Each subcommand names its handler as ``"module:function"``, imported only
when that command runs, so ``coalition check`` does not load the HTTP server and ``coalition
serve`` sets up its metrics directory before anything loads the metrics (cli/serve.py).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from coalition import logs
from coalition.config import ConfigError

Handler = Callable[[argparse.Namespace], int]


def handler(target: str) -> Handler:
    """The function a ``"module:function"`` target names (its module imported now)."""
    module, _, name = target.partition(":")
    handler: Handler = getattr(importlib.import_module(module), name)
    return handler


def _command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, target: str, help: str
) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help)
    parser.set_defaults(handler=target)
    return parser


def _group(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help: str
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """A command with subcommands (``coalition <name> <subcommand>``)."""
    return sub.add_parser(name, help=help).add_subparsers(dest=f"{name}_command", required=True)


def _service_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    init = _command(
        sub,
        "init",
        "cli.commands:cmd_init",
        "create or upgrade the schema and the first operator key",
    )
    init.add_argument("--json", action="store_true", help="print the key as JSON")
    check = _command(sub, "check", "cli.commands:cmd_check", "verify every ledger invariant")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    serve = _command(
        sub, "serve", "cli.serve:cmd_serve", "run the HTTP API (and the scheduled jobs)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--workers", type=int, default=1, help="API worker processes (default 1)")
    serve.add_argument(
        "--no-scheduler",
        action="store_true",
        help="do not run the scheduled jobs (run `coalition worker` elsewhere)",
    )
    worker = _command(sub, "worker", "cli.jobs:cmd_worker", "run only the scheduled jobs")
    # Set by `coalition serve` for its scheduler child: stop when that process is gone.
    worker.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    demo = _command(sub, "demo", "cli.demo:cmd_demo", "a demo coalition with a period of traffic")
    demo.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    demo.add_argument("--members", type=int, default=400, help="members (default 400)")


def _people_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    link = _command(
        sub,
        "console-link",
        "cli.links:cmd_console_link",
        "print a single-use sign-in link to the console",
    )
    link.add_argument("--role", required=True, choices=("operator", "finance"))
    link.add_argument(
        "--key",
        help="the key (of that role) the session acts for: finance needs it to change or "
        "approve partners' bank details (four eyes count the key as the person)",
    )
    member_link = _command(
        sub,
        "member-link",
        "cli.links:cmd_member_link",
        "print a single-use link to a member's page with the whole coalition history",
    )
    member_link.add_argument("member_id", help="the member id (mem_...)")


def _settlement_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    statements = _group(sub, "statements", "settlement statements")
    verify = _command(
        statements,
        "verify",
        "cli.commands:cmd_verify_statement",
        "verify a statement export (JSON or CSV) offline: hash and signature",
    )
    verify.add_argument("file", help="the export (.json or .csv)")
    verify.add_argument(
        "--keys", help="a saved answer of GET /v1/signing-keys (default: the database's keys)"
    )
    signing = _group(sub, "signing-keys", "the statement-signing keys")
    _command(
        signing,
        "rotate",
        "cli.commands:cmd_rotate_signing_key",
        "make a new key the one that signs",
    )
    bank = _group(sub, "bank", "bank statements in")
    bank_import = _command(
        bank,
        "import",
        "cli.files:cmd_bank_import",
        "import a bank statement (camt.053 or MT940) and reconcile it",
    )
    bank_import.add_argument("file", help="the bank's account statement file")
    bank_import.add_argument("--json", action="store_true", help="print the outcome as JSON")


def _import_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    imports = _group(sub, "import", "bulk imports")
    earns = _command(
        imports,
        "earns",
        "cli.files:cmd_import_earns",
        "import a partner's file of earns (CSV or NDJSON)",
    )
    earns.add_argument("--partner", required=True, help="the partner id (prt_...)")
    earns.add_argument("file", help="the file: CSV with a header row, or NDJSON")
    earns.add_argument("--format", choices=("csv", "ndjson"), help="default: from the extension")
    earns.add_argument("--json", action="store_true", help="print the summary as JSON")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(
        prog="coalition", description="The coalition settlement service's command line."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _service_commands(sub)
    _people_commands(sub)
    _settlement_commands(sub)
    _import_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``coalition`` console script."""
    try:
        logs.configure()
    except ValueError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    try:
        return handler(args.handler)(args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
