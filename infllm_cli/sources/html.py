"""HTML (and the XHTML of EPUB chapters): the visible text, with headings as sections.

Uses the standard library's :class:`html.parser.HTMLParser`, fed incrementally. ``<script>``, ``<style>``,
``<noscript>``, ``<template>``, ``<svg>`` and comments are dropped; character references are decoded;
block elements (paragraphs, list items, table rows, divs, headings...) end lines, paragraph-like ones
leave a blank line; whitespace is collapsed except inside ``<pre>``; list items start with ``- `` and
table cells are separated by `` | ``. ``<h1>``-``<h6>`` start sections; the text before the first heading
belongs to the ``initial_section`` given by the caller (EPUB: the table-of-contents title) or else to the
document's ``<title>``. HTML spans carry no line numbers.

Limits (the standard parser rescans an unfinished construct at every piece it is fed, which makes a
32 MB attribute value or unclosed comment take minutes): a tag, comment or declaration longer than
:data:`MAX_MARKUP_CHARS` is dropped with a warning (an unclosed comment then runs to the end of the page,
as in a browser), and parsing stops with a warning after :data:`MAX_TAGS` tags.
"""

from __future__ import annotations

import os
import re
from html.parser import HTMLParser
from typing import BinaryIO, Callable, ContextManager, Iterator

from ..errors import InputError
from .base import ReadReport, Span
from .common import MAX_SPAN_CHARS, chunk_paragraphs, warn
from .encoding import ENCODING_SAMPLE, DecodeStats, check_codec, describe, detect_encoding, iter_line_pieces

_SKIP = frozenset({"script", "style", "noscript", "template", "svg"})
_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
_PARAGRAPH = frozenset(
    "p blockquote pre hr table figure ul ol dl section article aside header footer nav main address "
    "details form fieldset".split()
) | _HEADINGS
_LINE = frozenset("br li dt dd tr div caption figcaption summary option legend body html center hgroup".split())
MAX_MARKUP_CHARS = 1024 * 1024
"""A single tag, comment or declaration longer than this many characters is dropped (with a warning)."""
MAX_TAGS = 500_000
"""Parsing stops after this many tags (a few seconds of work; a long novel has ~100,000)."""
FEED_CHARS = 64 * 1024
"""The parser is fed at least this many characters at a time."""
_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)|<\?xml[^>]+encoding\s*=\s*["']([A-Za-z0-9._:-]+)""", re.I)


def declared_charset(head: bytes) -> str | None:
    """The charset named by ``<meta charset>``, ``<meta http-equiv=Content-Type>`` or an XML prolog."""
    match = _CHARSET.search(head[:4096])
    if not match:
        return None
    return (match.group(1) or match.group(2)).decode("ascii", "ignore")


