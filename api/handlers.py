"""The skeletons of a signed idempotent operation (:func:`operation`) and of a signed read
(:func:`reader`), each written once.

A ``POST`` handler of the API states its route, who may call it, its body struct and what it
does; it receives a :class:`Call` (the decoded body, the request's database session, the
verified principal, the process's services) and returns its response struct::

    @operation("/earns", opt=partner("earn"), body=EarnCreate,
               problems=(400, 403, 404, 409, 413, 422))
    def earn(self, call: Call[EarnCreate]) -> TransactionOut:
        ...

The decorator makes it a Litestar route (``sync_to_thread``, the body and the
``Idempotency-Key`` header in the OpenAPI document, the problem responses) whose handler runs
it through :func:`api.idempotency.run_idempotent`: the body is decoded strictly inside the
Idempotency-Key's claim (so a rejected body is stored and replayed like any other answer), in
the request's one database transaction. Path parameters are the function's own keyword
parameters, documented as they are annotated.

A signed ``GET`` is :func:`reader`'s: the handler states its route, who may call it and its
problems, and receives a :class:`Caller` (the request, the services, the principal) and its
path and query parameters::

    @reader("/holds/{hold_id:str}", opt=partner("read"), problems=(403, 404, 422))
    def get_hold(self, caller: Caller, hold_id: PathId) -> HoldOut:
        ...
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar, get_type_hints

import msgspec
from litestar import Request, Response, get, post
from litestar.params import RawBody
from sqlalchemy.orm import Session

from api.auth import partner_id_of, principal_of
from api.decoding import decode
from api.docs import IdempotencyKey
from api.docs import body as documented_body
from api.docs import problems as problem_specs
from api.idempotency import run_idempotent
from api.runtime import Services, services_of
from coalition.errors import invariant
from partners.signatures import Principal

T = TypeVar("T")


class Caller:
    """What a signed read receives (:func:`reader`): the request, the process's services and
    the verified principal."""

    __slots__ = ("principal", "request", "services")

    def __init__(self, request: Request[Any, Any, Any]) -> None:
        self.request = request
        self.services: Services = services_of(request.app.state)
        self.principal: Principal = principal_of(request)

    @property
    def partner_id(self) -> str:
        """The calling partner (on routes that admit partner keys only)."""
        return partner_id_of(self.principal)


class Call(Caller, Generic[T]):
    """What an operation receives: a :class:`Caller`'s request, services and principal, and
    (inside the request's transaction) the session and the decoded body."""

    __slots__ = ("data", "session", "status")

    data: T
    session: Session

    def __init__(self, request: Request[Any, Any, Any], status: int) -> None:
        super().__init__(request)
        #: The response's status: the route's, unless the operation says otherwise (an
        #: existing member is ``200``, a new one ``201``).
        self.status = status


#: Runs outside the transaction, before (a check that must store nothing) or after (once the
#: response is final) the operation, with the call and the path parameters.
Hook = Callable[..., None]


def operation(
    path: str,
    *,
    opt: dict[str, Any],
    body: type[msgspec.Struct] | None,
    problems: tuple[int, ...] = (400, 403, 404, 409, 413, 422),
    status_code: int = 201,
    empty_as_object: bool = False,
    responses: dict[int, Any] | None = None,
    before: Hook | None = None,
    after: Hook | None = None,
    led: bool = False,
    posts: str | None = None,
    **route: Any,
) -> Callable[[Callable[..., msgspec.Struct]], Any]:
    """The Litestar ``POST`` route of a signed idempotent operation (module docstring).

    ``body``: the struct the body decodes into (strictly; with ``empty_as_object`` no body at
    all stands for ``{}``), or ``None`` for a body the operation reads itself (``call.data`` is
    then its bytes). ``problems``: the problem statuses the route documents (by default what
    a write of an existing thing may answer: without ``404`` when it names nothing that
    exists). ``led``: the operation's first statement is its terms read
    (:func:`partners.rates.read_terms`), which carries the Idempotency-Key claim on PostgreSQL
    (:func:`api.idempotency.run_idempotent`). ``posts``: the operation posts one ledger
    transaction of this kind and answers with it (its response is saved in the statement that
    writes it). ``route``: further arguments of Litestar's ``post``."""

    struct, empty = body, empty_as_object
    invariant(not ({"dependencies", "sync_to_thread"} & route.keys()), "set by operation()")

    def decorate(fn: Callable[..., msgspec.Struct]) -> Any:
        def handler(
            self: Any,
            request: Request[Any, Any, Any],
            body: bytes,
            idempotency_key: str,  # documented; the guard has checked it
            **params: Any,
        ) -> Response[Any]:
            call: Call[Any] = Call(request, status_code)
            if before is not None:
                before(call, **params)

            def run(session: Session) -> tuple[int, msgspec.Struct]:
                call.session = session
                call.data = body if struct is None else decode(body, struct, empty_as_object=empty)
                result = fn(self, call, **params)
                return call.status, result

            response = run_idempotent(
                request,
                call.services,
                call.principal,
                body,
                run,
                led=led,
                posts=None if posts is None else (posts, status_code),
            )
            if after is not None:
                after(call, **params)
            return response

        _present_as(handler, fn, respond=True, extra=_OPERATION_PARAMETERS)
        documented = responses or {}
        return post(
            path,
            opt=opt,
            dependencies=documented_body(struct) if struct is not None else None,
            status_code=status_code,
            responses={**problem_specs(*problems), **documented},
            sync_to_thread=True,
            **route,
        )(handler)

    return decorate


def reader(
    path: str, *, opt: dict[str, Any], problems: tuple[int, ...] = (403, 422), **route: Any
) -> Callable[[Callable[..., Any]], Any]:
    """The Litestar ``GET`` route of a signed read: the handler states its route, who may call
    it and the problems it may answer (by default a listing's: ``403``, ``422``; add ``404``
    where it names something), and receives a :class:`Caller` and its path and query
    parameters, documented as they are annotated; where it reads (the request's transaction,
    the primary, the replica) stays in the handler. ``route``: further arguments of
    Litestar's ``get``."""
    invariant("sync_to_thread" not in route, "set by reader()")
    responses = {**problem_specs(*problems), **route.pop("responses", {})}

    def decorate(fn: Callable[..., Any]) -> Any:
        def handler(self: Any, request: Request[Any, Any, Any], **params: Any) -> Any:
            return fn(self, Caller(request), **params)

        _present_as(handler, fn, respond=False, extra=())
        return get(path, opt=opt, responses=responses, sync_to_thread=True, **route)(handler)

    return decorate


_KEYWORD = inspect.Parameter.KEYWORD_ONLY
#: What the skeleton of an operation takes besides the function's own parameters.
_OPERATION_PARAMETERS = (
    inspect.Parameter("body", _KEYWORD, annotation=RawBody),
    inspect.Parameter("idempotency_key", _KEYWORD, annotation=IdempotencyKey),
)


def _present_as(
    handler: Callable[..., Any],
    fn: Callable[..., Any],
    *,
    respond: bool,
    extra: tuple[inspect.Parameter, ...],
) -> None:
    """Give ``handler`` the face Litestar reads (signature, annotations, names, docstring):
    ``fn``'s parameters after the :class:`Caller` (defaults kept) and its response type
    (``respond``: as a ``Response`` of it), with ``extra`` parameters the skeleton takes."""
    hints = get_type_hints(fn, include_extras=True)
    returns: Any = Response[hints.pop("return")] if respond else hints.pop("return")  # type: ignore[misc]
    own = list(inspect.signature(fn).parameters.values())[2:]
    parameters = [
        inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter(
            "request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request[Any, Any, Any]
        ),
        *(p.replace(kind=_KEYWORD, annotation=hints[p.name]) for p in own),
        *extra,
    ]
    handler.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        parameters, return_annotation=returns
    )
    handler.__annotations__ = {**{p.name: p.annotation for p in parameters[1:]}, "return": returns}
    for name in ("__module__", "__name__", "__qualname__", "__doc__"):
        setattr(handler, name, getattr(fn, name))
