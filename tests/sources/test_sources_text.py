"""Text, Markdown, reStructuredText and code: line numbers, sections, encodings."""

from __future__ import annotations

import logging

import pytest

from infllm_cli.sources import TextDocument, open_source
from infllm_cli.sources.common import MAX_SPAN_CHARS, MAX_SPAN_LINES
from infllm_cli.sources.encoding import detect_encoding

from .factories import read_all


def _lines_of(spans):
    """Map every line number to its text, checking that spans hold the right lines."""
    seen = {}
    for span in spans:
        lines = span.text.split("\n")
        if lines[-1] == "":
            lines.pop()
        assert span.line_end - span.line_start + 1 == len(lines), span
        for number, line in zip(range(span.line_start, span.line_end + 1), lines):
            seen[number] = line
    return seen


def test_long_text_line_numbers_across_spans(tmp_path):
    path = tmp_path / "long.txt"
    path.write_text("".join(f"line {i}\n" for i in range(1, 1001)))
    doc = open_source(str(path))
    assert isinstance(doc, TextDocument) and doc.kind == "text"
    spans = read_all(doc)
    assert len(spans) == 5
    assert [(s.line_start, s.line_end) for s in spans] == [(1, 200), (201, 400), (401, 600), (601, 800), (801, 1000)]
    assert _lines_of(spans) == {i: f"line {i}" for i in range(1, 1001)}
    assert "".join(s.text for s in spans) == path.read_text()
    assert spans[1].location() == f"{path}:201-400"
    assert doc.report.units == 1 and doc.report.chars == len(path.read_text())


def test_span_char_limit_and_very_long_line(tmp_path):
    path = tmp_path / "wide.txt"
    long_line = "x" * (MAX_SPAN_CHARS * 2 + 10)
    path.write_text("short\n" + long_line + "\nafter\n")
    spans = read_all(open_source(str(path)))
    assert all(len(s.text) <= MAX_SPAN_CHARS for s in spans)
    assert "".join(s.text for s in spans) == path.read_text()
    pieces = [s for s in spans if "x" in s.text]
    assert all(s.line_start <= 2 <= s.line_end for s in pieces)
    assert spans[-1].line_end == 3 and spans[-1].text.endswith("after\n")


def test_markdown_atx_and_setext_sections(tmp_path):
    text = (
        "---\ntitle: front matter\n---\n"  # 1-3
        "Preamble.\n\n"  # 4-5
        "# Getting started\n\nInstall it.\n\n"  # 6-9
        "```sh\n# not a heading\n```\n\n"  # 10-13
        "Usage\n=====\n\nRun it.\n\n"  # 14-18
        "Options  \n-------\n\n"  # 19-21
        "## Advanced ##\ntext\n"  # 22-23
    )
    path = tmp_path / "README.md"
    path.write_text(text)
    doc = open_source(str(path))
    assert doc.kind == "markdown"
    spans = read_all(doc)
    assert [(s.section, s.line_start, s.line_end) for s in spans] == [
        (None, 1, 5), ("Getting started", 6, 13), ("Usage", 14, 18), ("Options", 19, 21), ("Advanced", 22, 23)]
    assert spans[1].text.startswith("# Getting started\n")


def test_markdown_section_longer_than_a_span_keeps_its_section(tmp_path):
    path = tmp_path / "doc.markdown"
    path.write_text("# Only\n" + "".join(f"row {i}\n" for i in range(450)))
    spans = read_all(open_source(str(path)))
    assert len(spans) == 3 and {s.section for s in spans} == {"Only"}
    assert spans[-1].line_end == 451


def test_rst_titles(tmp_path):
    text = "=====\nGuide\n=====\n\nIntro.\n\nInstall\n-------\n\nSteps.\n\n::\n\n  code\n  ----\n\nA\n-\n"
    path = tmp_path / "guide.rst"
    path.write_text(text)
    doc = open_source(str(path))
    spans = read_all(doc)
    assert doc.kind == "rst"
    assert [(s.section, s.line_start) for s in spans] == [("Guide", 1), ("Install", 7)]


