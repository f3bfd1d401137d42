"""Token ids from a document's spans, without ever joining the whole document into one string.

Spans are tokenized in bounded pieces (consecutive spans of the same file and section are batched up to
``piece_chars`` characters; a longer span is cut after a newline or a space). Document text is tokenized
*without* special tokens and with special-token strings split (a literal ``</s>`` or ``<|im_end|>`` in a
document is text, never an end-of-turn marker). When a document has several files (a directory), each
file's text is preceded by a header line ``File: <path>`` unless the reader's first line for that file
already names it.

The ids of a read document are kept in a compact ``array('i')`` (4 bytes a token), together with the
token offsets where sections and files start, which ``summarize`` uses to work section by section, and a
:class:`~infllm_cli.spanmap.SpanMap` from token offsets back to file, page, lines and section (citations).
"""

from __future__ import annotations

import logging
from array import array
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

from .errors import InputError, ModelError
from .formatting import one_line
from .sources.base import Document, ReadReport, Span
from .spanmap import SpanMap

log = logging.getLogger("infllm.tokens")

PIECE_CHARS = 32_768
"""Most characters tokenized in one call."""

UNIT_NAMES = {"pdf": "pages", "directory": "files", "epub": "chapters"}


class Encoder(Protocol):
    """Something that turns text into token ids (no special tokens added)."""

    description: str

    def encode(self, text: str) -> list[int]: ...


class HFEncoder:
    """A Hugging Face tokenizer used for document text: no special tokens added, special strings split."""

    exact = True

    def __init__(self, tokenizer: Any, description: str = "model tokenizer") -> None:
        self.tokenizer = tokenizer
        self.description = description
        self._split_ok = True

    def encode(self, text: str) -> list[int]:
        if self._split_ok:
            try:
                return list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=True, verbose=False)["input_ids"])
            except TypeError:  # a slow tokenizer without split_special_tokens
                self._split_ok = False
        return list(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[int]]:
        """``encode(text)`` and, per token, the character offset where it ends (non-decreasing); a tokenizer
        without offsets (a slow one) gets ends spread evenly over the text."""
        try:
            kwargs = {"split_special_tokens": True} if self._split_ok else {}
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False, **kwargs)
        except (NotImplementedError, TypeError, ValueError):
            ids = self.encode(text)
            return ids, even_ends(len(ids), len(text))
        ends, top = [], 0
        for _, end in enc["offset_mapping"]:
            top = max(top, end)
            ends.append(top)
        return list(enc["input_ids"]), ends


def even_ends(n_tokens: int, n_chars: int) -> list[int]:
    """Token end offsets spread evenly over ``n_chars`` characters (when a tokenizer gives no offsets)."""
    return [((i + 1) * n_chars) // n_tokens for i in range(n_tokens)] if n_tokens else []


def load_tokenizer(name_or_path: str, *, policy: Any = None, local_files_only: bool = True) -> Any:
    """Load only the tokenizer of ``name_or_path`` (a local directory or a hub id in the local cache).

    Nothing is downloaded and no code from the model folder runs unless ``policy``
    (:class:`~infllm_cli.model_files.LoadPolicy`) trusts remote code. ``local_files_only`` is accepted for
    compatibility and must stay True. Raises :class:`ModelError` with a one-line message when the tokenizer
    cannot be loaded (:class:`~infllm_cli.errors.UnsafeModelError` when it would run the folder's code).
    """
    from transformers import AutoTokenizer

    from .model_files import SAFE, inspect_config, transformers_quiet

    if not local_files_only:
        raise ValueError("infllm never downloads: local_files_only must be True")
    policy = policy or SAFE
    folder, _ = inspect_config(name_or_path, policy, require_supported=False)
    try:
        with transformers_quiet():
            return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=policy.trust_remote_code)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # transformers raises OSError/ValueError/... with multi-line messages
        raise ModelError(f"cannot load the tokenizer of {name_or_path!r}: {one_line(exc)}") from None


@dataclass
class Segment:
    """A run of consecutive spans with the same file and section, and where its tokens start."""

    title: str | None
    path: str
    start: int  # token offset of the first token
    end: int = 0  # token offset after the last token
    first_location: str = ""
    last_location: str = ""
    last_title: str | None = None  # the section in force at the end, when others start inside the segment

    @property
    def tokens(self) -> int:
        return self.end - self.start

    def locations(self) -> str:
        if not self.first_location or self.first_location == self.last_location:
            return self.first_location
        return f"{self.first_location} - {self.last_location}"


