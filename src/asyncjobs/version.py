"""The installed version of asyncjobs (``asyncjobs.__version__``), in a module of its own so
that the parts that report it (a node's row) need not import the whole package."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("asyncjobs")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