def test_plain_text_book_chapters(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("Title page\n\nCHAPTER I.\nDown the hole.\n\nPart of the story.\n\nChapter 2: The Pool\nSwim.\n")
    spans = read_all(open_source(str(path)))
    assert [(s.section, s.line_start) for s in spans] == [(None, 1), ("CHAPTER I.", 3), ("Chapter 2: The Pool", 8)]


def test_code_kind_has_no_sections(tmp_path):
    path = tmp_path / "tool.py"
    path.write_text("# Heading-like comment\n\nimport os\n")
    doc = open_source(str(path))
    assert doc.kind == "code"
    assert [(s.section, s.line_start, s.line_end) for s in read_all(doc)] == [(None, 1, 3)]


def test_invalid_utf8_is_replaced_with_a_warning(tmp_path, caplog):
    path = tmp_path / "broken.txt"
    path.write_bytes("naïve café\n".encode() + b"bad \xff\xfe bytes\n")
    doc = open_source(str(path))
    with caplog.at_level(logging.WARNING, logger="infllm.sources"):
        spans = read_all(doc)
    assert spans[0].text == "naïve café\nbad \ufffd\ufffd bytes\n"
    assert len(doc.report.warnings) == 1 and "invalid UTF-8 bytes replaced" in doc.report.warnings[0]
    assert doc.report.warnings[0].startswith(str(path))
    assert [r.getMessage() for r in caplog.records if r.name == "infllm.sources"] == doc.report.warnings


def test_invalid_bytes_late_in_a_utf8_file(tmp_path):
    path = tmp_path / "late.txt"
    path.write_bytes(b"a" * 100_000 + b"\n\xc3\x28 end\n")
    spans = read_all(doc := open_source(str(path)))
    assert spans[-1].text.endswith("\ufffd( end\n") and doc.report.warnings


def test_latin1_and_cp1252_fallback(tmp_path):
    path = tmp_path / "old.txt"
    path.write_bytes("Größe, café, “quoted” – ok\n".encode("cp1252"))
    doc = open_source(str(path))
    assert read_all(doc)[0].text == "Größe, café, “quoted” – ok\n"
    assert doc.report.warnings == []


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-8-sig"])
def test_bom_encodings(tmp_path, codec):
    text = "Ünïcode line one\nline two ✓\n"
    data = text.encode(codec)
    if codec in ("utf-16-le", "utf-16-be"):
        data = ("\ufeff" + text).encode(codec)
    path = tmp_path / "u.txt"
    path.write_bytes(data)
    spans = read_all(open_source(str(path)))
    assert "".join(s.text for s in spans) == text and spans[0].line_end == 2


def test_utf16_without_bom_is_not_binary(tmp_path):
    path = tmp_path / "win.txt"
    path.write_bytes("plain ascii words written by a Windows tool\r\nsecond line\r\n".encode("utf-16-le"))
    spans = read_all(open_source(str(path)))
    assert spans[0].text == "plain ascii words written by a Windows tool\nsecond line\n"


def test_crlf_and_cr_newlines_and_no_final_newline(tmp_path):
    path = tmp_path / "nl.txt"
    path.write_bytes(b"one\r\ntwo\rthree")
    spans = read_all(open_source(str(path)))
    assert spans[0].text == "one\ntwo\nthree" and (spans[0].line_start, spans[0].line_end) == (1, 3)


def test_detect_encoding_rules():
    assert detect_encoding(b"plain") == "utf-8"
    assert detect_encoding("é".encode()) == "utf-8"
    assert detect_encoding(b"caf\xe9") == "cp1252"
    assert detect_encoding(b"x \xff y") == "utf-8"  # no Western text has this byte alone: broken UTF-8
    assert detect_encoding("é".encode() * 5 + b"\xe9") == "utf-8"
    assert detect_encoding(b"\xef\xbb\xbfx") == "utf-8-sig"
    assert detect_encoding(b"caf\xe9", declared="iso-8859-15") == "iso8859-15"


def test_whitespace_only_file_is_empty_input(tmp_path):
    from infllm_cli.errors import InputError

    path = tmp_path / "blank.md"
    path.write_text("\n\n   \n")
    with pytest.raises(InputError, match="empty") as err:
        read_all(open_source(str(path)))
    assert "\n" not in str(err.value)


def test_spans_can_be_read_twice_from_files(tmp_path):
    path = tmp_path / "again.txt"
    path.write_text("same text\n")
    doc = open_source(str(path))
    assert read_all(doc) == read_all(doc) and doc.report.chars == len("same text\n")


def test_limits_are_sane():
    assert MAX_SPAN_LINES == 200 and 8_000 <= MAX_SPAN_CHARS <= 32_000
