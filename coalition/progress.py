"""Progress of long CLI work: a rich progress bar on a terminal, plain lines otherwise.

``with progress("importing", total) as update: update(done, "12,000 rows")``. On a terminal
the bar redraws in place; in a log or a pipe a plain line is written at each tenth of the
total (each call when the total is unknown), so CI logs and cron mails stay short and readable.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

#: ``update(done, note)``: ``done`` out of the total, ``note`` said beside it.
Update = Callable[[int, str], None]
_PLAIN_STEPS = 10


@contextlib.contextmanager
def progress(
    description: str, total: int | None, *, stream: TextIO | None = None
) -> Iterator[Update]:
    """A progress display for ``total`` units of work on ``stream`` (default stderr)."""
    out = stream or sys.stderr
    if out.isatty():
        with _bar(description, total, out) as update:
            yield update
        return
    yield _plain(description, total, out)


@contextlib.contextmanager
def _bar(description: str, total: int | None, out: TextIO) -> Iterator[Update]:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[note]}"),
    )
    with Progress(*columns, console=Console(file=out), transient=False) as bar:
        task = bar.add_task(description, total=total, note="")

        def update(done: int, note: str = "") -> None:
            bar.update(task, completed=done, note=note)

        yield update


def _plain(description: str, total: int | None, out: TextIO) -> Update:
    said = [-1]

    def update(done: int, note: str = "") -> None:
        if total:
            step = min(_PLAIN_STEPS, done * _PLAIN_STEPS // total)
            if step <= said[0]:
                return
            said[0] = step
            out.write(f"{description}: {step * 100 // _PLAIN_STEPS}% {note}".rstrip() + "\n")
        else:
            out.write(f"{description}: {done} {note}".rstrip() + "\n")
        out.flush()

    return update
