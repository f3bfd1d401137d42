"""Unit tests of the token stream, prompt formats, answer post-processing and summary planning."""

from __future__ import annotations

import pytest

from infllm_cli.cli.session import StopText, plan_parts
from infllm_cli.errors import InputError
from infllm_cli.prompting import PromptFormat, Turn
from infllm_cli.sources.base import ReadReport, Span
from infllm_cli.tokens import HFEncoder, describe_read, pieces, read_tokens
from tests.cli.fakes import CharEncoder, ListDocument
from tests.tiny_models import make_tokenizer


def _decode(ids: list[int]) -> str:
    return "".join(chr(i) for i in ids)


# -- tokens ------------------------------------------------------------------------------------------


def test_directory_gets_file_headers_and_segments() -> None:
    doc = ListDocument(
        [Span("import os\n", "a.py", line_start=1, line_end=1), Span("x = 1\n", "a.py", line_start=2, line_end=2), Span("print()\n", "b.py", line_start=1, line_end=1)],
        name="repo",
        kind="directory",
    )
    out = read_tokens(doc, CharEncoder())
    text = _decode(list(out.ids))
    assert text == "File: a.py\nimport os\nx = 1\n\nFile: b.py\nprint()\n"
    assert [s.path for s in out.segments] == ["a.py", "b.py"]
    assert _decode(list(out.ids[out.segments[1].start : out.segments[1].end])) == "\nFile: b.py\nprint()\n"
    assert out.segments[0].locations() == "a.py:1 - a.py:2"
    assert out.count == len(text)


def test_no_second_header_when_the_reader_wrote_one() -> None:
    doc = ListDocument([Span("==> a.py <==\n", "a.py", section="a.py"), Span("x = 1\n", "a.py", section="a.py")], kind="directory")
    assert _decode(list(read_tokens(doc, CharEncoder()).ids)) == "==> a.py <==\nx = 1\n"


def test_single_file_has_no_header_and_spans_are_separated() -> None:
    doc = ListDocument([Span("page one", "b.pdf", page=1, section="Intro"), Span("page two", "b.pdf", page=2, section="Intro"), Span("three", "b.pdf", page=3, section="Next")], kind="pdf")
    out = read_tokens(doc, CharEncoder())
    assert _decode(list(out.ids)) == "page one\npage two\nthree"
    assert [(s.title, s.start, s.end) for s in out.segments] == [("Intro", 0, 17), ("Next", 17, 23)]
    assert out.describe() == "read 23 tokens from 3 pages of doc.txt"


def test_long_span_is_cut_in_bounded_pieces() -> None:
    line = "word " * 30 + "\n"
    doc = ListDocument([Span(line * 100, "big.txt")])
    parts = list(pieces(doc, piece_chars=500))
    assert all(len(p.text) <= 500 for p in parts)
    assert "".join(p.text for p in parts) == line * 100
    assert all(p.text.endswith("\n") for p in parts[:-1])
    assert [p.new_segment for p in parts].count(True) == 1


def test_max_tokens_stops_reading_early() -> None:
    read = []

    class Counting(ListDocument):
        def spans(self):
            for s in super().spans():
                read.append(s)
                yield s

    doc = Counting([Span("x" * 100, "a.txt", line_start=i) for i in range(1000)])
    with pytest.raises(InputError, match=r"doc.txt has more than 250 tokens; raise --max-tokens"):
        read_tokens(doc, CharEncoder(), max_tokens=250, piece_chars=100)
    assert len(read) < 10


def test_empty_document_is_an_input_error() -> None:
    with pytest.raises(InputError, match="no text"):
        read_tokens(ListDocument([Span("", "a.txt")]), CharEncoder())


def test_describe_read_mentions_pages_without_text_and_skipped_files() -> None:
    report = ReadReport(units=312, units_without_text=4, chars=10)
    assert describe_read("book.pdf", "pdf", report, 123456) == "read 123,456 tokens from 312 pages (4 without text) of book.pdf"
    report = ReadReport(units=3, skipped=["x.bin", "y.png"], chars=10)
    assert describe_read("repo", "directory", report, 5) == "read 5 tokens from 3 files of repo; skipped 2 files"
    assert describe_read("<stdin>", "stdin", ReadReport(units=1, chars=1234), 300) == "read 300 tokens (1,234 characters) from <stdin>"


def test_document_special_token_strings_are_text() -> None:
    tok = make_tokenizer()
    ids = HFEncoder(tok).encode("the end </s> of <|end|> it")
    assert tok.eos_token_id not in ids and tok.convert_tokens_to_ids("<|end|>") not in ids
    assert tok.decode(ids) == "the end </s> of <|end|> it"


# -- prompts -----------------------------------------------------------------------------------------


def _with_bos(tok):
    from tokenizers.processors import TemplateProcessing

    tok._tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    assert tok("a")["input_ids"][0] == tok.bos_token_id
    return tok


