"""The interactive API docs (``/schema/swagger``) served with their assets from the service
itself: Swagger UI (swagger-ui-dist 5.18.2 from npm, vendored in ``api/static/swagger-ui/``
with its licence) and a small start-up script, nothing from a CDN, no inline script.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from litestar import Request, Router
from litestar.datastructures import CacheControlHeader
from litestar.openapi.plugins import OpenAPIRenderPlugin
from litestar.static_files import create_static_files_router

STATIC_DIR = Path(__file__).parent / "static"
ASSETS_PATH = "/schema/assets"
#: The vendored Swagger UI's version (api/static/swagger-ui/, from the npm package).
SWAGGER_UI_VERSION = "5.18.2"


class LocalSwaggerPlugin(OpenAPIRenderPlugin):
    """Swagger UI from this service's own files (``/schema/swagger``)."""

    def __init__(self, path: str = "/swagger") -> None:
        super().__init__(path=path)

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        """The page: the vendored stylesheet and bundle, then the start-up script."""
        title = escape(str(openapi_schema["info"]["title"]))
        return (
            "<!DOCTYPE html><html><head>"
            f"<title>{title}</title>"
            '<meta charset="utf-8"><meta name="viewport" content="width=device-width, '
            'initial-scale=1">'
            f'<link rel="stylesheet" href="{ASSETS_PATH}/swagger-ui/swagger-ui.css">'
            "</head><body>"
            '<div id="swagger-ui"></div>'
            f'<script src="{ASSETS_PATH}/swagger-ui/swagger-ui-bundle.js"></script>'
            f'<script src="{ASSETS_PATH}/swagger-init.js"></script>'
            "</body></html>"
        ).encode()


def assets_router() -> Router:
    """``/schema/assets/...``: the docs page's scripts and stylesheet, cached a day."""
    return create_static_files_router(
        path=ASSETS_PATH,
        directories=[STATIC_DIR],
        name="docs-assets",
        cache_control=CacheControlHeader(max_age=86400, public=True),
        include_in_schema=False,
    )
