"""Who may see the dashboard: whoever holds its token, sent as a header or exchanged at a form.

- ``Authorization: Bearer <token>``, for scripts and proxies. Their POSTs need no CSRF field:
  a browser never adds that header to a request on its own.
- ``POST /login`` with the token sets a session cookie (HttpOnly, SameSite=Strict) holding an
  HMAC of the token, never the token itself. A form posted with that cookie must carry the
  CSRF field, another HMAC of the token, which only the dashboard's own pages contain.

Changing the token ends every session. Comparisons use ``hmac.compare_digest``. A request
that proves nothing gets 401: the login form for a browser, JSON for a client asking for it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import ConfigurationError
from .defaults import TOKEN_ENV
from .params import BadRequest

MIN_TOKEN_CHARS = 16  # shorter tokens can be guessed; `secrets.token_urlsafe()` makes 43
COOKIE = "asyncjobs_session"
CSRF_FIELD = "csrf"
LOGIN_PATH = "/login"
MAX_FORM_BYTES = 8192  # the dashboard's forms hold a token, a CSRF field and a path
MAX_FORM_FIELDS = 10
CHALLENGE = 'Bearer realm="asyncjobs"'  # the WWW-Authenticate header of a 401
MAKE_ONE = "python -c 'import secrets; print(secrets.token_urlsafe())'"

# (request, the problem to show or None, where to go after logging in or None)
Unauthorized = Callable[[Request, str | None, str | None], Awaitable[Response]]


def check_token(token: str | None) -> str:
    """Return the token if it may protect a dashboard; raise ``ConfigurationError`` if not."""
    if not token:
        raise ConfigurationError(
            "dashboard_token",
            None,
            f"the dashboard needs a token: pass --token or set {TOKEN_ENV} (make one with "
            f"{MAKE_ONE})",
        )
    if len(token) < MIN_TOKEN_CHARS or token != token.strip():
        raise ConfigurationError(
            "dashboard_token",
            "(hidden)",
            f"it has {len(token)} characters; use at least {MIN_TOKEN_CHARS}, without spaces "
            f"around them (make one with {MAKE_ONE})",
        )
    return token


class TokenAuth:
    """Checks a request's header or cookie, and a form's CSRF field, against one token."""

    def __init__(self, token: str) -> None:
        secret = check_token(token).encode()
        self._token = secret
        self.session = _derive(secret, b"asyncjobs dashboard session")
        self.csrf = _derive(secret, b"asyncjobs dashboard csrf")

    def token_matches(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self._token)

    def by_header(self, conn: HTTPConnection) -> bool:
        scheme, _, value = conn.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.token_matches(value.strip())

    def by_cookie(self, conn: HTTPConnection) -> bool:
        return hmac.compare_digest(conn.cookies.get(COOKIE, "").encode(), self.session.encode())

    def allowed(self, conn: HTTPConnection) -> bool:
        return self.by_header(conn) or self.by_cookie(conn)

    def csrf_ok(self, request: Request, form: dict[str, str]) -> bool:
        """A form from a cookie session must carry the CSRF field; a header needs none."""
        if self.by_header(request):
            return True
        return hmac.compare_digest(form.get(CSRF_FIELD, "").encode(), self.csrf.encode())

    def set_session(self, response: Response, request: Request) -> None:
        response.set_cookie(
            COOKIE,
            self.session,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )


def _derive(secret: bytes, purpose: bytes) -> str:
    return hmac.new(secret, purpose, hashlib.sha256).hexdigest()


class RequireToken:
    """ASGI middleware: every request but the login form's must prove it holds the token."""

    def __init__(self, app: ASGIApp, auth: TokenAuth, unauthorized: Unauthorized) -> None:
        self.app = app
        self.auth = auth
        self.unauthorized = unauthorized

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] != LOGIN_PATH:
            request = Request(scope, receive)
            if not self.auth.allowed(request):
                response = await self.unauthorized(request, None, None)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def wants_json(conn: HTTPConnection) -> bool:
    accept = conn.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def json_unauthorized(message: str) -> Response:
    return JSONResponse(
        {"error": message}, status_code=401, headers={"WWW-Authenticate": CHALLENGE}
    )


async def read_form(request: Request) -> dict[str, str]:
    """The first value of each field of a small urlencoded form; ``BadRequest`` otherwise."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise BadRequest(f"the form is over {MAX_FORM_BYTES} bytes; the dashboard's are not")
    try:
        fields = parse_qs(
            body.decode(), keep_blank_values=True, strict_parsing=False,
            max_num_fields=MAX_FORM_FIELDS,
        )  # fmt: skip
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("the form could not be read (it is not a small urlencoded form)") from None
    return {key: values[0] for key, values in fields.items()}


def safe_next(value: str | None) -> str:
    """Where to go after logging in: a path of this site, never another site."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"


def login_routes(auth: TokenAuth, unauthorized: Unauthorized) -> tuple[
    Callable[[Request], Awaitable[Response]], Callable[[Request], Awaitable[Response]]
]:  # fmt: skip
    """The handlers of ``/login`` (GET shows the form, POST checks the token) and ``/logout``."""

    async def login(request: Request) -> Response:
        if request.method == "GET":
            if auth.allowed(request):
                return RedirectResponse(safe_next(request.query_params.get("next")), 303)
            return await unauthorized(request, None, request.query_params.get("next"))
        form = await read_form(request)
        if not auth.token_matches(form.get("token", "")):
            problem = "That token is not the dashboard's token."
            return await unauthorized(request, problem, form.get("next"))
        response = RedirectResponse(safe_next(form.get("next")), 303)
        auth.set_session(response, request)
        return response

    async def logout(request: Request) -> Response:
        form = await read_form(request)
        if not auth.csrf_ok(request, form):
            raise CsrfError
        response = RedirectResponse(LOGIN_PATH, 303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    return login, logout


class CsrfError(Exception):
    """A form sent with the session cookie lacks the right CSRF field (a page from another
    site, or one older than the token): 403."""
