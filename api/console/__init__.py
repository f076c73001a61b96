"""The web console, served by the service itself at ``/console`` (docs/console.md).

Server-rendered pages (Jinja2 templates, :data:`~api.console.web.TEMPLATE_CONFIG`), one
stylesheet served from here, no script needed and nothing from another origin. Sign-in is by
single-use link (:mod:`partners.signin`); every action calls the same domain functions as the
API and is recorded in the same audit log.
"""

from __future__ import annotations

from litestar import Router
from litestar.datastructures import CacheControlHeader
from litestar.static_files import create_static_files_router

from api.console.member import MemberPage
from api.console.partner_view import PartnerPages
from api.console.payments import PaymentPages
from api.console.staff import StaffPages
from api.console.statements import StatementPages
from api.console.web import (
    EXCEPTION_HANDLERS,
    STATIC,
    TEMPLATE_CONFIG,
    sign_in,
    sign_in_page,
    sign_out,
)

__all__ = ["TEMPLATE_CONFIG", "console_router"]

ASSETS_PATH = "/console/assets"


def console_router() -> Router:
    """Every console route (none of them in the OpenAPI document), with its HTML error pages."""
    return Router(
        path="/",
        route_handlers=[
            sign_in_page,
            sign_in,
            sign_out,
            StaffPages,
            StatementPages,
            PaymentPages,
            PartnerPages,
            MemberPage,
            create_static_files_router(
                path=ASSETS_PATH,
                directories=[STATIC],
                name="console-assets",
                cache_control=CacheControlHeader(max_age=3600, public=True),
                include_in_schema=False,
            ),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        include_in_schema=False,
    )
