"""The OpenAPI page at /docs, served from this app's own files so it works with no internet access.

FastAPI's default /docs loads Swagger UI from a CDN, which is blank on a locked-down workspace or a laptop
offline. This is FastAPI's documented self-hosting recipe ("Custom Docs UI Static Assets"): the app is
created with ``docs_url=None`` and this route serves the same page with Swagger UI from
``web/static/vendor/swagger-ui`` (vendored from npm; versions and updating: static/vendor/README.md). The online
spec validator badge is turned off, so the page makes no request outside the app.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

SWAGGER_UI = "/static/vendor/swagger-ui"  # app.py mounts web/static at /static


def install_docs(app: FastAPI, path: str = "/docs") -> None:
    """Serve Swagger UI for ``app.openapi_url`` at ``path`` from the vendored assets."""
    openapi_url = app.openapi_url or "/openapi.json"

    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} API",
            swagger_js_url=f"{SWAGGER_UI}/swagger-ui-bundle.js",
            swagger_css_url=f"{SWAGGER_UI}/swagger-ui.css",
            swagger_favicon_url=f"{SWAGGER_UI}/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},
        )

    app.add_api_route(path, swagger_ui, methods=["GET"], include_in_schema=False)
