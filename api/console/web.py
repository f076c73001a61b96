"""The console's HTTP plumbing: the session cookie, the guard every page has, CSRF on every
form, the sign-in and sign-out pages, and the HTML error pages.

The session cookie (:data:`SESSION_COOKIE`) is ``HttpOnly``, ``SameSite=Strict``, limited to
``/console`` and ``Secure`` when the public URL is https. The guard (:func:`signed_in`) turns
it into a :class:`Viewer` (or a "signed out" page), checks the role the route declares in its
``opt`` (:func:`roles`) and, for a ``POST``, the form's CSRF token (a form without it, or with
another session's, is refused with ``403`` before the handler runs). For operator and finance
sessions it binds the session as the request's principal, so :func:`api.audit.record_action`
records every console action in the same audit log as the API's.

The pages read through :func:`read`: from the read replica when one is configured and usable
(``coalition.replicas.Reads``), except for a browser that has just changed something: every console
``POST`` answered without an error sets a short cookie (:data:`FRESH_COOKIE`, for the replica's
lag bound and a second more; :func:`mark_fresh`), and while it lasts that browser's pages read
the primary, so the page a form redirects to shows the change. The session itself is always
checked on the primary (a sign-out or a revocation counts at once).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast

import anyio.to_thread
import msgspec
from litestar import Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie, FormMultiDict
from litestar.exceptions import HTTPException, NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.params import PathParameter
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.template.config import TemplateConfig
from litestar.types import ExceptionHandlersMap, Message, Scope
from markupsafe import Markup
from sqlalchemy.orm import Session

from api import problems
from api.auth import bind_principal
from api.console import formats
from api.problems import KINDS, code_of
from api.runtime import Services, services_of
from coalition import logs, text
from coalition.db import transaction
from coalition.errors import CoalitionError, InvariantViolated, ValidationFailed, invariant
from partners import signin
from partners.signatures import Principal

SESSION_COOKIE = "coalition_console"
#: Set by a console form's answer: this browser's pages read the primary while it lasts.
FRESH_COOKIE = "coalition_fresh"
#: The sign-in page's nonce: binds its form's CSRF token to this browser.
SIGN_IN_COOKIE = "coalition_sign_in"
PREFIX = "/console"
TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{20,100}")
_VIEWER_KEY = "coalition_console_viewer"
_FORM_KEY = "coalition_console_form"
STAFF = ("operator", "finance")
T = TypeVar("T")


def _shown(value: Any) -> Any:
    """Every value a page prints, with the characters the text rule refuses (a bidi override,
    a control character) shown as U+FFFD: a text stored before the rule is harmless too."""
    if isinstance(value, Markup):
        return Markup(text.neutralise(str(value)))  # noqa: S704 (already escaped markup)
    if isinstance(value, str):
        return text.neutralise(value)
    return value


def _engine_setup(engine: JinjaTemplateEngine) -> None:
    engine.engine.filters.update(formats.FILTERS)
    engine.engine.globals["PREFIX"] = PREFIX
    engine.engine.finalize = _shown


TEMPLATE_CONFIG = TemplateConfig(
    directory=TEMPLATES, engine=JinjaTemplateEngine, engine_callback=_engine_setup
)


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is looking: the session's id, role, partner (partner and member sessions) and
    member (member sessions), and the CSRF token its forms carry."""

    session_id: str
    role: str
    partner_id: str | None
    member_id: str | None
    csrf: str
    #: The key the session acts for (``coalition console-link --key``), if any.
    key_id: str | None = None

    @property
    def staff(self) -> bool:
        """Operator or finance: sees every partner."""
        return self.role in STAFF

    @property
    def scope_partner(self) -> str | None:
        """The partner a query is limited to: the viewer's own, or none for the staff. Never
        none for anyone else (the operator's member session names no partner, and reads no
        partner-scoped page)."""
        if self.staff:
            return None
        invariant(self.partner_id is not None, f"a {self.role} session scoped to no partner")
        return self.partner_id


def roles(*allowed: str) -> dict[str, Any]:
    """Route ``opt``: the session roles that may open the page."""
    return {"console_roles": frozenset(allowed)}


def _secure(services: Services) -> bool:
    return services.settings.public_url.lower().startswith("https://")


def _cookie(services: Services, key: str, value: str, **extra: Any) -> Cookie:
    return Cookie(
        key=key,
        value=value,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=_secure(services),
        **extra,
    )


def _expired_cookie(services: Services, key: str) -> Cookie:
    return _cookie(services, key, "", max_age=0)


def _load(services: Services, token: str) -> signin.ConsoleSession | None:
    with transaction(services.sessions) as s:
        found = signin.current(s, token, services.clock())
        if found is not None:
            s.expunge(found)
        return found