@dataclass
class DocumentTokens:
    """A document read into token ids (``ids`` is empty when only counting)."""

    name: str
    kind: str
    report: ReadReport
    ids: array = field(default_factory=lambda: array("i"))
    count: int = 0
    segments: list[Segment] = field(default_factory=list)
    span_map: SpanMap | None = None  # token offsets -> file, page, lines, section (None when only counting)

    def locate(self, start: int, end: int) -> list:
        """Where the tokens ``[start, end)`` came from: a list of :class:`~infllm_cli.spanmap.SpanLocation`."""
        return self.span_map.locate(start, end) if self.span_map is not None else []

    def describe(self) -> str:
        """One line saying how much was read, e.g. ``read 1,234 tokens from 12 pages (1 without text) of a.pdf``."""
        return describe_read(self.name, self.kind, self.report, self.count)


def _units_phrase(kind: str, report: ReadReport) -> str:
    """E.g. ``312 pages (4 without text)``; empty for formats without pages, files or chapters."""
    units = UNIT_NAMES.get(kind)
    if not (units and report.units):
        return ""
    text = f"{report.units:,} {units if report.units != 1 else units[:-1]}"
    if report.units_without_text:
        text += f" ({report.units_without_text:,} without text)"
    return text


def describe_read(name: str, kind: str, report: ReadReport, tokens: int) -> str:
    text = f"read {tokens:,} tokens"
    units = _units_phrase(kind, report)
    if units:
        text += f" from {units} of"
    else:
        text += f" ({report.chars:,} characters) from"
    text += f" {name}"
    if report.skipped:
        text += f"; skipped {len(report.skipped):,} file{'s' if len(report.skipped) != 1 else ''}"
    return text


def describe_source(name: str, kind: str, report: ReadReport) -> str:
    """E.g. ``book.pdf (pdf): 312 pages (4 without text), 1,234,567 characters``."""
    text = f"{name} ({kind}): "
    units = _units_phrase(kind, report)
    if units:
        text += units + ", "
    text += f"{report.chars:,} characters"
    if report.skipped:
        text += f"; skipped {len(report.skipped):,} file{'s' if len(report.skipped) != 1 else ''}"
    return text


