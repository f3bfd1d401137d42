"""Builders for the test inputs: PDFs from several producers, EPUBs, repository trees.

Everything is generated in memory or under ``tmp_path`` so that no binary fixture has to be shipped.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from infllm_cli.sources import Span


def read_all(doc) -> list[Span]:
    """All spans of a document (the whole iteration, so that end-of-input checks run)."""
    return list(doc.spans())


# -- PDFs ---------------------------------------------------------------------------------------------
def reportlab_pdf(pages: list[list[str]], outline: list[tuple[str, int, int]] | None = None,
                  drawings_only: bool = False) -> bytes:
    """A reportlab canvas PDF: ``pages[i]`` are the lines of page i+1; ``outline`` holds
    ``(title, page number, level)`` entries, in document order."""
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    c = canvas.Canvas(buf, invariant=1)
    outline = outline or []
    for number, lines in enumerate(pages, start=1):
        if drawings_only:
            c.rect(72, 72, 200, 300, fill=1)
        y = 720
        for line in lines:
            c.drawString(72, y, line)
            y -= 16
        for title, page, level in outline:
            if page == number:
                key = f"k{title}"
                c.bookmarkPage(key)
                c.addOutlineEntry(title, key, level=level)
        c.showPage()
    c.save()
    return buf.getvalue()


def fpdf_pdf(pages: list[list[str]]) -> bytes:
    """A PDF from fpdf2 (core Helvetica font), one page per item."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for lines in pages:
        pdf.add_page()
        for line in lines:
            pdf.cell(text=line, new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def handwritten_pdf(contents: list[bytes], with_font: bool = True, flate: bool = False) -> bytes:
    """A minimal PDF written byte by byte (correct xref offsets), one page per content stream
    (``flate``: the streams are given zlib-compressed and declared ``/FlateDecode``)."""
    objects: list[bytes] = []
    n_pages = len(contents)
    font_id = 3 + 2 * n_pages
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(n_pages))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {n_pages} >>".encode())
    for i, content in enumerate(contents):
        resources = f"<< /Font << /F1 {font_id} 0 R >> >>" if with_font else "<< >>"
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources {resources} "
                       f"/Contents {4 + 2 * i} 0 R >>".encode())
        filters = b" /Filter /FlateDecode" if flate else b""
        objects.append(b"<< /Length %d%s >>\nstream\n" % (len(content), filters) + content + b"\nendstream")
    if with_font:
        objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def deflated_repeat(unit: bytes, total: int, head: bytes = b"", tail: bytes = b"") -> bytes:
    """zlib data that inflates to ``head`` + ``unit`` repeated up to ``total`` bytes + ``tail`` (a bomb:
    256 MB of one byte compress to about 250 KB), built in pieces so that it is never held inflated."""
    import zlib

    comp = zlib.compressobj(9)
    out = [comp.compress(head)]
    block = unit * max(1, (1 << 20) // len(unit))
    for _ in range(total // len(block)):
        out.append(comp.compress(block))
    out.append(comp.compress(unit * ((total % len(block)) // len(unit))))
    out.append(comp.compress(tail))
    out.append(comp.flush())
    return b"".join(out)


def text_stream(*lines: str) -> bytes:
    """A content stream that shows ``lines`` top-down with font /F1."""
    ops = ["BT", "/F1 12 Tf", "14 TL", "72 720 Td"]
    for line in lines:
        escaped = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        ops.append(f"({escaped}) Tj T*")
    ops.append("ET")
    return "\n".join(ops).encode("latin-1")


def pypdf_merged(*pdfs: bytes, outline: list[tuple[str, int, int | None]] | None = None,
                 user_password: str | None = None, owner_password: str | None = None) -> bytes:
    """pypdf's writer: the pages of ``pdfs`` appended in order, an optional outline of
    ``(title, 0-based page, index of the parent entry or None)``, optional encryption."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    for data in pdfs:
        writer.append(PdfReader(io.BytesIO(data)), import_outline=False)
    items = []
    for title, page, parent in outline or []:
        items.append(writer.add_outline_item(title=title, page_number=page,
                                             parent=items[parent] if parent is not None else None))
    if user_password is not None:
        writer.encrypt(user_password=user_password, owner_password=owner_password)
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


# -- EPUB ---------------------------------------------------------------------------------------------
CONTAINER = """<?xml version="1.0"?>
<container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">
  <rootfiles><rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/></rootfiles>
</container>"""


def xhtml(title: str, body: str) -> str:
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<!DOCTYPE html>\n<html xmlns="http://www.w3.org/1999/xhtml">'
            f"<head><title>{title}</title></head><body>{body}</body></html>")


def make_epub(path: Path, chapters: dict[str, str], spine: list[str], *, ncx: dict[str, str] | None = None,
              manifest_order: list[str] | None = None) -> Path:
    """An EPUB 2 under ``path``: ``chapters`` maps hrefs (relative to OEBPS/) to XHTML; the spine lists
    hrefs in reading order; ``ncx`` maps hrefs to table-of-contents titles."""
    ids = {href: f"item{i}" for i, href in enumerate(manifest_order or chapters)}
    items = "\n".join(f'<item id="{ids[h]}" href="{h}" media-type="application/xhtml+xml"/>' for h in (manifest_order or chapters))
    if ncx:
        items += '\n<item id="ncx" href="toc.ncx" media-type="application/x-dtbncx+xml"/>'
    itemrefs = "\n".join(f'<itemref idref="{ids[h]}"/>' for h in spine)
    opf = f"""<?xml version="1.0" encoding="utf-8"?>
<package xmlns="http://www.idpf.org/2007/opf" version="2.0" unique-identifier="id">
  <metadata xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>Test Book</dc:title></metadata>
  <manifest>{items}</manifest>
  <spine{' toc="ncx"' if ncx else ''}>{itemrefs}</spine>
</package>"""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(zipfile.ZipInfo("mimetype"), "application/epub+zip")  # first, stored
        zf.writestr("META-INF/container.xml", CONTAINER, compress_type=zipfile.ZIP_DEFLATED)
        zf.writestr("OEBPS/content.opf", opf, compress_type=zipfile.ZIP_DEFLATED)
        for href, markup in chapters.items():
            zf.writestr(f"OEBPS/{href}", markup, compress_type=zipfile.ZIP_DEFLATED)
        if ncx:
            points = "".join(
                f'<navPoint id="n{i}" playOrder="{i + 1}"><navLabel><text>{title}</text></navLabel><content src="{href}"/></navPoint>'
                for i, (href, title) in enumerate(ncx.items()))
            zf.writestr("OEBPS/toc.ncx", f'<?xml version="1.0"?><ncx xmlns="http://www.daisy.org/z3986/2005/ncx/" version="2005-1"><navMap>{points}</navMap></ncx>')
    return path


# -- trees --------------------------------------------------------------------------------------------
def write_tree(root: Path, files: dict[str, bytes | str]) -> Path:
    """Create ``files`` (relative path -> content) under ``root``."""
    for rel, content in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            target.write_text(content, encoding="utf-8")
        else:
            target.write_bytes(content)
    return root