async def signed_in(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """The guard of every console page; see the module docstring."""
    services = services_of(connection.app.state)
    token = connection.cookies.get(SESSION_COOKIE)
    found = None
    if token and _TOKEN_RE.fullmatch(token):
        found = await anyio.to_thread.run_sync(partial(_load, services, token))
    if found is None:
        raise NotAuthorizedException("You are not signed in, or your session has expired.")
    secret = services.settings.secret_key
    viewer = Viewer(
        found.id,
        found.role,
        found.partner_id,
        found.member_id,
        signin.csrf_token(secret, found.token_sha256),
        found.key_id,
    )
    state = connection.scope.setdefault("state", {})
    state[_VIEWER_KEY] = viewer
    if viewer.staff:
        bind_principal(connection.scope, Principal(found.id, found.role, None, frozenset()))
    logs.bind(key_id=found.id, partner_id=found.partner_id)
    allowed = handler.opt.get("console_roles")
    if not isinstance(allowed, frozenset):
        raise InvariantViolated(f"{handler} declares no console roles")
    if viewer.role not in allowed:
        raise PermissionDeniedException("This page is not open to your role.")
    request = cast("Request[Any, Any, Any]", connection)
    if request.method == "POST":
        form = await request.form()
        if not signin.csrf_ok(secret, found.token_sha256, form.get("csrf")):
            raise PermissionDeniedException(
                "This form did not carry this session's security token; open the page again "
                "and send it from there."
            )
        state[_FORM_KEY] = form


def viewer_of(request: Request[Any, Any, Any]) -> Viewer:
    """The viewer the guard admitted."""
    viewer = request.scope.get("state", {}).get(_VIEWER_KEY)
    if not isinstance(viewer, Viewer):
        raise InvariantViolated("console route without the guard")
    return viewer


def form_of(request: Request[Any, Any, Any]) -> FormMultiDict:
    """The posted form the guard checked."""
    form = request.scope.get("state", {}).get(_FORM_KEY)
    if not isinstance(form, FormMultiDict):
        raise InvariantViolated("console POST route without the guard")
    return form


def field(form: FormMultiDict, name: str) -> str:
    """A form's text field (empty when absent); :class:`ValidationFailed` for a file posted
    in its place. What the text must be is the domain's rule (:mod:`coalition.text`)."""
    value = form.get(name, "")
    if not isinstance(value, str):
        raise ValidationFailed.at(name, "a text field, not a file")
    return value


def read(request: Request[Any, Any, Any], work: Callable[[Session], T]) -> T:
    """What a page shows, read in one transaction: on the replica when usable; on the primary
    for a form's own answer and for a browser that has just changed something
    (:data:`FRESH_COOKIE`)."""
    reads = services_of(request.app.state).reads
    fresh = request.method != "GET" or FRESH_COOKIE in request.cookies
    return reads.run(work, fresh=fresh)


async def mark_fresh(message: Message, scope: Scope) -> None:
    """``before_send`` hook: a signed-in console form (a ``POST`` past the guard) answered
    without an error sets :data:`FRESH_COOKIE` for the replica's lag bound and two seconds
    more (no replica: nothing)."""
    if (
        message["type"] != "http.response.start"
        or scope.get("method") != "POST"
        or _VIEWER_KEY not in scope.get("state", {})
        or message["status"] >= 400
    ):
        return
    services = services_of(scope["app"].state)
    if services.reads.replica is None:
        return
    max_age = int(services.settings.replica_max_lag_s) + 2
    cookie = _cookie(services, FRESH_COOKIE, "1", max_age=max_age)
    message["headers"] = [*message.get("headers", []), cookie.to_encoded_header()]


def page(name: str, viewer: Viewer | None, *, status_code: int = 200, **context: Any) -> Template:
    """A console page: the template with the viewer (for the navigation and the forms)."""
    return Template(
        template_name=name, context={"viewer": viewer, **context}, status_code=status_code
    )


def back(path: str, **query: str) -> Redirect:
    """After a form: ``303`` to the page that shows the result."""
    return Redirect(path=PREFIX + path, status_code=303, query_params=query or None)


# --- errors ------------------------------------------------------------------------------

_TITLES = {
    401: "Signed out",
    403: "Not allowed",
    404: "Not found",
    409: "Not possible now",
    422: "Please check the form",
}


def _error_page(
    request: Request[Any, Any, Any], status: int, detail: str, title: str | None = None
) -> Template:
    viewer = request.scope.get("state", {}).get(_VIEWER_KEY)
    return page(
        "error.html",
        viewer,
        status_code=status,
        title=title or _TITLES.get(status, "Something went wrong"),
        detail=detail,
        signed_out=status == 401,
    )


def on_http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Template:
    """Litestar's errors (signed out, not allowed, bad query) as a page."""
    return _error_page(request, exc.status_code, str(exc.detail))


@dataclass(frozen=True, slots=True)
class Problem:
    """A rule an action broke, as a page shows it above the form: the API's title and detail
    (the field named as the form names it), and the status the page is sent with."""

    title: str
    detail: str
    status: int


def problem_of(exc: CoalitionError) -> Problem:
    """The problem of a domain error, in the API's words."""
    kind = KINDS[code_of(exc)]
    return Problem(kind.title, exc.detail, kind.status)


def on_domain_error(request: Request[Any, Any, Any], exc: CoalitionError) -> Template:
    """A rule the action broke (the same rules as the API's), as a page."""
    found = problem_of(exc)
    return _error_page(request, found.status, found.detail, title=found.title)


def on_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Template:
    """Anything else (the database out of reach, a defect): logged exactly as the API logs it
    (:func:`api.problems.on_unexpected`, with its error id), answered as a page, never JSON."""
    answer = problems.on_unexpected(request, exc)
    detail = str(msgspec.json.decode(answer.content)["detail"])
    shown = _error_page(request, answer.status_code or 500, detail)
    shown.headers.update({k: v for k, v in answer.headers.items() if k == "Retry-After"})
    return shown


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    HTTPException: on_http_error,
    CoalitionError: on_domain_error,
    Exception: on_unexpected,
}


