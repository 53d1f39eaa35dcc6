"""The web dashboard (``pip install 'asyncjobs[dashboard]'``): server-rendered pages over a store.

- ``create_app(store, token)``: the ASGI app, to mount or serve as you like;
- ``serve(store, token, host, port)``: serve it with uvicorn inside the running event loop
  (``asyncjobs dashboard`` does, and so can a node), until cancelled.

The names load on first use, so ``asyncjobs`` itself never needs the extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app
    from .server import serve

__all__ = ["create_app", "serve"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "serve":
        from .server import serve

        return serve
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
