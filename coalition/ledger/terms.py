"""Terms: a rule over a member row written once, as an expression, and evaluated both ways:
as SQL that a statement evaluates against the row (:meth:`Term.sql`), and as Python over the
row a batch locked (:meth:`Term.py`). The tier basis is declared so (``coalition.ledger.tiers``).

A term is built from named variables (:class:`Var`: a column of the row or a bound parameter,
each with its SQL expression and its place in the Python environment), integers, ``+`` and
``-``, comparisons (``>=``, ``>``, ``<=``, ``<``, :meth:`Term.eq`), :meth:`Term.is_null`, ``&``
and ``|`` of conditions, :func:`when` (SQL's ``CASE``) and the one aggregate the rule reads,
:func:`points_of_days` (the member's points of a range of days: the caller supplies it to
each side).

The Python side keeps SQL's semantics exactly, so the two cannot disagree: arithmetic and
comparisons with a NULL (``None``) give ``None``, ``&`` and ``|`` are three-valued, a ``CASE``
branch is taken only when its condition is true, and the sum of days over a NULL bound is 0 (as
``COALESCE(SUM(...), 0)`` over no row). A condition may not read days, so the branches a row
takes, and so the ranges of days it reads (:func:`ranges_read`), follow from the row alone.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import and_, case, false, or_, true

from coalition.errors import invariant

#: The Python environment of an evaluation: the variables' values in their :class:`Var`
#: order, then the function that gives the points of a range of days (inclusive).
Env = tuple[Any, ...]
Compiled = Callable[[Env], Any]
#: The SQL of :func:`points_of_days`: the member's points of the days from one day-number
#: expression to another (both SQL, inclusive).
DaysSql = Callable[[Any, Any], Any]


class Term:
    """A number (a day or points) of the rule."""

    __slots__ = ()

    #: Whether evaluating it may read days (:func:`points_of_days`).
    reads_days = False

    def sql(self, days_sql: DaysSql) -> Any:
        """The SQL expression."""
        raise NotImplementedError

    def py(self, days_at: int) -> Compiled:
        """The Python evaluation (``env[days_at]`` the function of :func:`points_of_days`)."""
        raise NotImplementedError

    def __add__(self, other: Term | int) -> Term:
        return _Arith(operator.add, self, _term(other))

    def __sub__(self, other: Term | int) -> Term:
        return _Arith(operator.sub, self, _term(other))

    def __ge__(self, other: Term | int) -> Cond:
        return _Cmp(operator.ge, self, _term(other))

    def __gt__(self, other: Term | int) -> Cond:
        return _Cmp(operator.gt, self, _term(other))

    def __le__(self, other: Term | int) -> Cond:
        return _Cmp(operator.le, self, _term(other))

    def __lt__(self, other: Term | int) -> Cond:
        return _Cmp(operator.lt, self, _term(other))

    def eq(self, other: Term | int) -> Cond:
        """``=`` (``==`` keeps its Python meaning on terms)."""
        return _Cmp(operator.eq, self, _term(other))

    def is_null(self) -> Cond:
        """``IS NULL``."""
        return _IsNull(self)


class Cond:
    """A condition of the rule (true, false or, with a NULL in it, unknown)."""

    __slots__ = ()

    def sql(self, days_sql: DaysSql) -> Any:
        """The SQL condition."""
        raise NotImplementedError

    def py(self, days_at: int) -> Compiled:
        """The Python evaluation: ``True``, ``False`` or ``None`` (unknown)."""
        raise NotImplementedError

    def __and__(self, other: Cond) -> Cond:
        return _And(self, other)

    def __or__(self, other: Cond) -> Cond:
        return _Or(self, other)


class Var(Term):
    """A named value: ``sql`` in a statement, ``env[index]`` in Python."""

    __slots__ = ("index", "name", "sql_expr")

    def __init__(self, name: str, index: int, sql_expr: Any) -> None:
        self.name, self.index, self.sql_expr = name, index, sql_expr

    def sql(self, days_sql: DaysSql) -> Any:
        return self.sql_expr

    def py(self, days_at: int) -> Compiled:
        return operator.itemgetter(self.index)


class _Const(Term):
    __slots__ = ("value",)

    def __init__(self, value: int) -> None:
        self.value = value

    def sql(self, days_sql: DaysSql) -> Any:
        return self.value

    def py(self, days_at: int) -> Compiled:
        value = self.value
        return lambda _env: value


def _term(value: Term | int) -> Term:
    return value if isinstance(value, Term) else _Const(value)


class _Arith(Term):
    __slots__ = ("a", "b", "fn", "reads_days")

    def __init__(self, fn: Callable[[Any, Any], Any], a: Term, b: Term) -> None:
        self.fn, self.a, self.b = fn, a, b
        self.reads_days = a.reads_days or b.reads_days

    def sql(self, days_sql: DaysSql) -> Any:
        return self.fn(self.a.sql(days_sql), self.b.sql(days_sql))

    def py(self, days_at: int) -> Compiled:
        fn, fa, fb = self.fn, self.a.py(days_at), self.b.py(days_at)

        def evaluate(env: Env) -> Any:
            a, b = fa(env), fb(env)
            return None if a is None or b is None else fn(a, b)

        return evaluate


class _Cmp(_Arith, Cond):  # a comparison is evaluated as arithmetic is
    __slots__ = ()

    def __init__(self, fn: Callable[[Any, Any], Any], a: Term, b: Term) -> None:
        invariant(not (a.reads_days or b.reads_days), "a condition reads no days")
        super().__init__(fn, a, b)


class _IsNull(Cond):
    __slots__ = ("a",)

    def __init__(self, a: Term) -> None:
        invariant(not a.reads_days, "a condition reads no days")
        self.a = a

    def sql(self, days_sql: DaysSql) -> Any:
        return self.a.sql(days_sql).is_(None)

    def py(self, days_at: int) -> Compiled:
        fa = self.a.py(days_at)
        return lambda env: fa(env) is None


class _And(Cond):
    __slots__ = ("a", "b")

    def __init__(self, a: Cond, b: Cond) -> None:
        self.a, self.b = a, b

    def sql(self, days_sql: DaysSql) -> Any:
        return and_(self.a.sql(days_sql), self.b.sql(days_sql))

    def py(self, days_at: int) -> Compiled:
        fa, fb = self.a.py(days_at), self.b.py(days_at)

        def evaluate(env: Env) -> bool | None:
            a = fa(env)
            if a is False:
                return False
            b = fb(env)
            if b is False:
                return False
            return None if a is None or b is None else True

        return evaluate


class _Or(Cond):
    __slots__ = ("a", "b")

    def __init__(self, a: Cond, b: Cond) -> None:
        self.a, self.b = a, b

    def sql(self, days_sql: DaysSql) -> Any:
        return or_(self.a.sql(days_sql), self.b.sql(days_sql))

    def py(self, days_at: int) -> Compiled:
        fa, fb = self.a.py(days_at), self.b.py(days_at)

        def evaluate(env: Env) -> bool | None:
            a = fa(env)
            if a is True:
                return True
            b = fb(env)
            if b is True:
                return True
            return None if a is None or b is None else False

        return evaluate


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

    def py(self, days_at: int) -> Compiled:
        branches = [(c.py(days_at), v.py(days_at)) for c, v in self.branches]
        otherwise = self.else_.py(days_at)

        def evaluate(env: Env) -> Any:
            for taken, value in branches:
                if taken(env) is True:
                    return value(env)
            return otherwise(env)

        return evaluate


class _Days(Term):
    __slots__ = ("first", "last")

    reads_days = True

    def __init__(self, first: Term, last: Term) -> None:
        invariant(not (first.reads_days or last.reads_days), "a range of days reads none")
        self.first, self.last = first, last

    def sql(self, days_sql: DaysSql) -> Any:
        return days_sql(self.first.sql(days_sql), self.last.sql(days_sql))

    def py(self, days_at: int) -> Compiled:
        first, last = self.first.py(days_at), self.last.py(days_at)

        def evaluate(env: Env) -> Any:
            lo, hi = first(env), last(env)
            return 0 if lo is None or hi is None else env[days_at](lo, hi)

        return evaluate


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


def ranges_read(compiled: Sequence[Compiled], env: Env) -> list[tuple[int, int]]:
    """The ranges of days (inclusive) that evaluating ``compiled`` with ``env`` reads (``env``'s
    last item, the days function, replaced)."""
    ranges: list[tuple[int, int]] = []

    def record(first: int, last: int) -> int:
        ranges.append((first, last))
        return 0

    recording = (*env[:-1], record)
    for evaluate in compiled:
        evaluate(recording)
    return ranges
