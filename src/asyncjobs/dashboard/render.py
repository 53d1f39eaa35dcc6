"""Turning pages into HTML: the Jinja environment, its filters, and the headers every page gets.

Templates are autoescaped and strict (an undefined name is an error, not an empty string).
Pages carry no script and load nothing from elsewhere; the Content-Security-Policy says so,
so that even a job's hostile error message cannot run code in the dashboard.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse

from ..clock import to_datetime
from ..monitoring import age, error_line
from .auth import CSRF_FIELD

TEMPLATES = Path(__file__).resolve().parent / "templates"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def utc(value: datetime | float | None, *, ms: bool = False) -> str:
    """A time as ``2026-11-21 10:00:00`` UTC (``-`` for none)."""
    if value is None:
        return "-"
    when = value if isinstance(value, datetime) else to_datetime(value)
    text = when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f" if ms else "%Y-%m-%d %H:%M:%S")
    return text[:-3] if ms else text


def since(value: datetime | float | None, now: float) -> str:
    """How long ago ``value`` was, for people (``-`` for none)."""
    if value is None:
        return "-"
    ts = value.timestamp() if isinstance(value, datetime) else value
    return f"{age(now - ts)} ago"


def pretty(value: Any) -> str:
    return orjson.dumps(value, default=str, option=orjson.OPT_INDENT_2).decode()


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(utc=utc, age=age, pretty=pretty, error_line=error_line)
    env.globals.update(since=since)
    return env


class Renderer:
    """Renders a template with what every page needs (the CSRF field, the current section)."""

    def __init__(self, csrf: str, title: str) -> None:
        self.env = environment()
        self.csrf = csrf
        self.title = title

    def page(
        self,
        request: Request,
        template: str,
        status_code: int = 200,
        *,
        signed_in: bool = True,
        **context: Any,
    ) -> HTMLResponse:
        """``signed_in=False`` for pages anyone may see: no navigation, no CSRF field."""
        html = self.env.get_template(template).render(
            request_path=request.url.path,
            signed_in=signed_in,
            csrf_field=CSRF_FIELD,
            csrf=self.csrf if signed_in else "",
            site_title=self.title,
            **context,
        )
        return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)
