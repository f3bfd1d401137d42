"""Plain text, Markdown, reStructuredText and source code, read incrementally with line numbers.

A file is decoded as it is read (see :mod:`.encoding`), so its size does not matter. Spans hold whole
lines -- at most :data:`~.common.MAX_SPAN_LINES` lines and about :data:`~.common.MAX_SPAN_CHARS`
characters -- with 1-based inclusive ``line_start``/``line_end``; a new span also starts at every section
heading. Each span's text keeps the lines' ``"\\n"`` endings, so joining the spans gives back the file's
text (with universal newlines). A single line longer than the character limit is cut into pieces that
share its line number.

Sections (``Span.section``, the most recent heading):

* Markdown: ATX headings (``# Title``) and setext headings (a line underlined with ``===`` or ``---``
  after a blank line), outside fenced code blocks and YAML/TOML front matter;
* reStructuredText: titles underlined (and optionally overlined) with a repeated punctuation character;
* plain text: book-style chapter lines after a blank line (``CHAPTER IV.``, ``Part Two``, ``PROLOGUE``);
* source code: none.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections import deque
from dataclasses import dataclass
from typing import BinaryIO, Callable, ContextManager, Iterator

from ..errors import InputError
from .base import ReadReport, Span
from .common import LOG, MAX_SPAN_CHARS, MAX_SPAN_LINES, warn
from .encoding import ENCODING_SAMPLE, DecodeStats, describe, detect_encoding, iter_line_pieces
from .sniff import text_kind

_MAX_TITLE = 200


@dataclass(slots=True)
class _Line:
    number: int
    text: str  # a line with its "\n", or a piece of a long line
    title: str | None = None  # a section starts at this line
    code: bool = False  # inside a fenced block / front matter (Markdown)
    heading: bool = False  # part of a heading (title or underline)

    @property
    def bare(self) -> str:
        return self.text.rstrip("\n")

    @property
    def blank(self) -> bool:
        return not self.text.strip()


def _clean_title(text: str) -> str | None:
    title = " ".join(text.split())
    return title if 0 < len(title) <= _MAX_TITLE else None


_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
_SETEXT = re.compile(r"^ {0,3}(?:=+|-{2,})[ \t]*$")
_NOT_PARAGRAPH = re.compile(r"^(?: {4}|\t| {0,3}(?:[-*+][ \t]|\d{1,9}[.)][ \t]|>|\||<))")
_ADORNMENT = re.compile(r"^([!-/:-@\[-`{-~])\1+[ \t]*$")
_CHAPTER = re.compile(
    r"^\s{0,8}(?:(?:CHAPTER|Chapter|BOOK|Book|PART|Part|ACT|Act|VOLUME|Volume)\s+"
    r"(?:[0-9]+|[IVXLCDM]+|[A-Z][a-z]+|[A-Z]+)\b.{0,70}"
    r"|(?:PROLOGUE|Prologue|EPILOGUE|Epilogue|PREFACE|Preface|FOREWORD|Foreword|AFTERWORD|INTRODUCTION)[.:]?)\s*$"
)


class _MarkdownRule:
    def __init__(self) -> None:
        self.fence: str | None = None
        self.front: str | None = None

    def see(self, buf: deque[_Line], ln: _Line) -> None:
        s = ln.bare
        if ln.number == 1 and s.strip() in ("---", "+++"):
            self.front, ln.code = s.strip(), True
            return
        if self.front:
            ln.code = True
            if s.strip() == self.front or (self.front == "---" and s.strip() == "..."):
                self.front = None
            return
        fence = _FENCE.match(s)
        if self.fence:
            ln.code = True
            if fence and fence.group(1)[0] == self.fence[0] and len(fence.group(1)) >= len(self.fence) and not s.strip().strip(self.fence[0]):
                self.fence = None
            return
        if fence:
            self.fence, ln.code = fence.group(1), True
            return
        atx = _ATX.match(s)
        if atx:
            ln.heading, ln.title = True, _clean_title(atx.group(2) or "")
            return
        if _SETEXT.match(s) and buf:
            prev, before = buf[-1], (buf[-2] if len(buf) > 1 else None)
            if (
                not prev.blank and not prev.code and not prev.heading
                and not _NOT_PARAGRAPH.match(prev.bare) and not _SETEXT.match(prev.bare)
                and (before is None or before.blank)
            ):
                title = _clean_title(prev.bare)
                if title:
                    prev.title, prev.heading, ln.heading = title, True, True


class _RstRule:
    def see(self, buf: deque[_Line], ln: _Line) -> None:
        adorn = _ADORNMENT.match(ln.bare)
        if not adorn or not buf:
            return
        prev, before = buf[-1], (buf[-2] if len(buf) > 1 else None)
        title = prev.bare.strip()
        if prev.blank or prev.heading or _ADORNMENT.match(prev.bare):
            return
        width = len(ln.bare.rstrip())
        if width < 4 and len(title) > width:
            return  # docutils treats such short underlines as ordinary text
        overline = before is not None and bool(_ADORNMENT.match(before.bare)) and before.bare[0] == ln.bare[0]
        if not overline and (prev.text[0].isspace() or (before is not None and not before.blank)):
            return
        clean = _clean_title(title)
        if clean:
            start = before if overline else prev
            assert start is not None
            start.title = clean
            for line in (before, prev, ln) if overline else (prev, ln):
                line.heading = True  # type: ignore[union-attr]


class _PlainRule:
    def see(self, buf: deque[_Line], ln: _Line) -> None:
        if (not buf or buf[-1].blank) and len(ln.bare) <= 90 and _CHAPTER.match(ln.bare):
            ln.title = _clean_title(ln.bare)


def _numbered(pieces: Iterator[str]) -> Iterator[_Line]:
    number = 1
    for piece in pieces:
        yield _Line(number, piece)
        if piece.endswith("\n"):
            number += 1


def _mark_sections(lines: Iterator[_Line], kind: str) -> Iterator[_Line]:
    rules = {"markdown": _MarkdownRule, "rst": _RstRule, "text": _PlainRule, "stdin": _PlainRule}
    if kind not in rules:
        yield from lines
        return
    rule = rules[kind]()
    buf: deque[_Line] = deque()
    for ln in lines:
        rule.see(buf, ln)
        buf.append(ln)
        if len(buf) > 2:
            yield buf.popleft()
    yield from buf


def line_spans(pieces: Iterator[str], path: str, kind: str, section: str | None = None) -> Iterator[Span]:
    """Group decoded line pieces into :class:`Span` objects (see the module docstring).

    Parameters
    ----------
    pieces
        From :func:`~.encoding.iter_line_pieces`.
    path
        ``Span.path`` of every span.
    kind
        ``"markdown"``, ``"rst"``, ``"text"``/``"stdin"`` (chapter lines) or anything else (no sections).
    section
        The section of the text before the first heading.
    """
    buf: list[str] = []
    start = end = 0
    size = 0
    for ln in _mark_sections(_numbered(pieces), kind):
        if buf and (
            ln.title is not None
            or (ln.number > end and ln.number - start >= MAX_SPAN_LINES)
            or size + len(ln.text) > MAX_SPAN_CHARS
        ):
            yield Span("".join(buf), path, None, start, end, section)
            buf, size = [], 0
        if ln.title is not None:
            section = ln.title
        if not buf:
            start = ln.number
        buf.append(ln.text)
        size += len(ln.text)
        end = ln.number
    if buf:
        yield Span("".join(buf), path, None, start, end, section)


class TextDocument:
    """A text file (or stream) read lazily in line spans.

    Parameters
    ----------
    name
        Display name used in messages (the path as given).
    opener
        Returns a context manager giving a readable binary stream positioned at the start of the text.
    sample
        The stream's first bytes (up to :data:`~.encoding.ENCODING_SAMPLE`), for encoding detection.
    kind
        ``"text"``, ``"markdown"``, ``"rst"``, ``"code"`` or ``"stdin"``.
    span_path
        ``Span.path`` (defaults to ``name``).
    allow_empty
        Do not raise when the text turns out to be empty or blank (directories skip such files).
    """

    def __init__(
        self,
        name: str,
        opener: Callable[[], ContextManager[BinaryIO]],
        sample: bytes,
        *,
        kind: str = "text",
        span_path: str | None = None,
        allow_empty: bool = False,
    ) -> None:
        self.name = name
        self.kind = kind
        self.report = ReadReport(units=1)
        self.path = span_path if span_path is not None else name
        self.encoding = detect_encoding(sample)
        self.allow_empty = allow_empty
        self._opener = opener
        if self.encoding == "cp1252":
            LOG.info("%s: not UTF-8; decoding as Windows-1252/Latin-1", name)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, name: str | None = None, kind: str | None = None,
             span_path: str | None = None, allow_empty: bool = False) -> "TextDocument":
        """Open a text file: read its first bytes for the encoding; the rest is read by :meth:`spans`."""
        path = os.fspath(path)
        with open(path, "rb") as fh:
            sample = fh.read(ENCODING_SAMPLE)
        return cls(name or path, lambda: open(path, "rb"), sample, kind=kind or text_kind(path),
                   span_path=span_path, allow_empty=allow_empty)

    @classmethod
    def from_stream(cls, stream: BinaryIO, sample: bytes, *, name: str, kind: str = "stdin",
                    span_path: str | None = None) -> "TextDocument":
        """Wrap a one-shot stream (stdin); ``sample`` must be the first bytes that ``stream`` will yield."""
        return cls(name, lambda: contextlib.nullcontext(stream), sample, kind=kind, span_path=span_path)

    def spans(self) -> Iterator[Span]:
        """Yield the text in line spans. Raises :class:`InputError` at the end when it was blank."""
        self.report.__init__(units=1)  # type: ignore[misc]
        stats = DecodeStats()
        visible = False
        with self._opener() as raw:
            for span in line_spans(iter_line_pieces(raw, self.encoding, stats), self.path, self.kind):
                self.report.chars += len(span.text)
                visible = visible or not span.text.isspace()
                yield span
        if stats.replaced:
            what = "UTF-8" if self.encoding.startswith("utf-8") else describe(self.encoding)
            warn(self.report, f"{self.name}: invalid {what} bytes replaced with U+FFFD ({stats.replaced} places)")
        if not visible:
            self.report.units_without_text = 1
            if not self.allow_empty:
                raise InputError(f"{self.name}: the input is empty (no text, only blank lines); give a file with text")
