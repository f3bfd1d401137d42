"""Sources: turn what the user names (a file, a directory, ``-``) into text spans with provenance.

:func:`open_source` picks the reader:

=====================  ===================================================================================
``-``                  standard input (:mod:`.stdin`): text, HTML, or a PDF/EPUB spooled to a temp file
a directory            :class:`DirectoryDocument`: every readable file, ``.gitignore`` honoured
``%PDF`` magic/.pdf    :class:`PdfDocument` (pypdf), one span per page, outline as sections
zip with EPUB marks    :class:`EpubDocument`, chapters in spine order
.html/.htm/.xhtml      :class:`HtmlDocument`, also files of unknown type starting with ``<!DOCTYPE html>``
.md / .rst / code      :class:`TextDocument` with kind ``"markdown"``, ``"rst"`` or ``"code"``
anything else          :class:`TextDocument` (kind ``"text"``) unless binary (NUL bytes, control chars)
=====================  ===================================================================================

Documents are read lazily through ``spans()``; problems are raised as
:class:`~infllm_cli.errors.InputError` (exit 3) or :class:`~infllm_cli.errors.PdfError` (exit 4) with a
one-line message, and warnings go to ``logging.getLogger("infllm.sources")`` and ``document.report``.
"""

from __future__ import annotations

import os
import stat
import sys
import typing

from ..errors import InputError
from .base import Document, ReadReport, Span
from .common import display_path
from ..formatting import human_bytes, one_line
from .directory import DEFAULT_MAX_BYTES, DEFAULT_MAX_FILE_BYTES, DirectoryDocument
from .epub import EpubDocument
from .html import HtmlDocument
from .pdf import NeedsOcrError, PdfDocument
from .sniff import SNIFF_BYTES, binary_reason, compression, is_html, is_pdf, is_zip, text_kind, zip_is_epub
from .stdin import open_stream
from .text import TextDocument

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_FILE_BYTES",
    "DirectoryDocument",
    "Document",
    "EpubDocument",
    "HtmlDocument",
    "NeedsOcrError",
    "PdfDocument",
    "ReadReport",
    "Span",
    "TextDocument",
    "open_source",
    "open_stream",
]


def _open_file(path: str, head: bytes, password: str | None, password_origin: str) -> Document:
    lower = path.lower()
    shown, real = display_path(path), path
    if is_pdf(head) or lower.endswith(".pdf"):
        return PdfDocument(path, name=shown, password=password, password_origin=password_origin)
    if lower.endswith(".epub") or (is_zip(head) and zip_is_epub(path)):
        return EpubDocument(path, name=shown)
    path = shown  # below: only messages, and the readers that take a display name
    if is_zip(head):
        raise InputError(f"{path}: a zip archive (e.g. .docx, .xlsx, .zip), not a format infllm reads; "
                         "convert it to PDF or text, or extract it first")
    reason = binary_reason(head)
    if reason:
        packed = compression(head)
        if packed:
            raise InputError(f"{path}: {packed}-compressed file; decompress it first")
        raise InputError(f"{path}: binary file ({reason}), not text, PDF, EPUB or HTML; convert it to text or PDF first")
    kind = text_kind(path)
    if kind == "html" or (kind == "text" and is_html(head)):
        return HtmlDocument.open(real, name=shown)
    return TextDocument.open(real, name=shown, kind=kind)


def open_source(spec: str | bytes | os.PathLike, *, password: str | None = None, max_bytes: int | None = None,
                stdin: typing.BinaryIO | None = None, password_origin: str = "--password") -> Document:
    """Open a file, a directory or ``-`` (standard input) for reading.

    Parameters
    ----------
    spec
        A path, or ``"-"`` for standard input. Names that are not valid UTF-8 work (as bytes, or as the
        ``str`` Python makes of them with ``surrogateescape``); messages and spans show them with
        ``\\xNN`` escapes.
    password
        Password of an encrypted PDF (the empty password is always tried first).
    password_origin
        Where the password came from, for the wrong-password message (``--password``,
        ``$INFLLM_PDF_PASSWORD``).
    max_bytes
        Limit on the bytes to read: the total of a directory's files (default
        :data:`DEFAULT_MAX_BYTES`), the size of a single file or of the input stream (default: no limit).
    stdin
        The stream to read for ``"-"`` (default ``sys.stdin.buffer``).

    Returns
    -------
    Document
        Read it with ``spans()``.

    Raises
    ------
    InputError
        Missing path, empty input, binary or unsupported file, nothing readable, over ``max_bytes``.
    PdfError
        An encrypted PDF without the right password, or a PDF corrupt beyond recovery.
    """
    spec = os.fsdecode(os.fspath(spec))
    if spec == "-":
        if stdin is None:
            if sys.stdin is None or sys.stdin.isatty():
                raise InputError("nothing on standard input: pipe text into infllm (e.g. cat notes.txt | infllm ask - ...) or give a path")
            stdin = sys.stdin.buffer
        return open_stream(stdin, name="<stdin>", path="-", password=password, max_bytes=max_bytes,
                           password_origin=password_origin)
    if not spec:
        raise InputError("empty path: give a file, a directory, or - for standard input")
    shown = display_path(spec)
    if not os.path.exists(spec):
        if os.path.islink(spec):
            raise InputError(f"broken symbolic link: {shown}")
        raise InputError(f"no such file or directory: {shown}")
    if os.path.isdir(spec):
        return DirectoryDocument(spec, name=shown, max_bytes=max_bytes, password=password, password_origin=password_origin)
    try:
        info = os.stat(spec)
        if not stat.S_ISREG(info.st_mode):  # a named pipe, e.g. bash's <(command)
            if stat.S_ISSOCK(info.st_mode):
                raise InputError(f"{shown}: a socket, not a file; give a file, a directory, or - for standard input")
            fh = open(spec, "rb")
            doc = open_stream(fh, name=shown, path=shown, password=password, max_bytes=max_bytes,
                              password_origin=password_origin)
            doc._stream = fh  # type: ignore[attr-defined]  # closed with the document
            return doc
        if info.st_size == 0:
            raise InputError(f"{shown}: the file is empty; give a file with text")
        if max_bytes is not None and info.st_size > max_bytes:
            raise InputError(f"{shown}: {human_bytes(info.st_size)} is over the limit of {human_bytes(max_bytes)}; raise it with --max-bytes")
        with open(spec, "rb") as fh:
            head = fh.read(SNIFF_BYTES)
    except PermissionError:
        raise InputError(f"cannot read {shown}: permission denied") from None
    except OSError as exc:
        raise InputError(f"cannot read {shown}: {one_line(exc.strerror or exc)}") from None
    if len(head) == info.st_size and not head.strip():
        raise InputError(f"{shown}: the file is empty (only blank lines); give a file with text")
    return _open_file(spec, head, password, password_origin)
