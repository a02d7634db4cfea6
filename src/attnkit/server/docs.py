"""The OpenAPI document and the interactive docs, offline.

* Request-body schemas of the routes are ``$ref`` s into ``components/schemas``, where every model
  and the models they use are registered (pydantic's ``$defs`` references would point nowhere there).
* ``/docs`` serves Swagger UI from the ``swagger-ui-bundle`` package (part of the ``server`` extra)
  under ``/docs/assets``, so it works without a CDN; without that package ``/docs`` is a short page that
  links ``/openapi.json``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

__all__ = ["ref", "install_docs", "install_openapi", "ASSETS_PATH"]

ASSETS_PATH = "/docs/assets"


def ref(model: type[BaseModel]) -> dict[str, str]:
    """A JSON-schema reference to ``model`` in the OpenAPI components."""
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def install_openapi(app: FastAPI, models: list[type[BaseModel]]) -> None:
    """Make ``app.openapi()`` register ``models`` (and what they use) under ``components/schemas``."""
    from fastapi.openapi.utils import get_openapi
    from pydantic.json_schema import models_json_schema

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary, description=app.description, routes=app.routes)
        _, defs = models_json_schema([(m, "validation") for m in models], ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, body in defs.get("$defs", {}).items():
            components.setdefault(name, body)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_docs(app: FastAPI, title: str) -> None:
    """``/docs`` with Swagger UI served from the ``swagger-ui-bundle`` package."""
    try:
        import swagger_ui_bundle
    except ImportError:
        swagger_ui_bundle = None

    if swagger_ui_bundle is not None:
        from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
        from starlette.staticfiles import StaticFiles

        app.mount(ASSETS_PATH, StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger-ui-assets")

        @app.get("/docs", include_in_schema=False)
        async def docs() -> HTMLResponse:
            return get_swagger_ui_html(
                openapi_url="/openapi.json", title=f"{title} - API docs", oauth2_redirect_url="/docs/oauth2-redirect",
                swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js", swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
                swagger_favicon_url=f"{ASSETS_PATH}/favicon-32x32.png",
            )  # fmt: skip

        @app.get("/docs/oauth2-redirect", include_in_schema=False)
        async def oauth2_redirect() -> HTMLResponse:
            return get_swagger_ui_oauth2_redirect_html()

    else:

        @app.get("/docs", include_in_schema=False)
        async def docs_plain() -> HTMLResponse:
            return HTMLResponse(
                f"<!doctype html><title>{title} API</title><p>Install <code>swagger-ui-bundle</code> "
                "(<code>pip install 'attnkit[server]'</code>) for the interactive docs. The API is described by "
                '<a href="/openapi.json">/openapi.json</a>.</p>'
            )
