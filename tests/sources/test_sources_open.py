"""open_source dispatch, input errors, standard input."""

from __future__ import annotations

import io
import os
import zipfile

import pytest

from infllm_cli.errors import InputError, PdfError
from infllm_cli.sources import DirectoryDocument, EpubDocument, HtmlDocument, PdfDocument, TextDocument, open_source

from .factories import make_epub, pypdf_merged, read_all, reportlab_pdf, xhtml


def _one_line_error(exc_info) -> str:
    msg = str(exc_info.value)
    assert msg and "\n" not in msg
    return msg


@pytest.mark.parametrize("name, content, cls, kind", [
    ("notes.txt", "hello\n", TextDocument, "text"),
    ("README.md", "# T\n", TextDocument, "markdown"),
    ("index.rst", "T\n=\n", TextDocument, "rst"),
    ("main.rs", "fn main() {}\n", TextDocument, "code"),
    ("Makefile", "all:\n", TextDocument, "code"),
    ("page.htm", "<p>x</p>", HtmlDocument, "html"),
    ("no_extension", "just words\n", TextDocument, "text"),
])
def test_dispatch_by_extension(tmp_path, name, content, cls, kind):
    path = tmp_path / name
    path.write_text(content)
    doc = open_source(str(path))
    assert type(doc) is cls and doc.kind == kind and doc.name == str(path)


def test_dispatch_by_content(tmp_path):
    pdf = tmp_path / "paper.txt"
    pdf.write_bytes(reportlab_pdf([["actually a pdf"]]))
    assert isinstance(open_source(str(pdf)), PdfDocument)
    epub = make_epub(tmp_path / "book.zip", {"c.xhtml": xhtml("t", "<p>x</p>")}, spine=["c.xhtml"])
    assert isinstance(open_source(str(epub)), EpubDocument)
    assert isinstance(open_source(str(tmp_path)), DirectoryDocument)


def test_missing_path(tmp_path):
    with pytest.raises(InputError) as err:
        open_source(str(tmp_path / "nope.pdf"))
    assert _one_line_error(err) == f"no such file or directory: {tmp_path / 'nope.pdf'}"
    assert err.value.exit_code == 3


def test_empty_file_and_empty_path(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    with pytest.raises(InputError, match="empty") as err:
        open_source(str(path))
    _one_line_error(err)
    with pytest.raises(InputError, match="empty"):
        open_source("")


@pytest.mark.parametrize("name, data, expected", [
    ("image.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 100, "binary"),
    ("program", b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4, "binary"),
    ("notes.txt", b"text then \x00\x01\x02 nul bytes", "binary"),
    ("data.gz", b"\x1f\x8b\x08\x00" + b"\x00" * 50, "gzip-compressed"),
])
def test_binary_file_given_directly(tmp_path, name, data, expected):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(InputError) as err:
        open_source(str(path))
    msg = _one_line_error(err)
    assert expected in msg and str(path) in msg and not isinstance(err.value, PdfError)


def test_zip_that_is_not_an_epub(tmp_path):
    path = tmp_path / "report.docx"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("word/document.xml", "<w/>")
    with pytest.raises(InputError, match="zip archive") as err:
        open_source(str(path))
    _one_line_error(err)


def test_single_file_max_bytes(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("x" * 100)
    with pytest.raises(InputError, match="--max-bytes"):
        open_source(str(path), max_bytes=50)
    assert read_all(open_source(str(path), max_bytes=100))


def test_unreadable_file(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can read anything")
    path = tmp_path / "locked.txt"
    path.write_text("x")
    path.chmod(0)
    with pytest.raises(InputError, match="permission denied"):
        open_source(str(path))


def test_stdin_text():
    data = "first line\nsecond line\n" + "".join(f"{i}\n" for i in range(300))
    doc = open_source("-", stdin=io.BytesIO(data.encode()))
    assert doc.name == "<stdin>" and doc.kind == "stdin"
    spans = read_all(doc)
    assert all(s.path == "-" for s in spans)
    assert "".join(s.text for s in spans) == data
    assert (spans[0].line_start, spans[0].line_end, spans[1].line_start, spans[-1].line_end) == (1, 200, 201, 302)


def test_stdin_pdf_and_encrypted_pdf():
    doc = open_source("-", stdin=io.BytesIO(reportlab_pdf([["piped page one"], ["piped page two"]])))
    assert doc.kind == "pdf" and doc.name == "<stdin>"
    assert [(s.path, s.page, s.text) for s in read_all(doc)] == [("-", 1, "piped page one\n"), ("-", 2, "piped page two\n")]
    locked = pypdf_merged(reportlab_pdf([["locked"]]), user_password="pw")
    with pytest.raises(PdfError, match="--password"):
        open_source("-", stdin=io.BytesIO(locked))
    assert read_all(open_source("-", stdin=io.BytesIO(locked), password="pw"))[0].text == "locked\n"


def test_stdin_html_epub_latin1_and_utf16(tmp_path):
    html = open_source("-", stdin=io.BytesIO(b"<!doctype html><title>T</title><p>Hi &amp; bye</p>"))
    assert html.kind == "html" and read_all(html)[0].text == "Hi & bye\n"
    epub = make_epub(tmp_path / "b.epub", {"c.xhtml": xhtml("t", "<p>epub via pipe</p>")}, spine=["c.xhtml"])
    assert read_all(open_source("-", stdin=io.BytesIO(epub.read_bytes())))[0].text == "epub via pipe\n"
    assert read_all(open_source("-", stdin=io.BytesIO("café\n".encode("latin-1"))))[0].text == "café\n"
    assert read_all(open_source("-", stdin=io.BytesIO("\ufeffwide\n".encode("utf-16-le"))))[0].text == "wide\n"


def test_stdin_errors():
    with pytest.raises(InputError, match="empty input") as err:
        open_source("-", stdin=io.BytesIO(b""))
    _one_line_error(err)
    with pytest.raises(InputError, match="binary"):
        open_source("-", stdin=io.BytesIO(b"\x00\x01\x02\x03" * 100))
    with pytest.raises(InputError, match="--max-bytes"):
        read_all(open_source("-", stdin=io.BytesIO(b"line\n" * 100_000), max_bytes=1000))


def test_named_pipe(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    import threading

    def writer():
        with open(fifo, "wb") as fh:
            fh.write(b"through a fifo\n")

    thread = threading.Thread(target=writer)
    thread.start()
    doc = open_source(str(fifo))
    spans = read_all(doc)
    thread.join()
    assert [(s.path, s.text) for s in spans] == [(str(fifo), "through a fifo\n")]
    doc._stream.close()