def _cut(text: str, limit: int) -> Iterator[str]:
    """``text`` in pieces of at most ``limit`` characters, cut after a newline (run) or a space if possible."""
    start = 0
    n = len(text)
    while n - start > limit:
        window_end = start + limit
        cut = text.rfind("\n", start + limit // 2, window_end)
        if cut >= 0:
            cut += 1
            while cut < n and cut < window_end + 64 and text[cut] == "\n":
                cut += 1
        else:
            cut = text.rfind(" ", start + limit // 2, window_end)
            cut = cut + 1 if cut >= 0 else window_end
        yield text[start:cut]
        start = cut
    if start < n:
        yield text[start:]


@dataclass
class Piece:
    """A bounded run of text within one segment: ``first``/``last`` are the spans it starts and ends in.

    ``marks`` say which span each part of ``text`` comes from: ``(start, text_start, span, line)`` -- from
    character ``start`` on (separators and a file header first), the span's own text from ``text_start``,
    where line ``line`` begins (``None`` without line numbers).
    """

    text: str
    first: Span
    last: Span
    new_segment: bool
    marks: list[tuple[int, int, Span, int | None]] = field(default_factory=list)


def pieces(document: Document, *, piece_chars: int = PIECE_CHARS) -> Iterator[Piece]:
    """The document's text in bounded pieces, in reading order.

    A new segment starts whenever the file (``Span.path``) or the section (``Span.section``) changes;
    a piece never spans two segments.
    """
    multi_file = document.kind == "directory"
    current: tuple[str, str | None] | None = None
    buf: list[str] = []
    buf_len = 0
    first: Span | None = None
    last: Span | None = None
    new_segment = False
    last_path: str | None = None
    ended_newline = True
    anchors: list[tuple[int, int, Span]] = []  # (region start, text start, span) in the joined buffer

    def flush() -> Iterator[Piece]:
        nonlocal buf, buf_len, first, last, new_segment, anchors
        if buf and first is not None and last is not None:
            joined = "".join(buf)
            base = 0
            for part in _cut(joined, piece_chars):
                yield Piece(part, first, last, new_segment, _marks(joined, anchors, base, base + len(part)))
                new_segment = False
                base += len(part)
        buf, buf_len, first, last, anchors = [], 0, None, None, []

    for span in document.spans():
        if not span.text:
            continue
        key = (span.path, span.section)
        region = buf_len
        if key != current:
            yield from flush()
            region = 0
            current = key
            new_segment = True
            sep = "\n" if last_path is not None and not ended_newline else ""
            if multi_file and span.path != last_path and span.path not in span.text.split("\n", 1)[0]:
                # a file header, unless the reader already wrote one (e.g. "==> path <==")
                sep += ("\n" if last_path is not None else "") + f"File: {span.path}\n"
            if sep:
                buf.append(sep)
                buf_len += len(sep)
            last_path = span.path
        elif buf and not buf[-1].endswith(("\n", " ")):
            buf.append("\n")
            buf_len += 1
        if first is None:
            first = span
        last = span
        anchors.append((region, buf_len, span))
        buf.append(span.text)
        buf_len += len(span.text)
        ended_newline = span.text.endswith("\n")
        if buf_len >= piece_chars:
            yield from flush()
    yield from flush()


def _marks(joined: str, anchors: list[tuple[int, int, Span]], lo: int, hi: int) -> list[tuple[int, int, Span, int | None]]:
    """The :attr:`Piece.marks` of ``joined[lo:hi]``: the span under way at ``lo`` (with the line it has
    reached there), then every span that starts inside."""
    out: list[tuple[int, int, Span, int | None]] = []
    i = bisect_right([a[0] for a in anchors], lo) - 1
    if i >= 0 and anchors[i][0] < lo:  # a span continued from the previous piece
        _, text_start, span = anchors[i]
        line = span.line_start
        if line is not None and lo > text_start:
            line += joined.count("\n", text_start, lo)
        out.append((0, max(0, text_start - lo), span, line))
        i += 1
    i = max(i, 0)
    while i < len(anchors) and anchors[i][0] < hi:
        region, text_start, span = anchors[i]
        if region >= lo:
            out.append((region - lo, text_start - lo, span, span.line_start))
        i += 1
    return out


def _record_piece(spans: SpanMap, base: int, piece: Piece, ends: list[int]) -> None:
    """Add ``piece``'s marks to ``spans``; its tokens start at ``base`` and end at characters ``ends``."""
    text = piece.text
    for j, (start, text_start, span, line) in enumerate(piece.marks):
        stop = piece.marks[j + 1][0] if j + 1 < len(piece.marks) else len(text)
        line_starts: list[int] = []
        if line is not None:
            p = text.find("\n", max(start, text_start), stop)
            while 0 <= p < stop - 1:  # a newline at the very end starts a line in the next record
                line_starts.append(base + bisect_right(ends, p + 1))
                p = text.find("\n", p + 1, stop)
        spans.add(base + bisect_right(ends, start), span.path, span.page, line, span.section, line_starts)


def too_many_tokens(name: str, max_tokens: int) -> InputError:
    return InputError(
        f"{name} has more than {max_tokens:,} tokens; raise --max-tokens or pass a smaller part of it"
    )


def read_tokens(
    document: Document,
    encoder: Encoder,
    *,
    max_tokens: int | None = None,
    keep_ids: bool = True,
    on_progress: Callable[[int, ReadReport], None] | None = None,
    piece_chars: int = PIECE_CHARS,
) -> DocumentTokens:
    """Read ``document`` into token ids (or only count them with ``keep_ids=False``).

    Raises :class:`InputError` as soon as more than ``max_tokens`` tokens have been seen, and when the
    document has no text at all.
    """
    out = DocumentTokens(name=document.name, kind=document.kind, report=document.report)
    with_offsets = getattr(encoder, "encode_with_offsets", None)
    if keep_ids:
        out.span_map = SpanMap()
    for piece in pieces(document, piece_chars=piece_chars):
        if out.span_map is not None:
            if with_offsets is not None:
                ids, ends = with_offsets(piece.text)
            else:
                ids = encoder.encode(piece.text)
                ends = even_ends(len(ids), len(piece.text))
            _record_piece(out.span_map, out.count, piece, ends)
        else:
            ids = encoder.encode(piece.text)
        if piece.new_segment or not out.segments:
            if out.segments:
                out.segments[-1].end = out.count
            span = piece.first
            out.segments.append(Segment(title=span.section, path=span.path, start=out.count, first_location=span.location()))
        out.segments[-1].last_location = piece.last.location()
        out.segments[-1].last_title = piece.last.last_section
        out.count += len(ids)
        if max_tokens is not None and out.count > max_tokens:
            raise too_many_tokens(document.name, max_tokens)
        if keep_ids:
            out.ids.extend(ids)
        if on_progress is not None:
            on_progress(out.count, document.report)
    if out.segments:
        out.segments[-1].end = out.count
    if out.span_map is not None:
        out.span_map.count = out.count
    if out.count == 0:
        raise InputError(f"{document.name}: no text to read")
    log.debug("read %s tokens in %d segments", out.count, len(out.segments))
    return out
