"""Text for people: one-line messages and human-readable sizes, shared by every layer."""

from __future__ import annotations

import re

_WS = re.compile(r"\s+")


def one_line(text: object, limit: int = 300) -> str:
    """Collapse all whitespace (newlines included) of ``text`` to single spaces and cap its length.

    Parameters
    ----------
    text
        Anything; ``str()`` is applied (exceptions give their message).
    limit
        Longest result; longer text is cut and ends with ``...``.

    Returns
    -------
    str
        A single line, never empty (an exception without a message gives its type name, anything else
        ``"unknown error"``).
    """
    flat = _WS.sub(" ", str(text)).strip()
    if not flat:
        flat = type(text).__name__ if isinstance(text, BaseException) else "unknown error"
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def human_bytes(n: int | None) -> str:
    """``1536`` -> ``"1.5 KiB"``; ``None`` -> ``"unknown"``."""
    if n is None:
        return "unknown"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover
