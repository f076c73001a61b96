"""Terms: a rule over a member row written once, as an expression, and evaluated both ways:
as SQL that a statement evaluates against the row (:meth:`Term.sql`), and as Python over the
row a batch locked (:meth:`Term.py`). The tier basis is declared so (``coalition.ledger.tiers``).

A term is built from named variables (:class:`Var`: a column of the row or a bound parameter,
with its SQL expression; in Python a value given by name), integers, ``+`` and
``-``, comparisons (``>=``, ``>``, ``<=``, ``<``, :meth:`Term.eq`), :meth:`Term.is_null`, ``&``
and ``|`` of conditions, :func:`when` (SQL's ``CASE``) and the one aggregate the rule reads,
:func:`points_of_days` (the member's points of a range of days: the caller supplies it to
each side).

The Python side keeps SQL's semantics exactly, so the two cannot disagree: arithmetic and
comparisons with a NULL (``None``) give ``None``, ``&`` and ``|`` are three-valued, a ``CASE``
branch is taken only when its condition is true, and the sum of days over a NULL bound is 0 (as
``COALESCE(SUM(...), 0)`` over no row). A condition may not read days, so the branches a row
takes, and so the ranges of days it reads (:func:`ranges_read`), follow from the row alone.

The Python side is compiled once into one plain function (:func:`compile_py`: the source of
its statements generated from the terms, then ``compile``): it costs what the same rule
written by hand in Python costs, which a bulk import pays per row.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import and_, case, false, or_, true

from coalition.errors import invariant

#: The Python environment of an evaluation: the variables' values in the order
#: :func:`compile_py` was given them, then the function that gives the points of a range of
#: days (inclusive).
Env = tuple[Any, ...]
#: A compiled evaluation: the terms' values for an environment.
Compiled = Callable[[Env], tuple[Any, ...]]
#: The SQL of :func:`points_of_days`: the member's points of the days from one day-number
#: expression to another (both SQL, inclusive).
DaysSql = Callable[[Any, Any], Any]


class _Code:
    """The Python source of an evaluation being generated: its lines, and fresh names."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._names = 0
        self._depth = 1

    def fresh(self) -> str:
        self._names += 1
        return f"_{self._names}"

    def line(self, text: str) -> None:
        self.lines.append("    " * self._depth + text)

    @contextmanager
    def block(self, header: str) -> Iterator[None]:
        self.line(header)
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1

    def assign(self, text: str) -> str:
        name = self.fresh()
        self.line(f"{name} = {text}")
        return name


def _nullable(*names: str) -> str:
    """Python: whether any of ``names`` (generated names or literals) is ``None``."""
    return " or ".join(f"{n} is None" for n in names if not n.lstrip("-").isdigit()) or "False"


class Term:
    """A number (a day or points) of the rule."""

    __slots__ = ()

    #: Whether evaluating it may read days (:func:`points_of_days`).
    reads_days = False

    def sql(self, days_sql: DaysSql) -> Any:
        """The SQL expression."""
        raise NotImplementedError

    def py(self, code: _Code) -> str:
        """Emit the Python statements that compute it; the name (or literal) that holds it."""
        raise NotImplementedError

    def __add__(self, other: Term | int) -> Term:
        return _Arith("+", self, _term(other))

    def __sub__(self, other: Term | int) -> Term:
        return _Arith("-", self, _term(other))

    def __ge__(self, other: Term | int) -> Cond:
        return _Cmp(">=", self, _term(other))

    def __gt__(self, other: Term | int) -> Cond:
        return _Cmp(">", self, _term(other))

    def __le__(self, other: Term | int) -> Cond:
        return _Cmp("<=", self, _term(other))

    def __lt__(self, other: Term | int) -> Cond:
        return _Cmp("<", self, _term(other))

    def eq(self, other: Term | int) -> Cond:
        """``=`` (``==`` keeps its Python meaning on terms)."""
        return _Cmp("==", self, _term(other))

    def is_null(self) -> Cond:
        """``IS NULL``."""
        return _IsNull(self)


