"""EPUB books, read with the standard library: ``zipfile`` + ``xml.etree`` + the HTML extractor.

``META-INF/container.xml`` names the package document (OPF); its manifest maps ids to files and its
spine gives the reading order. Each spine item that is (X)HTML goes through :class:`~.html.HtmlDocument`:
its headings are sections, and the text before its first heading belongs to the chapter's title from the
table of contents (EPUB 3 ``nav`` document or EPUB 2 NCX), else to its ``<title>``. ``Span.path`` is the
item's ``href`` in the manifest (prefixed by ``<epub path>#`` when the book is read inside a directory).
``report.units`` counts spine items; those without text (cover images...) are ``units_without_text``.

A corrupt zip, a missing package document and DRM-encrypted chapters raise
:class:`~infllm_cli.errors.InputError`; a damaged single chapter is skipped with a warning.
"""

from __future__ import annotations

import os
import posixpath
import re
import zipfile
import zlib
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import BinaryIO, Iterator
from urllib.parse import unquote
from xml.etree import ElementTree

from ..errors import InputError
from .base import ReadReport, Span
from ..formatting import one_line
from .common import warn
from .encoding import ENCODING_SAMPLE, check_codec, detect_encoding
from .html import HtmlDocument

_HTML_TYPES = frozenset({"application/xhtml+xml", "text/html", "application/xml", "text/xml"})
_FONT_OBFUSCATION = frozenset({"http://www.idpf.org/2008/embedding", "http://ns.adobe.com/pdf/enc#RC"})
MAX_ITEM_BYTES = 64 * 1024 * 1024
"""A chapter larger than this (uncompressed) is skipped with a warning."""
MAX_BOOK_BYTES = 512 * 1024 * 1024
"""Chapters are read until their uncompressed sizes add up to this (a zip bomb); the rest is skipped."""
MAX_XML_BYTES = 8 * 1024 * 1024
"""Largest container, package (OPF), NCX or nav document read (uncompressed)."""
_XML_DECL = re.compile(r"^\ufeff?\s*<\?xml[^>]*\?>")
_XML_ENCODING = re.compile(rb"^(?:\xef\xbb\xbf)?\s*<\?xml[^>]*?encoding\s*=\s*[\"']([^\"']{1,64})[\"']")


def _local(tag: object) -> str:
    return str(tag).rsplit("}", 1)[-1]


def read_member(archive: zipfile.ZipFile, name: str, limit: int = MAX_XML_BYTES) -> bytes:
    """The uncompressed bytes of ``name``; ValueError when they are (or claim to be) over ``limit``."""
    info = archive.getinfo(name)
    if info.file_size > limit:
        raise ValueError(f"{name} is {info.file_size} bytes uncompressed, over the {limit >> 20} MiB limit")
    with archive.open(info) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{name} is over the {limit >> 20} MiB limit uncompressed")
    return data


def decode_xml(data: bytes) -> tuple[str, str | None]:
    """The text of an XML document, decoded as :mod:`.encoding` decodes any text, without its XML
    declaration; and the problem with the declared encoding, if any (unknown, or not a text encoding).

    The parser then reads a ``str``: expat itself would fail (``LookupError``, ``ValueError``) on
    declarations such as ``encoding="rot-13"`` or on multi-byte encodings.
    """
    match = _XML_ENCODING.match(data[:1024])
    declared = match.group(1).decode("ascii", "replace") if match else None
    _, problem = check_codec(declared)
    codec = detect_encoding(data[:ENCODING_SAMPLE], None if problem else declared)
    text = data.decode(codec, "replace")
    return _XML_DECL.sub("", text, count=1), problem


def _resolve(base_dir: str, href: str) -> str:
    return posixpath.normpath(posixpath.join(base_dir, unquote(href.split("#", 1)[0]))).lstrip("/")


