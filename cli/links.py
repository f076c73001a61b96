"""``console-link`` and ``member-link``: single-use sign-in links to the web console."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from sqlalchemy.orm import Session

from api.console.links import console_url
from cli.runtime import ready_runtime
from coalition.db import transaction, utcnow
from coalition.errors import CoalitionError
from partners.signin import NewLink, issue_link


def cmd_console_link(args: argparse.Namespace) -> int:
    """Print a single-use sign-in link to the web console (operator or finance), valid 10
    minutes, at the configured public URL."""
    return _print_link(
        lambda session: issue_link(session, role=args.role, now=utcnow(), key_id=args.key),
        refused="coalition console-link: ",
        code=2,
    )


def cmd_member_link(args: argparse.Namespace) -> int:
    """Print a single-use link to a member's page with the whole coalition history (every
    brand), valid 15 minutes: the operator hands it to the member through its own channel."""
    return _print_link(
        lambda session: issue_link(session, role="member", member_id=args.member_id, now=utcnow()),
        refused="refused: ",
        code=1,
    )


def _print_link(issue: Callable[[Session], NewLink], *, refused: str, code: int) -> int:
    """Issue a link in one transaction and print its URL (and, on stderr, until when it is
    valid); a refusal is printed after ``refused`` and exits ``code``."""
    rt = ready_runtime()
    try:
        with transaction(rt.sessions) as session:
            link = issue(session)
    except CoalitionError as exc:
        print(f"{refused}{exc.detail}", file=sys.stderr)
        return code
    print(console_url(rt.settings, link.token))
    print(f"single use, valid until {link.expires_at:%Y-%m-%d %H:%M} UTC", file=sys.stderr)
    return 0
