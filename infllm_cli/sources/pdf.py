"""PDF files through pypdf: one span per page, the outline (bookmarks) as sections.

Opening (:class:`PdfDocument`) parses the file structure, decrypts it and reads the outline; the pages'
text is extracted lazily by :meth:`PdfDocument.spans`, one :class:`Span` per page with text (``page`` is
1-based; pages without text yield nothing and are counted in ``report.units_without_text``).

* Damaged files are opened with ``strict=False`` so pypdf repairs what it can; when even that fails
  (typically a truncated download: no cross-reference table, no trailer) a synthetic trailer is appended
  so that pypdf rebuilds the table from the objects that survived. Problems pypdf logs are summarised in
  ``report.warnings``. A file that cannot be read raises :class:`~infllm_cli.errors.PdfError`.
* Encrypted files: the empty user password is tried first (owner-password-only files open silently),
  then ``password``; otherwise :class:`PdfError` asks for ``--password``.
* Sections: the innermost outline entry starting at or before the page.
* A document without any extractable text raises :class:`NeedsOcrError` -- at opening when no page has
  any font (a cheap, certain check), otherwise when the iteration ends.
* Limits (a small file can inflate to gigabytes, or hold millions of drawing operations): a page's text
  extraction stops after :data:`MAX_PAGE_SECONDS` seconds or :data:`MAX_PAGE_CHARS` characters, and a
  file's after :data:`MAX_FILE_SECONDS` seconds or :data:`MAX_FILE_CHARS` characters; what was cut is
  named in a warning (``page N``) and the reading goes on. pypdf itself refuses to inflate one stream to
  more than 75 MB (its ``LimitReachedError``: that page fails with a warning).
* Text normalisation: ``\\r`` to ``\\n``, trailing spaces stripped, at most two blank lines in a row,
  ligatures (``ﬁ``) expanded, soft hyphens removed (joining the word parts around a line break); ordinary
  hyphens at line ends are kept since removing them is not safe without a dictionary.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import time
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

from pypdf import PdfReader
from pypdf.errors import DependencyError

from ..errors import InputError, PdfError
from .base import ReadReport, Span
from ..formatting import one_line
from .common import LOG, warn


MAX_PAGE_SECONDS = 10.0
"""Text extraction of one page stops after this many seconds (with a warning naming the page)."""
MAX_PAGE_CHARS = 1_000_000
"""... or after this many characters (a printed page holds a few thousand)."""
MAX_FILE_SECONDS = 300.0
"""The extraction of one file stops after this many seconds; the remaining pages are not read."""
MAX_FILE_CHARS = 100_000_000
"""... or after this many characters."""
MAX_REPAIR_BYTES = 256 * 1024 * 1024
"""A damaged file larger than this is not loaded into memory for the repair attempt (it is reported corrupt)."""
_AES_HINT = "encrypted with AES, which needs the Python package 'cryptography'; install it: pip install cryptography"


class _Cut(Exception):
    """Raised from pypdf's visitor callbacks to stop a page's extraction at a limit."""


class NeedsOcrError(PdfError):
    """No page has extractable text (a scanned document). A :class:`PdfError`, with the exit code of input
    errors (3), where ``infllm_cli.errors`` documents "needs OCR"."""

    exit_code = InputError.exit_code


_LIGATURES = str.maketrans({"\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl", "\ufb05": "st", "\ufb06": "st"})
_SURROGATE = re.compile("[\ud800-\udfff]")
_OBJ = re.compile(rb"(\d{1,10})\s+\d{1,5}\s+obj\b")


def normalize_page_text(text: str) -> str:
    """Light clean-up of extracted page text (see the module docstring); ``""`` for a blank page."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "").translate(_LIGATURES)
    text = re.sub(r"\xad[ \t]*\n[ \t]*", "", text).replace("\xad", "")
    text = _SURROGATE.sub("\ufffd", text)  # broken ToUnicode maps; tokenizers reject lone surrogates
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"\n{4,}", "\n\n\n", text).strip("\n")
    return text + "\n" if text.strip() else ""


class _PypdfLog(logging.Handler):
    """Collects what pypdf logs (repairs, unsupported features) while it is attached."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            message = one_line(record.getMessage(), limit=160)
            self.messages.append(message)
            LOG.debug("pypdf: %s", message)

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        """Collect pypdf's messages (and keep them from propagating: they are summarised instead)."""
        logger = logging.getLogger("pypdf")
        logger.addHandler(self)
        propagate, logger.propagate = logger.propagate, False
        try:
            yield
        finally:
            logger.removeHandler(self)
            logger.propagate = propagate


@dataclass
class _Entry:
    title: str
    start: int | None  # 0-based page index
    children: list["_Entry"] = field(default_factory=list)


