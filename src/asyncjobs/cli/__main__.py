"""``python -m asyncjobs.cli ...``: the same as the ``asyncjobs`` command."""

from __future__ import annotations

from . import main

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
