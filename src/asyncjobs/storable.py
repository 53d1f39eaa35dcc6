"""What Postgres can store in a text column: valid UTF-8 without NUL characters.

Postgres's text and jsonb cannot hold U+0000, and asyncpg cannot encode a lone surrogate. A
statement that carries either fails whole, with every other row in it, so such text is refused
where it enters (names, keys, reasons) or, for error texts that must be kept, made storable.
"""

from __future__ import annotations

NUL = "\x00"
NUL_REPLACEMENT = "\N{REPLACEMENT CHARACTER}"
NUL_NOTE = " [asyncjobs replaced NUL characters (U+0000) with U+FFFD: Postgres cannot store them]"


def text_problem(text: str) -> str | None:
    """Why Postgres cannot store ``text`` in a text column, as a clause, or None."""
    if NUL in text:
        return "it holds a NUL character (U+0000), which Postgres cannot store"
    if not is_utf8(text):
        return f"it holds a lone surrogate ({surrogate_in(text)!r}), which is not valid UTF-8"
    return None


def storable_text(text: str) -> str:
    """``text`` as Postgres can store it: NUL characters replaced (with a note saying so), and
    lone surrogates written as escapes. For error messages and tracebacks, which are kept, not
    refused."""
    if NUL in text:
        text = text.replace(NUL, NUL_REPLACEMENT) + NUL_NOTE
    try:
        text.encode()
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode()
    return text


def is_utf8(text: str) -> bool:
    """Whether ``text`` encodes to UTF-8 (it holds no lone surrogate)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def surrogate_in(text: str) -> str:
    """The first lone surrogate in ``text`` (which must hold one)."""
    return next(c for c in text if "\ud800" <= c <= "\udfff")
