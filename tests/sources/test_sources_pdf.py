"""PDF reading: several producers, outlines, encryption, damaged and text-less files."""

from __future__ import annotations

import logging

import pytest

from infllm_cli.errors import InputError, PdfError
from infllm_cli.sources import NeedsOcrError, PdfDocument, open_source
from infllm_cli.sources.pdf import normalize_page_text

from .factories import fpdf_pdf, handwritten_pdf, pypdf_merged, read_all, reportlab_pdf, text_stream


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_reportlab_multipage_text_and_page_numbers(tmp_path):
    pdf = _write(tmp_path, "book.pdf", reportlab_pdf([["The captain sails at dawn.", "Second line."],
                                                      ["Page two talks about the storm."],
                                                      ["The mate betrays the captain."]]))
    doc = open_source(pdf)
    assert isinstance(doc, PdfDocument) and doc.kind == "pdf" and doc.name == pdf
    spans = read_all(doc)
    assert [s.page for s in spans] == [1, 2, 3]
    assert spans[0].text == "The captain sails at dawn.\nSecond line.\n"
    assert spans[1].text == "Page two talks about the storm.\n"
    assert spans[2].text == "The mate betrays the captain.\n"
    assert all(s.path == pdf and s.line_start is None and s.section is None for s in spans)
    assert spans[2].location() == f"{pdf} p.3"
    assert doc.report.units == 3 and doc.report.units_without_text == 0 and doc.report.warnings == []
    assert doc.report.chars == sum(len(s.text) for s in spans)


def test_fpdf2_pages(tmp_path):
    pdf = _write(tmp_path, "f.pdf", fpdf_pdf([["Hello from fpdf2", "line two"], ["Second page"]]))
    spans = read_all(open_source(pdf))
    assert [(s.page, s.text) for s in spans] == [(1, "Hello from fpdf2\nline two\n"), (2, "Second page\n")]


def test_handwritten_pdf_with_content_stream(tmp_path):
    data = handwritten_pdf([text_stream("Alpha (one)", "Beta"), text_stream("Gamma")])
    spans = read_all(open_source(_write(tmp_path, "h.pdf", data)))
    assert [(s.page, s.text) for s in spans] == [(1, "Alpha (one)\nBeta\n"), (2, "Gamma\n")]


def test_pypdf_writer_merges_producers(tmp_path):
    merged = pypdf_merged(reportlab_pdf([["from reportlab"]]), fpdf_pdf([["from fpdf"]]),
                          handwritten_pdf([text_stream("by hand")]))
    spans = read_all(open_source(_write(tmp_path, "m.pdf", merged)))
    assert [(s.page, s.text) for s in spans] == [(1, "from reportlab\n"), (2, "from fpdf\n"), (3, "by hand\n")]


def test_reportlab_nested_outline_gives_sections(tmp_path):
    pages = [[f"text of page {i}"] for i in range(1, 7)]
    outline = [("Part One", 1, 0), ("Chapter 1", 1, 1), ("Section 1.1", 2, 2), ("Chapter 2", 4, 1), ("Part Two", 6, 0)]
    spans = read_all(open_source(_write(tmp_path, "o.pdf", reportlab_pdf(pages, outline))))
    assert [(s.page, s.section) for s in spans] == [
        (1, "Chapter 1"), (2, "Section 1.1"), (3, "Section 1.1"), (4, "Chapter 2"), (5, "Chapter 2"), (6, "Part Two")]


def test_pypdf_outline_sections_and_pages_before_first_entry(tmp_path):
    base = reportlab_pdf([[f"p{i}"] for i in range(1, 6)])
    outline = [("Intro", 1, None), ("Details", 2, 0), ("Appendix", 4, None)]  # 0-based pages
    spans = read_all(open_source(_write(tmp_path, "p.pdf", pypdf_merged(base, outline=outline))))
    assert [(s.page, s.section) for s in spans] == [(1, None), (2, "Intro"), (3, "Details"), (4, "Details"), (5, "Appendix")]


def test_encrypted_pdf_needs_password(tmp_path):
    data = pypdf_merged(reportlab_pdf([["secret text"]]), user_password="s3cret", owner_password="owner")
    path = _write(tmp_path, "enc.pdf", data)
    with pytest.raises(PdfError) as err:
        open_source(path)
    assert "--password" in str(err.value) and "\n" not in str(err.value)
    assert err.value.exit_code == 4
    with pytest.raises(PdfError, match="wrong password.*--password"):
        open_source(path, password="nope")
    assert [s.text for s in read_all(open_source(path, password="s3cret"))] == ["secret text\n"]
    assert [s.text for s in read_all(open_source(path, password="owner"))] == ["secret text\n"]


