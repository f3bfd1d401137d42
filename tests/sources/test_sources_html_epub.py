"""HTML extraction and EPUB books."""

from __future__ import annotations

import zipfile

import pytest

from infllm_cli.errors import InputError
from infllm_cli.sources import EpubDocument, HtmlDocument, open_source
from infllm_cli.sources.html import html_to_text

from .factories import make_epub, read_all, xhtml

PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>The Page Title</title>
<style>body { color: red } .hidden { display: none }</style>
<script>document.write("<p>from script</p>"); var a = 1 < 2;</script>
</head><body>
<!-- a comment that must not show -->
<p>Intro &amp; welcome&nbsp;&mdash; caf&eacute; &#x263A; &lt;tag&gt;</p>
<noscript>Please enable JavaScript</noscript>
<template><p>template text</p></template>
<h1>First   <em>Heading</em></h1>
<p>Paragraph one
   wraps here.</p>
<ul><li>alpha</li><li>beta</li></ul>
<table><tr><th>Name</th><th>Age</th></tr><tr><td>Ann</td><td>31</td></tr></table>
<h2>Second</h2>
<pre>  indented
    code</pre>
<div>line<br>break</div>
</body></html>"""


def test_html_visible_text_sections_entities(tmp_path):
    path = tmp_path / "page.html"
    path.write_text(PAGE, encoding="utf-8")
    doc = open_source(str(path))
    assert isinstance(doc, HtmlDocument) and doc.kind == "html"
    spans = read_all(doc)
    text = "".join(s.text for s in spans)
    for hidden in ("color: red", "from script", "a comment", "enable JavaScript", "template text", "The Page Title"):
        assert hidden not in text
    assert [(s.section, s.text) for s in spans] == [
        ("The Page Title", "Intro & welcome \u2014 café \u263a <tag>\n"),
        ("First Heading", "First Heading\n\nParagraph one wraps here.\n\n- alpha\n- beta\n\nName | Age\nAnn | 31\n"),
        ("Second", "Second\n\n  indented\n    code\n\nline\nbreak\n"),
    ]
    assert all(s.path == str(path) and s.line_start is None and s.page is None for s in spans)


def test_html_sniffed_without_extension_and_declared_charset(tmp_path):
    path = tmp_path / "saved_page"
    path.write_bytes('<html><head><meta charset="windows-1252"></head><body><h3>Caf\xe9</h3><p>\x93hi\x94</p></body></html>'.encode("latin-1"))
    doc = open_source(str(path))
    assert doc.kind == "html"
    assert [(s.section, s.text) for s in read_all(doc)] == [("Café", "Café\n\n\u201chi\u201d\n")]


def test_html_without_visible_text(tmp_path):
    path = tmp_path / "empty.htm"
    path.write_text("<html><head><title>t</title><script>x()</script></head><body> </body></html>")
    with pytest.raises(InputError, match="no visible text"):
        read_all(open_source(str(path)))


def test_html_to_text_helper():
    assert html_to_text("<p>a</p><h2>B</h2><p>c</p>") == [(None, "a"), ("B", "B\n\nc")]


def _book(tmp_path, **kwargs):
    chapters = {
        "text/ch2.xhtml": xhtml("Book", "<h1>Chapter Two</h1><p>The mate betrays the captain.</p>"),
        "text/ch1.xhtml": xhtml("Book", "<p>Before any heading.</p><h1>Chapter One</h1><p>The captain sails.</p>"),
        "cover.xhtml": xhtml("Cover", '<div><img src="cover.jpg" alt="cover"/></div>'),
    }
    return make_epub(tmp_path / "book.epub", chapters, spine=["cover.xhtml", "text/ch1.xhtml", "text/ch2.xhtml"], **kwargs)


def test_epub_spine_order_sections_paths(tmp_path):
    path = _book(tmp_path, ncx={"text/ch1.xhtml": "1. Departure", "text/ch2.xhtml": "2. Mutiny"})
    doc = open_source(str(path))
    assert isinstance(doc, EpubDocument) and doc.kind == "epub"
    spans = read_all(doc)
    assert [(s.path, s.section, s.text) for s in spans] == [
        ("text/ch1.xhtml", "1. Departure", "Before any heading.\n"),
        ("text/ch1.xhtml", "Chapter One", "Chapter One\n\nThe captain sails.\n"),
        ("text/ch2.xhtml", "Chapter Two", "Chapter Two\n\nThe mate betrays the captain.\n"),
    ]
    assert doc.report.units == 3 and doc.report.units_without_text == 1


def test_epub_without_toc_uses_title_and_manifest_order_differs(tmp_path):
    path = _book(tmp_path, manifest_order=["text/ch2.xhtml", "cover.xhtml", "text/ch1.xhtml"])
    spans = read_all(open_source(str(path)))
    assert [s.section for s in spans] == ["Book", "Chapter One", "Chapter Two"]


def test_epub_detected_by_content_and_epub3_nav(tmp_path):
    nav = ('<html xmlns="http://www.w3.org/1999/xhtml" xmlns:epub="http://www.idpf.org/2007/ops"><body>'
           '<nav epub:type="toc"><ol><li><a href="c1.xhtml">Opening</a></li></ol></nav></body></html>')
    opf = ('<?xml version="1.0"?><package xmlns="http://www.idpf.org/2007/opf" version="3.0"><manifest>'
           '<item id="nav" href="nav.xhtml" media-type="application/xhtml+xml" properties="nav"/>'
           '<item id="c1" href="c1.xhtml" media-type="application/xhtml+xml"/></manifest>'
           '<spine><itemref idref="c1"/></spine></package>')
    path = tmp_path / "book.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("mimetype", "application/epub+zip")
        zf.writestr("META-INF/container.xml", '<container><rootfiles><rootfile full-path="pkg.opf"/></rootfiles></container>')
        zf.writestr("pkg.opf", opf)
        zf.writestr("nav.xhtml", nav)
        zf.writestr("c1.xhtml", xhtml("x", "<p>Once upon a time.</p>"))
    spans = read_all(open_source(str(path)))
    assert [(s.path, s.section, s.text) for s in spans] == [("c1.xhtml", "Opening", "Once upon a time.\n")]


def test_corrupt_epub_is_input_error(tmp_path):
    good = _book(tmp_path).read_bytes()
    bad = tmp_path / "bad.epub"
    bad.write_bytes(good[: len(good) // 3])
    with pytest.raises(InputError) as err:
        read_all(open_source(str(bad)))
    assert "\n" not in str(err.value) and "bad.epub" in str(err.value)
    notzip = tmp_path / "plain.epub"
    notzip.write_text("not a zip at all")
    with pytest.raises(InputError, match="corrupt zip"):
        open_source(str(notzip))


def test_drm_epub_is_refused(tmp_path):
    path = _book(tmp_path)
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("META-INF/encryption.xml",
                    '<encryption xmlns="urn:oasis:names:tc:opendocument:xmlns:container" xmlns:enc="http://www.w3.org/2001/04/xmlenc#">'
                    '<enc:EncryptedData><enc:EncryptionMethod Algorithm="http://www.w3.org/2001/04/xmlenc#aes128-cbc"/>'
                    '<enc:CipherData><enc:CipherReference URI="OEBPS/text/ch1.xhtml"/></enc:CipherData></enc:EncryptedData></encryption>')
    with pytest.raises(InputError, match="DRM"):
        open_source(str(path))
