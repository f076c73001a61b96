"""The skeleton of a signed idempotent operation, written once: :func:`operation`.

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
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar, get_type_hints

import msgspec
from litestar import Request, Response, post
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


class Call(Generic[T]):
    """What an operation receives: the request, the verified principal, the process's
    services, and (inside the request's transaction) the session and the decoded body."""

    __slots__ = ("data", "principal", "request", "services", "session", "status")

    data: T
    session: Session

    def __init__(self, request: Request[Any, Any, Any], services: Services, status: int) -> None:
        self.request = request
        self.services = services
        self.principal: Principal = principal_of(request)
        #: The response's status: the route's, unless the operation says otherwise (an
        #: existing member is ``200``, a new one ``201``).
        self.status = status

    @property
    def partner_id(self) -> str:
        """The calling partner (on routes that admit partner keys only)."""
        return partner_id_of(self.principal)


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
    **route: Any,
) -> Callable[[Callable[..., msgspec.Struct]], Any]:
    """The Litestar ``POST`` route of a signed idempotent operation (module docstring).

    ``body``: the struct the body decodes into (strictly; with ``empty_as_object`` no body at
    all stands for ``{}``), or ``None`` for a body the operation reads itself (``call.data`` is
    then its bytes). ``problems``: the problem statuses the route documents (by default what
    a write of an existing thing may answer: without ``404`` when it names nothing that
    exists). ``route``: further arguments of Litestar's ``post``."""

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
            services = services_of(request.app.state)
            call: Call[Any] = Call(request, services, status_code)
            if before is not None:
                before(call, **params)

            def run(session: Session) -> tuple[int, msgspec.Struct]:
                call.session = session
                call.data = body if struct is None else decode(body, struct, empty_as_object=empty)
                result = fn(self, call, **params)
                return call.status, result

            response = run_idempotent(request, services, call.principal, body, run)
            if after is not None:
                after(call, **params)
            return response

        _present_as(handler, fn)
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


def _present_as(handler: Callable[..., Any], fn: Callable[..., msgspec.Struct]) -> None:
    """Give ``handler`` the face Litestar reads (signature, annotations, names, docstring):
    ``fn``'s path parameters and response type, with the raw body and the Idempotency-Key
    header the skeleton takes."""
    hints = get_type_hints(fn, include_extras=True)
    returns: Any = Response[hints.pop("return")]  # type: ignore[misc]
    keyword = inspect.Parameter.KEYWORD_ONLY
    parameters = [
        inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter(
            "request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request[Any, Any, Any]
        ),
        *(
            inspect.Parameter(name, keyword, annotation=hints[name])
            for name in list(inspect.signature(fn).parameters)[2:]
        ),
        inspect.Parameter("body", keyword, annotation=RawBody),
        inspect.Parameter("idempotency_key", keyword, annotation=IdempotencyKey),
    ]
    handler.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        parameters, return_annotation=returns
    )
    handler.__annotations__ = {**{p.name: p.annotation for p in parameters[1:]}, "return": returns}
    for name in ("__module__", "__name__", "__qualname__", "__doc__"):
        setattr(handler, name, getattr(fn, name))