def test_chat_prompt_document_first_question_last() -> None:
    tok = make_tokenizer(chat_template=True)
    fmt = PromptFormat.for_tokenizer(tok)
    assert fmt.chat and fmt.turn_end_ids == [tok.convert_tokens_to_ids("<|end|>")]
    prefix, suffix = fmt.qa_prefix(), fmt.qa_suffix("Who betrays the captain?")
    text = tok.decode(prefix) + "DOC" + tok.decode(suffix)
    assert text.startswith("<|user|>\nRead the document below")
    assert text.index("<document>\nDOC\n</document>") < text.index("Question: Who betrays the captain?")
    assert text.endswith("<|end|>\n<|assistant|>\n")
    # the prefix does not depend on the question, so one read serves every question
    assert fmt.qa_prefix() == prefix
    # template markers are special tokens, not text
    assert tok.convert_tokens_to_ids("<|end|>") in suffix


def test_chat_history_keeps_the_prefix_and_orders_turns() -> None:
    tok = make_tokenizer(chat_template=True)
    fmt = PromptFormat.for_tokenizer(tok)
    suffix = tok.decode(fmt.qa_suffix("And then?", [Turn("Who?", "The mate."), Turn("Why?", "Gold.")]))
    assert suffix.index("Question: Who?") < suffix.index("The mate.") < suffix.index("Why?") < suffix.index("Gold.") < suffix.index("And then?")
    assert suffix.endswith("<|assistant|>\n")


def test_bos_is_added_once() -> None:
    tok = _with_bos(make_tokenizer(chat_template=True))
    fmt = PromptFormat.for_tokenizer(tok)
    assert fmt.qa_prefix()[0] == tok.bos_token_id and fmt.qa_prefix()[1] != tok.bos_token_id
    tok.chat_template = "{{ bos_token }}" + tok.chat_template  # template that writes BOS itself
    fmt = PromptFormat.for_tokenizer(tok)
    prefix = fmt.qa_prefix()
    assert prefix[0] == tok.bos_token_id and prefix.count(tok.bos_token_id) == 1


def test_plain_prompt_for_base_models() -> None:
    tok = _with_bos(make_tokenizer())
    fmt = PromptFormat.for_tokenizer(tok)
    assert not fmt.chat
    assert fmt.qa_prefix() == [tok.bos_token_id]
    assert tok.decode(fmt.qa_suffix("Who?")) == "\n\nQuestion: Who?\nAnswer:"
    assert tok.decode(fmt.qa_suffix("Why?", [Turn("Who?", "Bob")])) == "\n\nQuestion: Who?\nAnswer: Bob\n\nQuestion: Why?\nAnswer:"
    assert tok.decode(fmt.summary_suffix("brief")) == "\n\nSummary:"
    assert "\nQuestion:" in fmt.stop_strings()


def test_summary_prompts_chat() -> None:
    tok = make_tokenizer(chat_template=True)
    fmt = PromptFormat.for_tokenizer(tok)
    pre = tok.decode(fmt.summary_prefix("section", "Chapter 2"))
    assert "Chapter 2" in pre and pre.endswith("<document>\n")
    assert "Summarize" in tok.decode(fmt.summary_suffix("section", "Chapter 2"))
    assert "overall summary" in tok.decode(fmt.summary_suffix("overall"))


def test_broken_chat_template_falls_back_to_plain() -> None:
    tok = make_tokenizer()
    tok.chat_template = "{{ raise_exception('no') }}"
    assert not PromptFormat.for_tokenizer(tok).chat
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{{ m['content'] }}{% endfor %}"  # content twice
    assert not PromptFormat.for_tokenizer(tok).chat


# -- answers -----------------------------------------------------------------------------------------


def test_stop_text_cuts_at_stop_string_across_deltas() -> None:
    cut = StopText(["\nQuestion:"])
    out = "".join(cut.push(d) for d in ["  The mate", ".\nQue", "stion: who", " else"]) + cut.flush()
    assert out == "The mate."
    cut = StopText(["\nQuestion:"])
    out = "".join(cut.push(d) for d in ["a\nQ", "uick"]) + cut.flush()
    assert out == "a\nQuick"


# -- summary plan ------------------------------------------------------------------------------------


def test_plan_merges_small_sections_and_slices_unstructured_text() -> None:
    spans = [Span("x" * n, "book.pdf", page=i + 1, section=f"Ch {i}") for i, n in enumerate([50, 50, 300, 20, 400])]
    doc = read_tokens(ListDocument(spans, kind="pdf"), CharEncoder())
    parts = plan_parts(doc, min_tokens=100, max_untitled_tokens=1000)
    assert [p.title for p in parts] == ["Ch 0 … Ch 1", "Ch 2", "Ch 3 … Ch 4"]
    assert parts[0].start == 0 and parts[-1].end == doc.count
    assert all(a.end == b.start for a, b in zip(parts, parts[1:]))

    flat = read_tokens(ListDocument([Span("y" * 2500, "notes.txt")]), CharEncoder())
    parts = plan_parts(flat, min_tokens=100, max_untitled_tokens=1000)
    assert [p.title for p in parts] == ["Part 1 of 3", "Part 2 of 3", "Part 3 of 3"]
    assert not any(p.titled for p in parts)
    assert sum(p.tokens for p in parts) == 2500
