"""Standard input (``-``) and other one-shot streams (named pipes such as ``<(git show HEAD:README)``).

The first bytes are read to sniff the format; the stream is then read on, incrementally:

* text (the usual case, e.g. ``git ls-files | xargs cat | infllm ask - ...``) is decoded like a text file
  (byte-order marks, UTF-8, Windows-1252 fallback, U+FFFD for invalid bytes) into line spans whose
  ``path`` is ``-``; kind ``"stdin"``, with book-style chapter lines as sections;
* HTML is sniffed by its leading doctype/``<html>`` tag and goes through the HTML extractor;
* a PDF (``%PDF`` magic) or an EPUB (zip) needs random access: the stream is spooled to a temporary file
  (in memory up to 32 MiB) that lives as long as the document, then read by the PDF/EPUB reader;
* anything else with NUL bytes or control characters is rejected as binary.

``max_bytes``, when given, limits how much is read; a stream can be read only once.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from typing import BinaryIO

from ..errors import InputError
from .base import Document
from ..formatting import human_bytes
from .encoding import ENCODING_SAMPLE
from .epub import EpubDocument
from .html import HtmlDocument
from .pdf import PdfDocument
from .sniff import binary_reason, compression, is_html, is_pdf, is_zip, zip_is_epub
from .text import TextDocument

SPOOL_IN_MEMORY = 32 * 1024 * 1024


class PrefixedReader(io.RawIOBase):
    """A raw stream that yields ``head`` and then the rest of ``stream``, counting bytes against ``limit``.

    It does not close ``stream`` (stdin belongs to the process).
    """

    def __init__(self, head: bytes, stream: BinaryIO, *, name: str, limit: int | None = None) -> None:
        super().__init__()
        self._head = memoryview(head)
        self._stream = stream
        self._read = getattr(stream, "read1", stream.read)
        self._name = name
        self._limit = limit
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if len(self._head):
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
        else:
            data = self._read(len(buffer))
            n = len(data)
            buffer[:n] = data
        self.count += n
        if self._limit is not None and self.count > self._limit:
            raise InputError(f"{self._name}: the input is over the limit of {human_bytes(self._limit)}; raise it with --max-bytes")
        return n


def _read_head(stream: BinaryIO, size: int) -> bytes:
    """Read up to ``size`` bytes, looping over the short reads of pipes."""
    chunks, total = [], 0
    while total < size:
        data = stream.read(size - total)
        if not data:
            break
        chunks.append(data)
        total += len(data)
    return b"".join(chunks)


def open_stream(stream: BinaryIO, *, name: str = "<stdin>", path: str = "-", password: str | None = None,
                max_bytes: int | None = None, password_origin: str = "--password") -> Document:
    """Open a one-shot binary stream as a :class:`~.base.Document` (see the module docstring).

    Parameters
    ----------
    stream
        Readable binary stream (``sys.stdin.buffer``, a pipe, ``io.BytesIO``).
    name
        Display name for messages.
    path
        ``Span.path`` of the spans.
    password
        For an encrypted PDF.
    max_bytes
        Read at most this many bytes (None: no limit).

    Raises
    ------
    InputError
        Empty or binary input, or more than ``max_bytes``.
    """
    head = _read_head(stream, ENCODING_SAMPLE)
    if not head.strip():
        raise InputError(f"{name}: empty input; pipe text, a PDF or an EPUB into it, or give a path")
    raw = PrefixedReader(head, stream, name=name, limit=max_bytes)
    if is_pdf(head) or is_zip(head):
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
        shutil.copyfileobj(raw, spool, 1 << 20)
        spool.seek(0)
        doc: Document
        if is_pdf(head):
            doc = PdfDocument(spool, name=name, span_path=path, password=password,  # type: ignore[arg-type]
                              password_origin=password_origin)
        elif zip_is_epub(spool):  # type: ignore[arg-type]
            doc = EpubDocument(spool, name=name)  # type: ignore[arg-type]
        else:
            raise InputError(f"{name}: a zip archive, not a document infllm reads; pipe text, a PDF or an EPUB")
        doc._spool = spool  # type: ignore[attr-defined]  # the temporary file lives as long as the document
        return doc
    reason = binary_reason(head[:8192])
    if reason:
        packed = compression(head)
        hint = f"{packed}-compressed data; decompress it first" if packed else f"binary data ({reason}); pipe text, a PDF or an EPUB"
        raise InputError(f"{name}: {hint}")
    buffered = io.BufferedReader(raw, 1 << 16)
    if is_html(head):
        return HtmlDocument(name, lambda: contextlib.nullcontext(buffered), head, span_path=path)
    return TextDocument.from_stream(buffered, head, name=name, kind="stdin", span_path=path)
