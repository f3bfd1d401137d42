"""The contract every source reader fulfils: text in spans, each with its provenance.

A :class:`Document` is read lazily: :meth:`Document.spans` yields :class:`Span` objects in reading order
(page by page, file by file) so that a whole book is never held twice in memory. Sections (PDF outline,
Markdown/RST/HTML headings, EPUB chapters, repository files) are reported through ``Span.section`` so that
``summarize`` can group spans without a second representation of the text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol


def format_location(path: str, page: int | None, line_start: int | None, line_end: int | None) -> str:
    """``path``, `` p.PAGE`` when paged, ``:START-END`` (or ``:LINE``) when lines are known."""
    where = path
    if page is not None:
        where += f" p.{page}"
    if line_start is not None:
        where += f":{line_start}" + (f"-{line_end}" if line_end not in (None, line_start) else "")
    return where


@dataclass(frozen=True)
class Span:
    """A piece of text and where it came from.

    ``path`` is the file (relative to the repository root for directories, ``-`` for stdin);
    ``page`` is 1-based for PDFs, else ``None``; ``line_start``/``line_end`` are 1-based inclusive line
    numbers in the source file where that makes sense (text, code, Markdown), else ``None``;
    ``section`` is the title of the innermost enclosing section, if the format has structure;
    ``last_section``, when set, is the section in force at the end of the span where several start inside
    it (a PDF page holding several outline entries), so that a part can be titled "<first> … <last>".
    """

    text: str
    path: str
    page: int | None = None
    line_start: int | None = None
    line_end: int | None = None
    section: str | None = None
    last_section: str | None = None

    def location(self) -> str:
        """Human-readable provenance, e.g. ``book.pdf p.12`` or ``src/a.py:10-42``."""
        return format_location(self.path, self.page, self.line_start, self.line_end)


@dataclass
class ReadReport:
    """What reading found, filled in while spans are produced: pages without text, warnings, skipped files."""

    units: int = 0  # pages (PDF), files (directory), chapters (EPUB), 1 otherwise
    units_without_text: int = 0
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    chars: int = 0


class Document(Protocol):
    """A source opened for reading."""

    name: str  # display name: the path as given, or "<stdin>"
    kind: str  # "pdf", "text", "markdown", "rst", "html", "epub", "code", "directory", "stdin"
    report: ReadReport

    def spans(self) -> Iterator[Span]:
        """Yield the text in reading order. Raises :class:`infllm_cli.errors.InputError` (or a subclass)
        with a one-line message when the input is unusable."""
        ...
