"""In-process checks of the readers' defences against hostile input (the process-level ones, exit codes and
time limits, are in tests/hostile/test_sources_hostile.py)."""

from __future__ import annotations

import io
import os
import zipfile
import zlib

import pytest

from infllm_cli.errors import InputError, PdfError
from infllm_cli.sources import DirectoryDocument, HtmlDocument, open_source
from infllm_cli.sources import html as html_module
from infllm_cli.sources import pdf as pdf_module
from infllm_cli.sources.common import display_path
from infllm_cli.sources.encoding import check_codec, detect_encoding
from infllm_cli.sources.epub import decode_xml
from tests.sources.factories import (
    CONTAINER, deflated_repeat, handwritten_pdf, read_all, reportlab_pdf, text_stream, write_tree, xhtml,
)

NOT_TEXT = ["rot-13", "rot13", "idna", "punycode", "base64", "base_64", "zlib", "zip", "hex", "bz2", "uu", "quopri",
            "utf-7", "unicode_escape", "raw_unicode_escape", "undefined", "cp037", "no-such-codec", "x" * 500, "\x00"]


@pytest.mark.parametrize("name", NOT_TEXT)
def test_unusable_charsets_are_rejected_with_a_reason(name):
    codec, reason = check_codec(name)
    assert codec is None and reason
    assert detect_encoding(b"caf\xc3\xa9", declared=name) == "utf-8"


@pytest.mark.parametrize("name, codec", [("ISO-8859-1", "cp1252"), ("latin-1", "cp1252"), ("Shift_JIS", "shift_jis"),
                                         ("koi8-r", "koi8-r"), ("utf-8", "utf-8"), ("UTF-16", None)])
def test_usable_charsets_still_work(name, codec):
    assert check_codec(name) == (codec, None)


@pytest.mark.parametrize("name", [n for n in NOT_TEXT if n != "\x00"])
def test_html_with_a_bad_charset_is_read_with_a_warning(tmp_path, name):
    page = tmp_path / "p.html"
    page.write_bytes(f'<html><head><meta charset="{name[:60]}"></head><body><p>caf\u00e9</p></body></html>'.encode())
    doc = open_source(page)
    assert [s.text for s in read_all(doc)] == ["caf\u00e9\n"]
    assert any("ignoring the declared charset" in w for w in doc.report.warnings), doc.report.warnings


@pytest.mark.parametrize("name", ["rot-13", "base64", "idna", "no-such-codec", "utf-16", "shift_jis"])
def test_xml_declarations_never_crash_the_epub_reader(tmp_path, name):
    decl = f'<?xml version="1.0" encoding="{name}"?>'
    text, problem = decode_xml((decl + "<a>cafe</a>").encode())
    assert text == "<a>cafe</a>" and (problem is None) == (name in ("utf-16", "shift_jis"))
    book = tmp_path / "b.epub"
    opf = (f'{decl}<package xmlns="http://www.idpf.org/2007/opf" version="2.0"><manifest>'
           '<item id="c" href="c.xhtml" media-type="application/xhtml+xml"/></manifest><spine><itemref idref="c"/></spine></package>')
    with zipfile.ZipFile(book, "w") as zf:
        zf.writestr("mimetype", "application/epub+zip")
        zf.writestr("META-INF/container.xml", CONTAINER.replace('<?xml version="1.0"?>', decl))
        zf.writestr("OEBPS/content.opf", opf)
        zf.writestr("OEBPS/c.xhtml", xhtml("T", "<p>chapter text</p>").replace('encoding="utf-8"', f'encoding="{name}"'))
    assert [s.text for s in read_all(open_source(book))] == ["chapter text\n"]


def test_display_path_escapes_undecodable_bytes_and_controls():
    assert display_path(os.fsdecode(b"n\xe9\xff.txt")) == "n\\xe9\\xff.txt"
    assert display_path(b"a\nb\x1b.txt") == "a\\nb\\x1b.txt"
    assert display_path("caf\u00e9.txt") == "caf\u00e9.txt"


def test_non_utf8_names_open_as_bytes_or_str(tmp_path):
    path = os.path.join(os.fsencode(tmp_path), b"n\xe9\xff.md")
    with open(path, "wb") as fh:
        fh.write(b"# Title\nbody\n")
    for spec in (path, os.fsdecode(path)):
        doc = open_source(spec)
        assert doc.name.endswith("n\\xe9\\xff.md")
        assert "".join(s.text for s in read_all(doc)) == "# Title\nbody\n"


