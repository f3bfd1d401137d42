"""Small helpers shared by the readers: the logger, warnings, one-line messages, span sizing.

Every reader reports problems twice: through ``logging.getLogger("infllm.sources")`` (for ``--debug`` and
log files) and into :attr:`ReadReport.warnings` (for the CLI's summary). :func:`warn` does both. Errors are
raised as :class:`~infllm_cli.errors.InputError` / :class:`~infllm_cli.errors.PdfError` whose message is a
single line; :func:`one_line` flattens third-party reasons (pypdf, zipfile, XML parsers) that may contain
newlines.
"""

from __future__ import annotations

import logging
import re
from typing import Iterable, Iterator

from .base import ReadReport

LOG = logging.getLogger("infllm.sources")

MAX_SPAN_LINES = 200
"""A text span holds at most this many source lines ..."""
MAX_SPAN_CHARS = 16 * 1024
"""... and about this many characters (a single longer line is cut into pieces of this size)."""

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
        A single line, never empty for a non-empty input (``"unknown error"`` otherwise).
    """
    flat = _WS.sub(" ", str(text)).strip()
    if not flat:
        flat = type(text).__name__ if isinstance(text, BaseException) else "unknown error"
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def warn(report: ReadReport, message: str) -> None:
    """Record a warning: log it on ``infllm.sources`` and append it (one line) to ``report.warnings``."""
    message = one_line(message, limit=500)
    LOG.warning("%s", message)
    report.warnings.append(message)


def human_bytes(n: int) -> str:
    """``1536`` -> ``"1.5 KiB"``; used in size-limit messages."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def chunk_paragraphs(lines: Iterable[str], max_chars: int = MAX_SPAN_CHARS) -> Iterator[str]:
    """Group lines (without newlines) into texts of at most about ``max_chars`` characters.

    Lines are joined with ``"\\n"``; a single line longer than ``max_chars`` is cut at a space near the
    limit when there is one (hard cut otherwise). Used by the readers whose text has no line numbers
    (HTML, EPUB).
    """
    buf: list[str] = []
    size = 0
    for line in lines:
        while len(line) > max_chars:
            cut = line.rfind(" ", max_chars // 2, max_chars)
            cut = cut if cut > 0 else max_chars
            if buf:
                yield "\n".join(buf) + "\n"
                buf, size = [], 0
            yield line[:cut] + "\n"
            line = line[cut:].lstrip(" ")
        if buf and size + len(line) + 1 > max_chars:
            yield "\n".join(buf) + "\n"
            buf, size = [], 0
        buf.append(line)
        size += len(line) + 1
    if buf:
        yield "\n".join(buf) + "\n"