def test_owner_password_only_opens_without_asking(tmp_path):
    data = pypdf_merged(reportlab_pdf([["open to all"]]), user_password="", owner_password="owner")
    assert [s.text for s in read_all(open_source(_write(tmp_path, "o.pdf", data)))] == ["open to all\n"]


def test_truncated_pdfs_recover_or_fail_cleanly(tmp_path):
    data = reportlab_pdf([[f"page {i} body"] for i in range(1, 6)])
    outcomes = set()
    for cut in sorted({len(data) // 2, len(data) - 200, len(data) - 40, 600, 200, 30, 10}):
        path = _write(tmp_path, f"cut{cut}.pdf", data[:cut])
        try:
            spans = read_all(open_source(path))
        except InputError as exc:  # PdfError, NeedsOcrError are InputErrors
            assert "\n" not in str(exc)
            outcomes.add("error")
        else:
            assert spans and all(s.text.startswith("page ") for s in spans)
            outcomes.add("recovered")
    assert outcomes == {"error", "recovered"}


def test_missing_xref_is_recovered_with_a_warning(tmp_path, caplog):
    data = reportlab_pdf([["first page"], ["second page"]])
    cut = data[: data.rfind(b"xref")]
    doc = open_source(_write(tmp_path, "noxref.pdf", cut))
    with caplog.at_level(logging.WARNING, logger="infllm.sources"):
        spans = read_all(doc)
    assert [(s.page, s.text) for s in spans] == [(1, "first page\n"), (2, "second page\n")]
    assert doc.report.warnings and "recovered" in doc.report.warnings[0]
    assert any("recovered" in r.getMessage() for r in caplog.records if r.name == "infllm.sources")


def test_garbage_pdf_is_a_one_line_pdf_error(tmp_path):
    with pytest.raises(PdfError) as err:
        open_source(_write(tmp_path, "bad.pdf", b"%PDF-1.4\nthis is not really a pdf\n"))
    assert "corrupt or truncated" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(PdfError):
        open_source(_write(tmp_path, "html.pdf", b"<html><body>404 not found</body></html>"))


def test_no_font_pdf_needs_ocr_at_open(tmp_path):
    data = handwritten_pdf([b"0 0 1 rg 72 72 200 300 re f"], with_font=False)
    with pytest.raises(NeedsOcrError) as err:
        open_source(_write(tmp_path, "scan.pdf", data))
    msg = str(err.value)
    assert "OCR is needed" in msg and "\n" not in msg
    assert isinstance(err.value, InputError) and err.value.exit_code == 3


def test_drawing_only_pdf_needs_ocr_after_iteration(tmp_path):
    doc = open_source(_write(tmp_path, "rect.pdf", reportlab_pdf([[], []], drawings_only=True)))
    with pytest.raises(InputError, match="OCR is needed"):
        read_all(doc)
    assert doc.report.units_without_text == 2


def test_some_pages_without_text_are_counted_and_warned(tmp_path):
    data = reportlab_pdf([["words"], [], ["more words"], []])
    doc = open_source(_write(tmp_path, "mixed.pdf", data))
    spans = read_all(doc)
    assert [s.page for s in spans] == [1, 3]
    assert doc.report.units == 4 and doc.report.units_without_text == 2
    assert doc.report.warnings == [f"{doc.name}: 2 of 4 pages have no extractable text (scanned images?)"]


def test_pdf_detected_by_magic_without_extension(tmp_path):
    doc = open_source(_write(tmp_path, "download", reportlab_pdf([["magic works"]])))
    assert doc.kind == "pdf" and read_all(doc)[0].text == "magic works\n"


def test_normalize_page_text():
    raw = "e\ufb03cient  \r\nsoft\xad\nware\n\n\n\n\n\nend   "
    assert normalize_page_text(raw) == "efficient\nsoftware\n\n\nend\n"
    assert normalize_page_text(" \n \n") == ""


def test_mutated_pdfs_only_raise_input_errors(tmp_path):
    import random

    rng = random.Random(1234)
    originals = [reportlab_pdf([[f"page {i}"] for i in range(3)], [("A", 1, 0), ("B", 2, 1)]), fpdf_pdf([["x"]] * 2)]
    for i in range(40):
        data = bytearray(rng.choice(originals))
        if i % 2:
            for _ in range(rng.randint(1, 12)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        else:
            start = rng.randrange(len(data))
            del data[start : start + rng.randrange(1, 300)]
        path = _write(tmp_path, f"m{i}.pdf", bytes(data))
        try:
            read_all(open_source(path))
        except InputError as exc:
            assert "\n" not in str(exc)