class _NavLinks(HTMLParser):
    """``(href, text)`` of the links inside the EPUB 3 ``<nav epub:type="toc">`` (or any ``<nav>``)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, str, bool]] = []
        self._nav: list[bool] = []
        self._href: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "nav":
            self._nav.append("toc" in (dict(attrs).get("epub:type") or ""))
        elif tag == "a" and self._nav:
            self._href, self._text = dict(attrs).get("href"), []

    def handle_endtag(self, tag: str) -> None:
        if tag == "nav" and self._nav:
            self._nav.pop()
        elif tag == "a" and self._href is not None:
            self.links.append((self._href, " ".join(" ".join(self._text).split()), any(self._nav)))
            self._href = None

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self._text.append(data)


@dataclass
class _Chapter:
    zip_name: str
    href: str
    title: str | None


class EpubDocument:
    """An EPUB opened for reading (see the module docstring).

    Parameters
    ----------
    source
        A path, or a seekable binary stream.
    name
        Display name for messages.
    span_prefix
        When set, ``Span.path`` is ``f"{span_prefix}#{href}"`` (used for EPUBs inside directories).
    """

    kind = "epub"

    def __init__(self, source: str | os.PathLike[str] | BinaryIO, *, name: str | None = None,
                 span_prefix: str | None = None) -> None:
        self._source = os.fspath(source) if isinstance(source, (str, os.PathLike)) else source
        self.name = name or (self._source if isinstance(self._source, str) else "<epub>")
        self.span_prefix = span_prefix
        self.report = ReadReport()
        self._open_warnings: list[str] = []
        try:
            with zipfile.ZipFile(self._source) as archive:
                self.chapters = self._read_package(archive)
        except zipfile.BadZipFile as exc:
            raise InputError(f"{self.name}: not a valid EPUB (corrupt zip: {one_line(exc, 120)}); re-download or convert the book") from None
        except ElementTree.ParseError as exc:
            raise InputError(f"{self.name}: corrupt EPUB (malformed XML: {one_line(exc, 120)}); re-download or convert the book") from None
        except InputError:
            raise
        except Exception as exc:  # zipfile also raises NotImplementedError, RuntimeError, zlib.error...
            raise InputError(f"{self.name}: corrupt EPUB ({one_line(exc, 120)}); re-download or convert the book") from None
        if not self.chapters:
            raise InputError(f"{self.name}: the EPUB has no chapters in its reading order (empty spine)")
        self.report.units = len(self.chapters)
        self._open_warnings = list(self.report.warnings)

    def _xml(self, archive: zipfile.ZipFile, name: str) -> ElementTree.Element:
        text, problem = decode_xml(read_member(archive, name))
        if problem:
            warn(self.report, f"{self.name}: {name}: ignoring the declared encoding ({problem})")
        return ElementTree.fromstring(text)

    def _read_package(self, archive: zipfile.ZipFile) -> list[_Chapter]:
        names = set(archive.namelist())
        opf_path = None
        if "META-INF/container.xml" in names:
            container = self._xml(archive, "META-INF/container.xml")
            for element in container.iter():
                if _local(element.tag) == "rootfile" and (element.get("full-path") or "").endswith(".opf"):
                    opf_path = unquote(element.get("full-path", "")).lstrip("/")
                    break
        if opf_path not in names:
            opf_path = next((n for n in sorted(names) if n.lower().endswith(".opf")), None)
        if opf_path is None:
            raise InputError(f"{self.name}: not an EPUB (no package document: META-INF/container.xml and *.opf are missing)")
        base = posixpath.dirname(opf_path)
        package = self._xml(archive, opf_path)
        manifest: dict[str, tuple[str, str, str]] = {}  # id -> (href, media type, properties)
        spine: list[str] = []
        toc_id = None
        for element in package.iter():
            tag = _local(element.tag)
            if tag == "item" and element.get("id") and element.get("href"):
                manifest[element.get("id", "")] = (element.get("href", ""), element.get("media-type", ""), element.get("properties", ""))
            elif tag == "spine":
                toc_id = element.get("toc")
            elif tag == "itemref" and element.get("idref"):
                spine.append(element.get("idref", ""))
        if not spine:
            spine = [item_id for item_id, (_, media, _) in manifest.items() if media in _HTML_TYPES]
            if spine:
                warn(self.report, f"{self.name}: the EPUB has no spine; reading its HTML files in manifest order")
        titles = self._toc_titles(archive, base, manifest, toc_id)
        encrypted = self._encrypted(archive, names)
        chapters = []
        for item_id in spine:
            if item_id not in manifest:
                continue
            href, media, _ = manifest[item_id]
            if media not in _HTML_TYPES and not href.lower().split("#")[0].endswith((".xhtml", ".html", ".htm")):
                continue  # images, SVG pages: no text to read
            zip_name = _resolve(base, href)
            if zip_name in encrypted:
                raise InputError(f"{self.name}: the EPUB is DRM-protected (its chapters are encrypted); infllm cannot read it")
            chapters.append(_Chapter(zip_name, unquote(href.split("#", 1)[0]), titles.get(zip_name)))
        return chapters

    def _toc_titles(self, archive: zipfile.ZipFile, base: str, manifest: dict[str, tuple[str, str, str]],
                    toc_id: str | None) -> dict[str, str]:
        titles: dict[str, str] = {}
        try:
            nav = next((href for href, _, props in manifest.values() if "nav" in props.split()), None)
            if nav:
                parser = _NavLinks()
                parser.feed(decode_xml(read_member(archive, _resolve(base, nav)))[0])
                nav_dir = posixpath.dirname(_resolve(base, nav))
                links = [link for link in parser.links if link[2]] or parser.links
                for href, text, _ in links:
                    if text and not href.startswith(("http:", "https:", "mailto:")):
                        titles.setdefault(_resolve(nav_dir, href), text)
            ncx = manifest.get(toc_id or "", ("", "", ""))[0] or next(
                (href for href, media, _ in manifest.values() if media == "application/x-dtbncx+xml"), None)
            if ncx and not titles:
                ncx_path = _resolve(base, ncx)
                for point in self._xml(archive, ncx_path).iter():
                    if _local(point.tag) != "navPoint":
                        continue
                    label = next((e.text for e in point.iter() if _local(e.tag) == "text" and e.text), None)
                    src = next((e.get("src") for e in point if _local(e.tag) == "content"), None)
                    if label and src:
                        titles.setdefault(_resolve(posixpath.dirname(ncx_path), src), " ".join(label.split()))
        except Exception as exc:  # a damaged table of contents only costs the chapter titles
            warn(self.report, f"{self.name}: table of contents unreadable ({one_line(exc, 120)}); chapters keep their own titles")
        return titles

    def _encrypted(self, archive: zipfile.ZipFile, names: set[str]) -> set[str]:
        if "META-INF/encryption.xml" not in names:
            return set()
        encrypted = set()
        for data in self._xml(archive, "META-INF/encryption.xml").iter():
            if _local(data.tag) != "EncryptedData":
                continue
            method = next((e.get("Algorithm") for e in data.iter() if _local(e.tag) == "EncryptionMethod"), None)
            uri = next((e.get("URI") for e in data.iter() if _local(e.tag) == "CipherReference"), None)
            if uri and method not in _FONT_OBFUSCATION:
                encrypted.add(unquote(uri).lstrip("/"))
        return encrypted

    def spans(self) -> Iterator[Span]:
        """Yield the chapters' text in spine order; raises :class:`InputError` at the end if there was none."""
        self.report.__init__(units=len(self.chapters), warnings=list(self._open_warnings))  # type: ignore[misc]
        budget = MAX_BOOK_BYTES
        with zipfile.ZipFile(self._source) as archive:
            for number, chapter in enumerate(self.chapters):
                path = f"{self.span_prefix}#{chapter.href}" if self.span_prefix else chapter.href
                try:
                    info = archive.getinfo(chapter.zip_name)
                    if info.file_size > MAX_ITEM_BYTES:
                        raise ValueError(f"{info.file_size} bytes, over the {MAX_ITEM_BYTES >> 20} MiB limit for one chapter")
                    if info.file_size > budget:
                        rest = len(self.chapters) - number
                        self.report.units_without_text += rest
                        warn(self.report, f"{self.name}: the chapters add up to more than {MAX_BOOK_BYTES >> 20} MiB uncompressed; "
                                          f"the last {rest} chapters were not read")
                        break
                    budget -= info.file_size
                    with archive.open(info) as fh:
                        sample = fh.read(ENCODING_SAMPLE)
                    doc = HtmlDocument(f"{self.name}#{chapter.href}", lambda info=info: archive.open(info), sample,
                                       span_path=path, initial_section=chapter.title, allow_empty=True)
                    for span in doc.spans():
                        self.report.chars += len(span.text)
                        yield span
                    self.report.warnings.extend(doc.report.warnings)
                    self.report.units_without_text += doc.report.units_without_text
                except (KeyError, ValueError, OSError, zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
                    self.report.units_without_text += 1
                    warn(self.report, f"{self.name}: chapter {chapter.href} skipped ({one_line(exc, 120)})")
        if not self.report.chars:
            raise InputError(f"{self.name}: no readable text in the EPUB's {len(self.chapters)} chapters")
