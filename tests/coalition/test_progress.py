"""Progress of long CLI work: a rich bar on a terminal, plain lines (each tenth) otherwise."""

from __future__ import annotations

import io

from coalition.progress import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_it_writes_a_plain_line_each_tenth() -> None:
    out = io.StringIO()
    with progress("importing day.csv", 1000, stream=out) as update:
        for done in range(0, 1001, 50):
            update(done, f"{done} rows")
    lines = out.getvalue().splitlines()
    assert lines[0] == "importing day.csv: 0% 0 rows"
    assert lines[-1] == "importing day.csv: 100% 1000 rows"
    assert len(lines) == 11


def test_on_a_terminal_it_draws_a_bar() -> None:
    out = _Terminal()
    with progress("importing day.csv", 10, stream=out) as update:
        update(10, "10 rows")
    shown = out.getvalue()
    assert "importing day.csv" in shown and "100%" in shown and "━" in shown