class HtmlExtractor(HTMLParser):
    """Incremental HTML-to-text converter: :meth:`feed` markup, then :meth:`pop_blocks` the finished
    ``(section, lines)`` blocks; :meth:`close` finishes the last one."""

    def __init__(self, initial_section: str | None = None) -> None:
        super().__init__(convert_charrefs=True)
        self._section = initial_section
        self._initial = initial_section
        self._lines: list[str] = []
        self._size = 0  # characters in self._lines
        self._line: list[str] = []
        self._space = False
        self._skip: list[str] = []
        self._pre = 0
        self._heading: list[str] | None = None
        self._title: list[str] | None = None
        self._seen_heading = False
        self._cells = 0
        self._ready: list[tuple[str | None, list[str]]] = []
        self.title: str | None = None
        self.notes: list[str] = []  # limits reached, for the reader's warnings
        self._tags = 0
        self._until: str | None = None  # dropping an over-long construct up to this marker
        self._stopped = False

    # -- bounded feeding ------------------------------------------------------------------------------
    def feed(self, data: str) -> None:
        """Parse more markup (see the module docstring for the limits)."""
        if self._stopped:
            return
        if self._until is not None:
            data = self._tail + data
            end = data.find(self._until)
            if end < 0:
                self._tail = data[-len(self._until):]
                return
            data, self._until = data[end + len(self._until):], None
        super().feed(data)
        pending = self.rawdata
        if len(pending) > MAX_MARKUP_CHARS:
            if self.cdata_elem is not None:  # <script>/<style> contents: dropped anyway
                self.rawdata = ""
                return
            what, self._until = ("comment", "-->") if pending.startswith("<!--") else \
                ("CDATA section", "]]>") if pending.startswith("<![CDATA[") else ("tag", ">")
            self.notes.append(f"a {what} longer than {MAX_MARKUP_CHARS:,} characters was dropped")
            self.rawdata, self._tail = "", ""

    def close(self) -> None:
        """Finish parsing; the last block becomes available from :meth:`pop_blocks`."""
        if self._until is not None or self._stopped:
            self.rawdata = ""
        super().close()
        self._break()
        self._close_block()

    def _count_tag(self) -> None:
        self._tags += 1
        if self._tags > MAX_TAGS and not self._stopped:
            self._stopped = True
            self.notes.append(f"more than {MAX_TAGS:,} tags; the rest of the page was not read")

    # -- output helpers -------------------------------------------------------------------------------
    def _flush_line(self) -> None:
        if self._line == ["-"]:
            return  # a list item's marker waits for the item's text (``<li><p>text</p></li>``)
        text = "".join(self._line)
        text = text.rstrip() if self._pre else text.strip()
        if text:
            self._lines.append(text)
            self._size += len(text) + 1
        self._line, self._space = [], False

    def _break(self, blank: bool = False) -> None:
        self._flush_line()
        if blank and self._lines and self._lines[-1] != "":
            self._lines.append("")

    def _close_block(self) -> None:
        lines = self._lines
        while lines and lines[-1] == "":
            lines.pop()
        start = 0
        while start < len(lines) and lines[start] == "":
            start += 1
        if start < len(lines):
            self._ready.append((self._section, lines[start:]))
        self._lines, self._size = [], 0

    def _inline(self, data: str) -> None:
        words = data.split()
        if not words:
            self._space = self._space or bool(data and self._line)
            return
        if self._line and (self._space or data[0].isspace()):
            self._line.append(" ")
        self._line.append(" ".join(words))
        self._space = data[-1].isspace()
        if self._heading is not None:
            self._heading.append(" ".join(words))

    # -- parser callbacks -----------------------------------------------------------------------------
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._count_tag()
        if self._stopped:
            return
        if tag in _SKIP:
            self._skip.append(tag)
            return
        if self._skip:
            return
        if self._title is not None and tag != "title":  # an unclosed <title> ends at the next element
            self.handle_endtag("title")
        if tag == "title" and self.title is None:
            self._title = []
        elif tag in _HEADINGS:
            self._break(blank=True)
            self._close_block()
            self._heading = []
        elif tag in _PARAGRAPH or tag in _LINE:
            self._break(blank=tag in _PARAGRAPH)
            if tag == "pre":
                self._pre += 1
            elif tag == "li":
                self._line, self._space = ["-"], True
            elif tag == "tr":
                self._cells = 0
        elif tag in ("td", "th"):
            if self._cells:
                self._line.append(" |")
                self._space = True
            self._cells += 1

    def handle_endtag(self, tag: str) -> None:
        self._count_tag()
        if self._stopped:
            return
        if tag in _SKIP:
            if tag in self._skip:
                while self._skip.pop() != tag:
                    pass
            return
        if self._skip:
            return
        if tag == "title" and self._title is not None:
            self.title = " ".join(" ".join(self._title).split()) or None
            self._title = None
            if self._initial is None and not self._seen_heading and self.title:
                self._section = self.title
        elif tag in _HEADINGS and self._heading is not None:
            self._break(blank=True)
            title = " ".join(" ".join(self._heading).split())
            if title:
                self._section, self._seen_heading = title, True
            self._heading = None
        elif tag in _PARAGRAPH or tag in _LINE:
            self._break(blank=tag in _PARAGRAPH)
            if tag == "pre" and self._pre:
                self._pre -= 1

    def handle_data(self, data: str) -> None:
        if self._skip or self._stopped:
            return
        if self._title is not None:
            self._title.append(data)
        elif self._pre:
            first, *rest = data.split("\n")
            self._line.append(first)
            for part in rest:
                self._flush_line()
                self._line.append(part)
        else:
            self._inline(data)

    def pop_blocks(self) -> list[tuple[str | None, list[str]]]:
        """The blocks finished so far (each ``(section, lines)``, blank lines kept as ``""``).

        A long section is handed out in parts of about :data:`~.common.MAX_SPAN_CHARS` characters, so
        that a huge page without headings is never held whole.
        """
        if self._size >= MAX_SPAN_CHARS and self._heading is None:
            self._close_block()
        ready, self._ready = self._ready, []
        return ready