# -- directories -----------------------------------------------------------------------------------------
def test_links_leaving_the_directory_are_skipped_and_files_read_once(tmp_path):
    (tmp_path / "secret.txt").write_text("SECRET\n")
    root = write_tree(tmp_path / "r", {"a.txt": "alpha\n", "sub/b.txt": "beta\n"})
    os.symlink(tmp_path / "secret.txt", root / "0leak.txt")
    os.symlink("../../secret.txt", root / "sub" / "rel-leak.txt")
    os.symlink("a.txt", root / "0first-link.txt")  # sorts before its target: the target is kept
    os.link(root / "sub" / "b.txt", root / "sub" / "hard.txt")
    os.symlink("self", root / "self")
    doc = open_source(root)
    text = "".join(s.text for s in read_all(doc))
    assert "SECRET" not in text
    assert [f.rel for f in doc.files] == ["a.txt", "sub/b.txt"]
    assert sorted(doc.report.skipped) == ["0first-link.txt", "0leak.txt", "self", "sub/hard.txt", "sub/rel-leak.txt"]
    assert doc.report.units == 2
    assert any("0leak.txt" in w and "outside the directory" in w for w in doc.report.warnings)


def test_counts_add_up_when_files_fail_at_reading(tmp_path):
    root = write_tree(tmp_path / "r", {"a.txt": "a\n", "b.txt": "b\n", "c.png": b"\x89PNG\r\n\x1a\n",
                                       "d.bin": b"\x00\x01", "e.pdf": b"%PDF-1.4\nbroken", "f.pdf": b"%PDF-1.4\nbroken too"})
    doc = open_source(root)
    read_all(doc)
    assert (doc.report.units, len(doc.report.skipped)) == (2, 4)


def test_ignore_rules_are_bounded(tmp_path, monkeypatch):
    from infllm_cli.sources import directory

    root = write_tree(tmp_path / "r", {"keep.txt": "k\n", "drop.log": "d\n", "aaaa.txt": "a\n",
                                       ".gitignore": "a*a*a*a*b\n*.log\n" + "y" * 2000 + "\n"})
    doc = DirectoryDocument(root)
    assert [f.rel for f in doc.files] == [".gitignore", "aaaa.txt", "keep.txt"]
    assert any("ignoring 2 pattern(s)" in w for w in doc.report.warnings), doc.report.warnings
    monkeypatch.setattr(directory, "MAX_IGNORE_RULES", 1)
    doc = DirectoryDocument(root)
    assert "drop.log" in [f.rel for f in doc.files]  # its rule was past the limit


def test_fifo_ignore_file_is_not_opened(tmp_path):
    root = write_tree(tmp_path / "r", {"a.txt": "a\n"})
    os.mkfifo(root / ".gitignore")  # opening it would block until a writer comes
    doc = DirectoryDocument(root)
    assert [f.rel for f in doc.files] == ["a.txt"] and doc.skip_reasons[".gitignore"] == "not a regular file"


# -- PDF ---------------------------------------------------------------------------------------------------
def _aes(algorithm: str, password: str = "right") -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    writer.append(PdfReader(io.BytesIO(reportlab_pdf([["aes text"]]))))
    writer.encrypt(user_password=password, owner_password="owner", algorithm=algorithm)
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


@pytest.mark.parametrize("algorithm", ["AES-128", "AES-256"])
def test_aes_pdfs_open_with_the_right_password(tmp_path, algorithm):
    path = tmp_path / "aes.pdf"
    path.write_bytes(_aes(algorithm))
    assert [s.text for s in read_all(open_source(path, password="right"))] == ["aes text\n"]
    with pytest.raises(PdfError, match=r"wrong password; check the value given with \$INFLLM_PDF_PASSWORD"):
        open_source(path, password="bad", password_origin="$INFLLM_PDF_PASSWORD")


def test_missing_cryptography_is_named_plainly(tmp_path, monkeypatch):
    from pypdf.errors import DependencyError

    def no_crypto(*args, **kwargs):
        raise DependencyError("cryptography>=3.1 is required for AES algorithm")

    path = tmp_path / "aes.pdf"
    path.write_bytes(_aes("AES-128"))
    monkeypatch.setattr(pdf_module.PdfReader, "decrypt", no_crypto)
    with pytest.raises(PdfError) as err:
        open_source(path, password="right")
    assert "pip install cryptography" in str(err.value) and "corrupt" not in str(err.value)
    monkeypatch.setattr(pdf_module, "PdfReader", no_crypto)
    with pytest.raises(PdfError, match="pip install cryptography"):
        open_source(path, password="right")