def _outline(reader: PdfReader, items: list, depth: int = 0) -> list[_Entry]:
    entries: list[_Entry] = []
    for item in items:
        if isinstance(item, list):
            if depth < 64:
                (entries[-1].children if entries else entries).extend(_outline(reader, item, depth + 1))
            continue
        try:
            page = reader.get_destination_page_number(item)
        except Exception:
            page = None
        title = " ".join(str(getattr(item, "title", "") or "").split())
        entries.append(_Entry(title, page if isinstance(page, int) and page >= 0 else None))
    for entry in entries:  # an entry without a page of its own starts with its first child
        starts = [c.start for c in entry.children if c.start is not None]
        if entry.start is None and starts:
            entry.start = min(starts)
    return [e for e in entries if e.start is not None]


def _has_fonts(resources: object, depth: int = 0) -> bool:
    if resources is None or depth > 4:
        return False
    res = resources.get_object()  # type: ignore[attr-defined]
    fonts = res.get("/Font")
    if fonts is not None and len(fonts.get_object()) > 0:
        return True
    xobjects = res.get("/XObject")
    for xobj in (xobjects.get_object().values() if xobjects is not None else ()):
        xobj = xobj.get_object()
        if xobj.get("/Subtype") == "/Form" and _has_fonts(xobj.get("/Resources"), depth + 1):
            return True
    return False


