"""The operator's console: one static page over the admin API, served at ``/console``.

The page holds no data and no secret: the admin token is posted once to ``/console/login``
(``gateway.server.console.login``), which sets an ``HttpOnly``, ``SameSite=Strict`` session cookie
(a random id, ``gateway.server.console.sessions``); every state-changing request also carries the
session's CSRF token and its own Origin. Live decisions come as server-sent events
(``/console/events``). Everything is served from the package: no external asset, a strict
Content-Security-Policy (scripts only from this origin, no inline script, Trusted Types
required so that no string can ever become HTML), and the Host/Origin checks of the MCP
endpoint against DNS rebinding.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from litestar import Request, Response, get

from gateway.pipeline.gateway import Gateway
from gateway.server.console.login import login_handlers
from gateway.server.console.origin import refusal

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "
    "require-trusted-types-for 'script'; trusted-types 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
_ASSETS = {
    "console": ("index.html", "text/html"),
    "app.js": ("app.js", "text/javascript"),
    "app.css": ("app.css", "text/css"),
    "favicon.svg": ("favicon.svg", "image/svg+xml"),
}


def _load() -> dict[str, tuple[bytes, str]]:
    static = files("gateway.server.console") / "static"
    return {name: (static.joinpath(f).read_bytes(), kind) for name, (f, kind) in _ASSETS.items()}


def console_handlers(gateway: Gateway) -> list[Any]:
    """Route handlers for ``/console`` and its assets (read once, here)."""
    assets = _load()

    def serve(name: str, request: Request[Any, Any, Any]) -> Response[bytes]:
        refused = refusal(gateway, request.headers.get("host"), request.headers.get("origin"))
        if refused is not None:
            status, text = refused
            return Response(text.encode(), status_code=status, media_type="text/plain")
        body, kind = assets[name]
        return Response(body, media_type=kind, headers=_HEADERS)

    @get("/console", sync_to_thread=False, include_in_schema=False)
    def page(request: Request[Any, Any, Any]) -> Response[bytes]:
        return serve("console", request)

    @get("/console/app.js", sync_to_thread=False, include_in_schema=False)
    def script(request: Request[Any, Any, Any]) -> Response[bytes]:
        return serve("app.js", request)

    @get("/console/app.css", sync_to_thread=False, include_in_schema=False)
    def style(request: Request[Any, Any, Any]) -> Response[bytes]:
        return serve("app.css", request)

    @get("/console/favicon.svg", sync_to_thread=False, include_in_schema=False)
    def icon(request: Request[Any, Any, Any]) -> Response[bytes]:
        return serve("favicon.svg", request)

    return [page, script, style, icon, *login_handlers(gateway)]