def html_to_text(markup: str) -> list[tuple[str | None, str]]:
    """Convert a whole HTML string to ``[(section, text), ...]`` (a convenience for small inputs)."""
    parser = HtmlExtractor()
    parser.feed(markup)
    parser.close()
    return [(section, "\n".join(lines)) for section, lines in parser.pop_blocks()]


class HtmlDocument:
    """An HTML file (or EPUB chapter), read lazily: one or more spans per section.

    Parameters
    ----------
    name
        Display name for messages.
    opener
        Returns a context manager giving the raw bytes as a readable binary stream.
    sample
        The first bytes, for the encoding (byte-order mark, ``<meta charset>``, UTF-8 check).
    span_path
        ``Span.path`` (defaults to ``name``).
    initial_section
        Section of the text before the first heading (else the ``<title>``).
    allow_empty
        Do not raise when the page has no visible text (EPUB chapters such as cover images).
    """

    kind = "html"

    def __init__(self, name: str, opener: Callable[[], ContextManager[BinaryIO]], sample: bytes, *,
                 span_path: str | None = None, initial_section: str | None = None, allow_empty: bool = False) -> None:
        self.name = name
        self.report = ReadReport(units=1)
        self.path = span_path if span_path is not None else name
        declared = declared_charset(sample)
        _, problem = check_codec(declared)
        # an unknown or non-text charset (rot-13, base64, idna...) is ignored: the bytes decide
        self.encoding = detect_encoding(sample, None if problem else declared)
        self._charset_warning = f"{name}: ignoring the declared charset ({problem}); decoding as {describe(self.encoding)} (detected)" if problem else None
        self.initial_section = initial_section
        self.allow_empty = allow_empty
        self.title: str | None = None
        self._opener = opener

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, name: str | None = None, span_path: str | None = None) -> "HtmlDocument":
        """Open an HTML file; its first bytes decide the encoding."""
        path = os.fspath(path)
        with open(path, "rb") as fh:
            sample = fh.read(ENCODING_SAMPLE)
        return cls(name or path, lambda: open(path, "rb"), sample, span_path=span_path)

    def _spans(self, blocks: list[tuple[str | None, list[str]]]) -> Iterator[Span]:
        for section, lines in blocks:
            for text in chunk_paragraphs(lines):
                self.report.chars += len(text)
                yield Span(text, self.path, None, None, None, section)

    def spans(self) -> Iterator[Span]:
        """Yield the visible text; raises :class:`InputError` at the end when there was none."""
        self.report.__init__(units=1)  # type: ignore[misc]
        if self._charset_warning:
            warn(self.report, self._charset_warning)
        stats = DecodeStats()
        parser = HtmlExtractor(self.initial_section)
        batch: list[str] = []
        size = 0
        with self._opener() as raw:
            # fed in batches: the parser rescans an unfinished construct at every feed, so many short
            # lines inside one (an unclosed <script> or comment) would cost (lines x its length)
            for piece in iter_line_pieces(raw, self.encoding, stats):
                batch.append(piece)
                size += len(piece)
                if size >= FEED_CHARS:
                    parser.feed("".join(batch))
                    batch, size = [], 0
                    yield from self._spans(parser.pop_blocks())
        parser.feed("".join(batch))
        parser.close()
        yield from self._spans(parser.pop_blocks())
        self.title = parser.title
        for note in parser.notes:
            warn(self.report, f"{self.name}: {note}")
        if stats.replaced:
            what = "UTF-8" if self.encoding.startswith("utf-8") else describe(self.encoding)
            warn(self.report, f"{self.name}: invalid {what} bytes replaced with U+FFFD ({stats.replaced} places)")
        if not self.report.chars:
            self.report.units_without_text = 1
            if not self.allow_empty:
                raise InputError(f"{self.name}: no visible text in this HTML page; give a page with text content")