def _bomb_pdf(tmp_path, ops: int):
    pages = [zlib.compress(text_stream("first")),
             deflated_repeat(b"(Hello) Tj\n", ops * 11, head=b"BT /F1 12 Tf 72 720 Td\n", tail=b"ET\n"),
             zlib.compress(text_stream("third"))]
    path = tmp_path / "bomb.pdf"
    path.write_bytes(handwritten_pdf(pages, flate=True))
    return path


def test_page_extraction_is_cut_at_its_time_limit_and_reading_goes_on(tmp_path, monkeypatch):
    monkeypatch.setattr(pdf_module, "MAX_PAGE_SECONDS", 0.2)
    doc = open_source(_bomb_pdf(tmp_path, 30_000))
    spans = read_all(doc)
    assert [s.page for s in spans][0] == 1 and spans[-1].page == 3
    assert any("page 2: text extraction cut at the limit of 0.2 s" in w for w in doc.report.warnings), doc.report.warnings


def test_page_extraction_is_cut_at_its_character_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(pdf_module, "MAX_PAGE_CHARS", 1000)
    doc = open_source(_bomb_pdf(tmp_path, 20_000))
    spans = read_all(doc)
    assert len(spans[1].text) <= 1001 and spans[2].page == 3
    assert any("page 2" in w and "1,000 characters" in w for w in doc.report.warnings), doc.report.warnings


def test_file_extraction_stops_at_its_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(pdf_module, "MAX_FILE_CHARS", 3)
    path = tmp_path / "p.pdf"
    path.write_bytes(reportlab_pdf([["one"], ["two"], ["three"]]))
    doc = open_source(path)
    assert [s.page for s in read_all(doc)] == [1]
    assert any("pages 2-3 were not read" in w for w in doc.report.warnings)


# -- HTML --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("junk", ['<a href="' + "x" * 50_000 + '">link</a>', "<!-- " + "x " * 25_000 + " -->",
                                  "<![CDATA[" + "x" * 50_000 + "]]>", "<a " * 20_000 + ">"])
def test_over_long_markup_is_dropped_and_the_rest_read(tmp_path, monkeypatch, junk):
    monkeypatch.setattr(html_module, "MAX_MARKUP_CHARS", 1000)
    monkeypatch.setattr(html_module, "FEED_CHARS", 100)
    page = tmp_path / "p.html"
    page.write_text(f"<html><body><p>before</p>{junk}<p>after</p></body></html>")
    doc = HtmlDocument.open(page)
    text = "".join(s.text for s in read_all(doc))
    assert "before" in text and "after" in text and "xxxx" not in text
    assert any("longer than 1,000 characters was dropped" in w for w in doc.report.warnings)


def test_unclosed_comment_runs_to_the_end(tmp_path, monkeypatch):
    monkeypatch.setattr(html_module, "MAX_MARKUP_CHARS", 1000)
    monkeypatch.setattr(html_module, "FEED_CHARS", 100)
    page = tmp_path / "p.html"
    page.write_text("<html><body><p>before</p><!-- " + "x " * 25_000)
    assert [s.text for s in read_all(HtmlDocument.open(page))] == ["before\n"]


def test_tag_count_is_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(html_module, "MAX_TAGS", 100)
    page = tmp_path / "p.html"
    page.write_text("<p>before</p>" + "<div>" * 500 + "<p>after</p>")
    doc = HtmlDocument.open(page)
    assert "after" not in "".join(s.text for s in read_all(doc))
    assert any("more than 100 tags" in w for w in doc.report.warnings)


# -- summaries: parts are titled "<first> … <last>" ------------------------------------------------------
class _Words:
    description = "words"

    def encode(self, text):
        return list(range(len(text.split())))


def test_pdf_parts_name_first_and_last_outline_entries(tmp_path):
    from infllm_cli.cli.session import plan_parts
    from infllm_cli.tokens import read_tokens

    pages = [[f"page {i} " + "word " * 50] for i in range(1, 7)]
    outline = [("A", 1, 0), ("B", 1, 0), ("C", 2, 0), ("D", 2, 0), ("E", 4, 0)]
    path = tmp_path / "o.pdf"
    path.write_bytes(reportlab_pdf(pages, outline=outline))
    doc = read_tokens(open_source(path), _Words())
    small = plan_parts(doc, min_tokens=40, max_untitled_tokens=1000)
    assert [p.title for p in small] == ["A … B", "C … D", "D", "E"]
    assert small[-1].location.endswith("p.4 - " + str(path) + " p.6")  # the whole part, not its first page
    big = plan_parts(doc, min_tokens=100, max_untitled_tokens=1000)
    assert big[0].title == "A … D"