class Cond:
    """A condition of the rule (true, false or, with a NULL in it, unknown: ``None``)."""

    __slots__ = ()

    def sql(self, days_sql: DaysSql) -> Any:
        """The SQL condition."""
        raise NotImplementedError

    def py(self, code: _Code) -> str:
        """As :meth:`Term.py`: ``True``, ``False`` or ``None``."""
        raise NotImplementedError

    def __and__(self, other: Cond) -> Cond:
        return _And(self, other)

    def __or__(self, other: Cond) -> Cond:
        return _Or(self, other)


class Var(Term):
    """A named value: ``sql_expr`` in a statement, the environment's ``name`` in Python."""

    __slots__ = ("name", "sql_expr")

    def __init__(self, name: str, sql_expr: Any) -> None:
        invariant(name.isidentifier() and not name.startswith("_"), f"a variable {name!r}")
        self.name, self.sql_expr = name, sql_expr

    def sql(self, days_sql: DaysSql) -> Any:
        return self.sql_expr

    def py(self, code: _Code) -> str:
        return self.name


class _Const(Term):
    __slots__ = ("value",)

    def __init__(self, value: int) -> None:
        self.value = value

    def sql(self, days_sql: DaysSql) -> Any:
        return self.value

    def py(self, code: _Code) -> str:
        return str(int(self.value))


def _term(value: Term | int) -> Term:
    return value if isinstance(value, Term) else _Const(value)


_SQL_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "-": operator.sub,
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
}


class _Arith(Term):
    __slots__ = ("a", "b", "op", "reads_days")

    def __init__(self, op: str, a: Term, b: Term) -> None:
        self.op, self.a, self.b = op, a, b
        self.reads_days = a.reads_days or b.reads_days

    def sql(self, days_sql: DaysSql) -> Any:
        return _SQL_OPERATORS[self.op](self.a.sql(days_sql), self.b.sql(days_sql))

    def py(self, code: _Code) -> str:
        a, b = self.a.py(code), self.b.py(code)
        return code.assign(f"None if {_nullable(a, b)} else {a} {self.op} {b}")


class _Cmp(_Arith, Cond):  # a comparison is evaluated as arithmetic is
    __slots__ = ()

    def __init__(self, op: str, a: Term, b: Term) -> None:
        invariant(not (a.reads_days or b.reads_days), "a condition reads no days")
        super().__init__(op, a, b)


class _IsNull(Cond):
    __slots__ = ("a",)

    def __init__(self, a: Term) -> None:
        invariant(not a.reads_days, "a condition reads no days")
        self.a = a

    def sql(self, days_sql: DaysSql) -> Any:
        return self.a.sql(days_sql).is_(None)

    def py(self, code: _Code) -> str:
        return code.assign(f"{self.a.py(code)} is None")


class _And(Cond):
    __slots__ = ("a", "b")

    def __init__(self, a: Cond, b: Cond) -> None:
        self.a, self.b = a, b

    def sql(self, days_sql: DaysSql) -> Any:
        return and_(self.a.sql(days_sql), self.b.sql(days_sql))

    def py(self, code: _Code) -> str:
        return _three_valued(code, self.a, self.b, decides="False")


class _Or(Cond):
    __slots__ = ("a", "b")

    def __init__(self, a: Cond, b: Cond) -> None:
        self.a, self.b = a, b

    def sql(self, days_sql: DaysSql) -> Any:
        return or_(self.a.sql(days_sql), self.b.sql(days_sql))

    def py(self, code: _Code) -> str:
        return _three_valued(code, self.a, self.b, decides="True")


def _three_valued(code: _Code, a: Cond, b: Cond, *, decides: str) -> str:
    """``a AND b`` (``decides`` False) or ``a OR b`` (True), as SQL evaluates them: ``b`` only
    if ``a`` does not decide; unknown (``None``) if neither decides and one is unknown."""
    other = "True" if decides == "False" else "False"
    result = code.fresh()
    first = a.py(code)
    with code.block(f"if {first} is {decides}:"):
        code.line(f"{result} = {decides}")
    with code.block("else:"):
        second = b.py(code)
        unknown = f"None if {first} is None or {second} is None else {other}"
        code.line(f"{result} = {decides} if {second} is {decides} else {unknown}")
    return result


