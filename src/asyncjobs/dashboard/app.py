"""``create_app``: the dashboard as an ASGI app, on a store the caller opened and will close."""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ..errors import AsyncJobsError, SchemaNotReadyError, StoreUnavailableError
from ..store.base import Store
from .auth import (
    CHALLENGE,
    LOGIN_PATH,
    CsrfError,
    RequireToken,
    TokenAuth,
    json_unauthorized,
    login_routes,
    safe_next,
    wants_json,
)
from .pages import Pages
from .params import BadRequest, NotFound
from .render import Renderer

log = logging.getLogger("asyncjobs.dashboard")

DEFAULT_TITLE = "asyncjobs"
UNAUTHORIZED = "This dashboard needs its token."


def create_app(store: Store, token: str, *, title: str = DEFAULT_TITLE) -> Starlette:
    """The dashboard for ``store`` (open; the caller closes it), behind ``token``.

    Every request must carry the token (``Authorization: Bearer <token>``) or the session
    cookie the login form sets; others get 401. Raises ``ConfigurationError`` if the token is
    missing or shorter than 16 characters.
    """
    auth = TokenAuth(token)
    renderer = Renderer(auth.csrf, title)
    pages = Pages(store, auth, renderer)

    async def unauthorized(request: Request, problem: str | None, back: str | None) -> Response:
        if wants_json(request):
            return json_unauthorized(problem or UNAUTHORIZED)
        if back is None and request.method == "GET" and request.url.path != LOGIN_PATH:
            back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        response = renderer.page(
            request, "login.html", 401, signed_in=False, problem=problem, next=safe_next(back)
        )
        response.headers["WWW-Authenticate"] = CHALLENGE
        return response

    def error_page(request: Request, status: int, message: str) -> Response:
        if wants_json(request):
            return JSONResponse({"error": message}, status_code=status)
        # Error pages reach anonymous visitors too (on /login): the CSRF field and the
        # navigation only for a request that holds the token.
        return renderer.page(
            request, "error.html", status, signed_in=auth.allowed(request), status=status,
            message=message,
        )  # fmt: skip

    async def bad_request(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BadRequest)
        return error_page(request, 400, exc.message)

    async def not_found(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, NotFound)
        return error_page(request, 404, exc.message)

    async def forbidden(request: Request, exc: Exception) -> Response:
        return error_page(
            request, 403, "This form did not come from this dashboard (its security field is "
            "missing or stale). Go back, reload the page and try again.",
        )  # fmt: skip

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = {404: f"There is no page {request.url.path}.",
                   405: f"{request.method} is not allowed on {request.url.path}."}.get(
            exc.status_code, str(exc.detail))  # fmt: skip
        return error_page(request, exc.status_code, message)

    async def store_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, StoreUnavailableError | SchemaNotReadyError):
            return error_page(request, 503, str(exc))
        log.error("dashboard request %s failed: %s", request.url.path, exc)
        return error_page(request, 500, str(exc))

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("dashboard request %s failed", request.url.path, exc_info=exc)
        return HTMLResponse(
            "<!doctype html><title>500</title><p>The dashboard failed to answer; the reason "
            "is in its log.</p>",
            status_code=500,
        )

    login, logout = login_routes(auth, unauthorized)
    return Starlette(
        routes=[
            Route(LOGIN_PATH, login, methods=["GET", "POST"]),
            Route("/logout", logout, methods=["POST"]),
            *pages.routes(),
        ],
        middleware=[Middleware(RequireToken, auth=auth, unauthorized=unauthorized)],
        exception_handlers={
            BadRequest: bad_request,
            NotFound: not_found,
            CsrfError: forbidden,
            HTTPException: http_error,
            AsyncJobsError: store_error,
            Exception: server_error,
        },
    )