# --- sign-in -----------------------------------------------------------------------------

_REFUSED = {
    "used": "This sign-in link has been used already. Each link signs in once; ask for a new one.",
    "expired": "This sign-in link has expired. Links are valid for a few minutes; ask for a "
    "new one.",
    "unknown": "This is not a sign-in link of this console. Check that you copied all of it.",
}


def _refused(reason: str) -> Template:
    status = 404 if reason == "unknown" else 410
    return page("refused.html", None, status_code=status, detail=_REFUSED[reason])


def _check(services: Services, token: str) -> signin.SignInLink:
    with transaction(services.sessions) as s:
        link = signin.check_link(s, token, services.clock())
        s.expunge(link)
        return link


@get(f"{PREFIX}/sign-in/{{token:str}}", sync_to_thread=True, include_in_schema=False)
def sign_in_page(
    request: Request[Any, Any, Any], token: Annotated[str, PathParameter(max_length=200)]
) -> Template:
    """The page a link opens: who it signs in, and a button that spends it (a link opened by
    a mail scanner or a preview spends nothing)."""
    services = services_of(request.app.state)
    if not _TOKEN_RE.fullmatch(token):
        return _refused("unknown")
    try:
        link = _check(services, token)
    except signin.LinkRefused as refused:
        return _refused(refused.reason)
    nonce = secrets.token_urlsafe(16)
    response = page(
        "sign_in.html",
        None,
        token=token,
        role=link.role,
        expires_at=link.expires_at,
        csrf=signin.csrf_token(services.settings.secret_key, "sign-in:" + nonce),
    )
    response.cookies.append(
        _cookie(
            services, SIGN_IN_COOKIE, nonce, max_age=int(signin.MEMBER_LINK_TTL.total_seconds())
        )
    )
    return response


def _redeem(services: Services, token: str) -> signin.SignedIn:
    with transaction(services.sessions) as s:
        made = signin.redeem(s, token, services.clock())
        s.expunge(made.session)
        return made


@post(f"{PREFIX}/sign-in", include_in_schema=False, status_code=303)
async def sign_in(request: Request[Any, Any, Any]) -> Response[Any]:
    """Spend the link (once, atomically) and open the session: the cookie, then the home page."""
    services = services_of(request.app.state)
    form = await request.form()
    nonce = request.cookies.get(SIGN_IN_COOKIE, "")
    if not nonce or not signin.csrf_ok(
        services.settings.secret_key, "sign-in:" + nonce, form.get("csrf")
    ):
        raise PermissionDeniedException(
            "This sign-in form did not carry its security token; open the link again."
        )
    token = str(form.get("token", ""))
    if not _TOKEN_RE.fullmatch(token):
        return _refused("unknown")
    try:
        made = await anyio.to_thread.run_sync(partial(_redeem, services, token))
    except signin.LinkRefused as refused:
        return _refused(refused.reason)
    home = f"{PREFIX}/member" if made.session.role == "member" else f"{PREFIX}/"
    return Redirect(
        path=home,
        status_code=303,
        cookies=[
            _cookie(services, SESSION_COOKIE, made.token),
            _expired_cookie(services, SIGN_IN_COOKIE),
        ],
    )


def _sign_out(services: Services, token: str) -> None:
    with transaction(services.sessions) as s:
        signin.sign_out(s, token, services.clock())


@post(
    f"{PREFIX}/sign-out",
    guards=[signed_in],
    opt=roles(*signin.ROLES),
    sync_to_thread=True,
    include_in_schema=False,
    status_code=200,
)
def sign_out(request: Request[Any, Any, Any]) -> Template:
    """End the session here and in the database; the cookie is dropped."""
    services = services_of(request.app.state)
    _sign_out(services, request.cookies.get(SESSION_COOKIE, ""))
    response = page("signed_out.html", None)
    response.cookies.append(_expired_cookie(services, SESSION_COOKIE))
    return response
