"""Small helpers shared by the readers: the logger, warnings, one-line messages, span sizing.

Every reader reports problems twice: through ``logging.getLogger("infllm.sources")`` (for ``--debug`` and
log files) and into :attr:`ReadReport.warnings` (for the CLI's summary). :func:`warn` does both. Errors are
raised as :class:`~infllm_cli.errors.InputError` / :class:`~infllm_cli.errors.PdfError` whose message is a
single line; :func:`one_line` flattens third-party reasons (pypdf, zipfile, XML parsers) that may contain
newlines.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Iterable, Iterator

from ..formatting import one_line
from .base import ReadReport

LOG = logging.getLogger("infllm.sources")

MAX_SPAN_LINES = 200
"""A text span holds at most this many source lines ..."""
MAX_SPAN_CHARS = 16 * 1024
"""... and about this many characters (a single longer line is cut into pieces of this size)."""

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def display_path(path: str | bytes | os.PathLike) -> str:
    """A path as it may be shown or given to a model: printable and valid UTF-8, never raising.

    File names are bytes on POSIX; Python keeps undecodable bytes as lone surrogates
    (``surrogateescape``), which cannot be printed or tokenized. They are shown as ``\\xNN`` escapes
    (``caf\\xe9.txt``), as are control characters (a newline in a name becomes ``\\n``). Open files
    with the original path, never with this one.
    """
    text = os.fsdecode(os.fspath(path))
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def warn(report: ReadReport, message: str) -> None:
    """Record a warning: log it on ``infllm.sources`` and append it (one line) to ``report.warnings``."""
    message = one_line(message, limit=500)
    LOG.warning("%s", message)
    report.warnings.append(message)


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