class PdfDocument:
    """A PDF opened for reading (see the module docstring).

    Parameters
    ----------
    source
        A path, or a seekable binary stream (stdin spooled to a temporary file).
    name
        Display name for messages (defaults to the path).
    span_path
        ``Span.path`` (defaults to ``name``).
    password
        Tried after the empty password on encrypted files.
    password_origin
        Where ``password`` came from (``--password``, ``$INFLLM_PDF_PASSWORD``), named when it is wrong.

    Raises
    ------
    PdfError
        Unreadable, or encrypted without the right password.
    NeedsOcrError
        No page has any font, so no text can be extracted.
    """

    kind = "pdf"

    def __init__(self, source: str | os.PathLike[str] | BinaryIO, *, name: str | None = None,
                 span_path: str | None = None, password: str | None = None, password_origin: str = "--password") -> None:
        self.name = name or (os.fspath(source) if isinstance(source, (str, os.PathLike)) else "<pdf>")
        self.password_origin = password_origin
        self.path = span_path if span_path is not None else self.name
        self.report = ReadReport()
        self.repaired = False
        self._log = _PypdfLog()
        with self._log.attached():
            self._reader = self._open(source)
            self._decrypt(password)
            try:
                self.page_count = len(self._reader.pages)
            except Exception as exc:
                raise self._corrupt(exc) from None
            try:
                self._outline = _outline(self._reader, list(self._reader.outline))
            except Exception as exc:
                self._outline = []
                self._log.messages.append(f"outline unreadable: {one_line(exc, 160)}")
        if self.page_count == 0:
            raise PdfError(f"cannot read PDF {self.name}: it has no pages; the file may be corrupt or truncated")
        self._open_warnings: list[str] = []
        if self._log.messages:
            what = "damaged PDF structure recovered" if self.repaired else "PDF structure problems repaired"
            self._open_warnings.append(f"{self.name}: {what} ({len(self._log.messages)} problems, first: {self._log.messages[0]})")
            self._log.messages.clear()
        elif not self.has_text_layer():
            raise NeedsOcrError(f"{self.name}: no extractable text (no page has any font: scanned images?); OCR is needed, e.g. ocrmypdf")
        self.report = ReadReport(units=self.page_count)
        for message in self._open_warnings:
            warn(self.report, message)

    def _corrupt(self, exc: BaseException) -> PdfError:
        return PdfError(f"cannot read PDF {self.name}: {one_line(exc, 160)}; the file may be corrupt or truncated")

    def _open(self, source: str | os.PathLike[str] | BinaryIO) -> PdfReader:
        try:
            return PdfReader(source, strict=False)
        except OSError as exc:
            raise InputError(f"cannot read {self.name}: {one_line(exc.strerror or exc)}") from None
        except DependencyError:
            raise PdfError(f"{self.name}: {_AES_HINT}") from None
        except Exception as first:
            try:
                if isinstance(source, (str, os.PathLike)):
                    with open(source, "rb") as fh:
                        data = fh.read(MAX_REPAIR_BYTES + 1)
                else:
                    source.seek(0)
                    data = source.read(MAX_REPAIR_BYTES + 1)
            except OSError:
                raise self._corrupt(first) from None
            if len(data) > MAX_REPAIR_BYTES:  # too large to load whole for a repair attempt
                raise self._corrupt(first) from None
            numbers = [int(n) for n in _OBJ.findall(data)]
            if not numbers or b"%PDF-" not in data[:1024]:
                raise self._corrupt(first) from None
            patched = data + b"\ntrailer\n<< /Size %d >>\nstartxref\n0\n%%%%EOF\n" % (max(numbers) + 1)
            try:
                reader = PdfReader(io.BytesIO(patched), strict=False)
                len(reader.pages)
            except Exception:
                raise self._corrupt(first) from None
            self.repaired = True
            self._log.messages.insert(0, one_line(first, 160))
            return reader

    def _decrypt(self, password: str | None) -> None:
        reader = self._reader
        if not reader.is_encrypted:
            return
        try:
            opened = bool(reader.decrypt(""))
            if not opened and password:
                opened = bool(reader.decrypt(password))
        except DependencyError:
            raise PdfError(f"{self.name}: {_AES_HINT}") from None
        except Exception as exc:
            if "cryptography" in str(exc):  # pypdf versions that raise something else than DependencyError
                raise PdfError(f"{self.name}: {_AES_HINT}") from None
            raise PdfError(f"cannot decrypt {self.name}: {one_line(exc, 160)}; the file may be corrupt") from None
        if opened:
            return
        if password is None:
            raise PdfError(f"{self.name} is encrypted; pass its password with --password")
        raise PdfError(f"{self.name}: wrong password; check the value given with {self.password_origin}")

    def has_text_layer(self) -> bool:
        """False only when no page has any font resource, so that no text can possibly be extracted."""
        try:
            return any(_has_fonts(page.get("/Resources")) for page in self._reader.pages)
        except Exception:
            return True  # unknown: let the extraction decide

    def section_for(self, index: int, *, end: bool = False) -> str | None:
        """The innermost outline entry in force at the top of page ``index`` (0-based), or None.

        Of several entries starting on that page, the top of the page belongs to the first; with
        ``end=True``, the entry in force at the bottom of the page (the last one) is returned instead.
        """
        entries, title = self._outline, None
        while entries:
            started = [e for e in entries if e.start is not None and e.start <= index]
            if not started:
                break
            top = max(e.start for e in started)  # type: ignore[type-var]
            ties = [e for e in started if e.start == top]
            best = ties[-1] if end or top < index else ties[0]
            title, entries = best.title or title, best.children
        return title

    def _extract(self, index: int) -> str:
        """The text of page ``index`` (0-based), cut at the page limits with a warning."""
        pieces: list[str] = []
        size = 0
        deadline = time.monotonic() + MAX_PAGE_SECONDS

        def on_operator(*_: object) -> None:
            if time.monotonic() > deadline:
                raise _Cut(f"{MAX_PAGE_SECONDS:g} s")

        def on_text(text: str, *_: object) -> None:
            nonlocal size
            pieces.append(text)
            size += len(text)
            if size > MAX_PAGE_CHARS:
                raise _Cut(f"{MAX_PAGE_CHARS:,} characters")

        try:
            return self._reader.pages[index].extract_text(visitor_operand_before=on_operator, visitor_text=on_text) or ""
        except _Cut as cut:
            warn(self.report, f"{self.name}: page {index + 1}: text extraction cut at the limit of {cut} for one page")
            return "".join(pieces)[:MAX_PAGE_CHARS]

    def spans(self) -> Iterator[Span]:
        """Yield one span per page with text, in page order (see the module docstring)."""
        self.report.__init__(units=self.page_count)  # type: ignore[misc]
        self.report.warnings.extend(self._open_warnings)
        failed: list[tuple[int, str]] = []
        file_deadline = time.monotonic() + MAX_FILE_SECONDS
        for index in range(self.page_count):
            if time.monotonic() > file_deadline or self.report.chars > MAX_FILE_CHARS:
                limit = f"{MAX_FILE_SECONDS:g} s" if self.report.chars <= MAX_FILE_CHARS else f"{MAX_FILE_CHARS:,} characters"
                self.report.units_without_text += self.page_count - index
                warn(self.report, f"{self.name}: text extraction stopped at the limit of {limit} for one file; "
                                  f"pages {index + 1}-{self.page_count} were not read")
                break
            try:
                with self._log.attached():
                    text = normalize_page_text(self._extract(index))
            except DependencyError:
                raise PdfError(f"{self.name}: {_AES_HINT}") from None
            except Exception as exc:
                failed.append((index + 1, one_line(exc, 160)))
                text = ""
            if not text:
                self.report.units_without_text += 1
                continue
            self.report.chars += len(text)
            section, last = self.section_for(index), self.section_for(index, end=True)
            yield Span(text, self.path, index + 1, None, None, section, last if last != section else None)
        if failed:
            pages = ", ".join(str(page) for page, _ in failed[:10]) + (", ..." if len(failed) > 10 else "")
            warn(self.report, f"{self.name}: text extraction failed on {len(failed)} pages ({pages}): {failed[0][1]}")
        damaged = self.repaired or bool(self._open_warnings or failed or self._log.messages)
        if self._log.messages:
            warn(self.report, f"{self.name}: pypdf reported {len(self._log.messages)} problems while extracting text (first: {self._log.messages[0]})")
            self._log.messages.clear()
        empty, total = self.report.units_without_text, self.page_count
        if self.report.chars == 0:
            if damaged:  # text-less because broken, not because scanned
                raise PdfError(f"cannot read PDF {self.name}: no text could be recovered; the file may be corrupt or truncated")
            raise NeedsOcrError(f"{self.name}: no extractable text in {total} pages (scanned images?); OCR is needed, e.g. ocrmypdf")
        if empty:
            warn(self.report, f"{self.name}: {empty} of {total} pages have no extractable text (scanned images?)")