class _When(Term):
    __slots__ = ("branches", "else_", "reads_days")

    def __init__(self, branches: Sequence[tuple[Cond, Term]], else_: Term) -> None:
        self.branches, self.else_ = tuple(branches), else_
        self.reads_days = else_.reads_days or any(v.reads_days for _, v in branches)

    def sql(self, days_sql: DaysSql) -> Any:
        return case(
            *((c.sql(days_sql), v.sql(days_sql)) for c, v in self.branches),
            else_=self.else_.sql(days_sql),
        )

    def py(self, code: _Code) -> str:
        result = code.fresh()

        def branch(index: int) -> None:
            if index == len(self.branches):
                code.line(f"{result} = {self.else_.py(code)}")
                return
            condition, value = self.branches[index]
            with code.block(f"if {condition.py(code)} is True:"):
                code.line(f"{result} = {value.py(code)}")
            with code.block("else:"):
                branch(index + 1)

        branch(0)
        return result


class _Days(Term):
    __slots__ = ("first", "last")

    reads_days = True

    def __init__(self, first: Term, last: Term) -> None:
        invariant(not (first.reads_days or last.reads_days), "a range of days reads none")
        self.first, self.last = first, last

    def sql(self, days_sql: DaysSql) -> Any:
        return days_sql(self.first.sql(days_sql), self.last.sql(days_sql))

    def py(self, code: _Code) -> str:
        first, last = self.first.py(code), self.last.py(code)
        return code.assign(f"0 if {_nullable(first, last)} else _days({first}, {last})")


def when(*branches: tuple[Cond, Term | int], else_: Term | int) -> Term:
    """``CASE WHEN c THEN v ... ELSE e END``: the value of the first branch whose condition is
    true."""
    return _When([(c, _term(v)) for c, v in branches], _term(else_))


def points_of_days(first: Term, last: Term) -> Term:
    """The member's points of the days ``first`` to ``last`` (inclusive; 0 for none)."""
    return _Days(first, last)


def reads_nothing(term: Term, days_sql: DaysSql) -> Any:
    """The SQL condition under which evaluating ``term`` reads no days: which branches of its
    ``CASE`` a row takes."""
    if not term.reads_days:
        return true()
    if isinstance(term, _When):
        return case(
            *((c.sql(days_sql), reads_nothing(v, days_sql)) for c, v in term.branches),
            else_=reads_nothing(term.else_, days_sql),
        )
    if isinstance(term, _Arith):
        return and_(reads_nothing(term.a, days_sql), reads_nothing(term.b, days_sql))
    return false()


def compile_py(terms: Sequence[Term], variables: Sequence[Var]) -> Compiled:
    """One Python function of an :data:`Env` (``variables``' values in their order, then the
    days function) that returns the values of ``terms``, as SQL would."""
    code = _Code()
    names = [v.name for v in variables]
    code.line(f"{', '.join(names)}, _days = env")
    results = [term.py(code) for term in terms]
    code.line(f"return ({', '.join(results)},)")
    source = "def evaluate(env):\n" + "\n".join(code.lines) + "\n"
    namespace: dict[str, Any] = {}
    # The source is generated from the rule's own terms, never from input.
    exec(compile(source, "<coalition.ledger.terms>", "exec"), namespace)  # noqa: S102
    evaluate: Compiled = namespace["evaluate"]
    return evaluate


def ranges_read(compiled: Compiled, env: Env) -> list[tuple[int, int]]:
    """The ranges of days (inclusive) that evaluating ``compiled`` with ``env`` reads (``env``'s
    last item, the days function, replaced)."""
    ranges: list[tuple[int, int]] = []

    def record(first: int, last: int) -> int:
        ranges.append((first, last))
        return 0

    compiled((*env[:-1], record))
    return ranges
