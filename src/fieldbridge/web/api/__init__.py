"""The REST API (/api/v1/...): what the CLI does, over HTTP, with an OpenAPI document."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from fieldbridge import __version__
from fieldbridge.web.api import admin, devices, downlinks, quarantine, readings, service, sinks
from fieldbridge.web.api.deps import CONTEXT_KEY
from fieldbridge.web.api.errors import documented, install
from fieldbridge.web.api.limits import BodyLimit
from fieldbridge.web.context import WebContext

SWAGGER_UI = Path(__file__).resolve().parent.parent / "static" / "vendor" / "swagger-ui"
DESCRIPTION = """\
Everything the `fieldbridge` command line does, over HTTP (docs/api.md).

Scripts send `Authorization: Bearer <token>` (`fieldbridge tokens create --name NAME --scope
read|write`); a browser logged in at /login sends its session cookie, and the `X-CSRF-Token`
header of its session on every change. Lists come in pages: pass `next_cursor` as `cursor`.
Times are ISO 8601 UTC. Every error is `{"error": {"code", "message", "details"}}`.
"""


def api_app(ctx: WebContext, *, root_path: str = "/api") -> FastAPI:
    """The API as an app to mount at `root_path`: its routes are /v1/..., its OpenAPI
    document /openapi.json and its docs page /docs inside it."""
    app = FastAPI(
        title="fieldbridge",
        version=__version__,
        description=DESCRIPTION,
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
        responses=documented(400, 401, 503),
    )
    setattr(app.state, CONTEXT_KEY, ctx)
    install(app)
    app.add_middleware(BodyLimit)
    for module in (devices, readings, sinks, quarantine, downlinks, service, admin):
        app.include_router(module.router)
    app.mount("/static/swagger-ui", StaticFiles(directory=SWAGGER_UI), name="swagger-ui")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                servers=[{"url": root_path}],
            )
            schema.setdefault("components", {})["securitySchemes"] = {
                "token": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "fieldbridge_session"},
            }
            schema["security"] = [{"token": []}, {"session": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=f"{root_path}/openapi.json",
            title="fieldbridge API",
            swagger_js_url=f"{root_path}/static/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{root_path}/static/swagger-ui/swagger-ui.css",
            swagger_favicon_url=f"{root_path}/static/swagger-ui/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},
        )

    return app
