"""The CLI in process (typer's CliRunner, stdout and stderr apart) with the tiny random models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infllm_cli.cli.app import app
from tests.cli.conftest import KNOBS


def run(cli: CliRunner, *args: object, input: str | bytes | None = None):
    return cli.invoke(app, [str(a) for a in args], input=input)


def assert_one_line_error(result, code: int, *fragments: str, alone: bool = True) -> None:
    """Exit ``code``, one ``error:`` line on stderr (the only line unless ``alone`` is False, when
    status lines may come before it), nothing on stdout, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    if alone:
        assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


# -- ask ---------------------------------------------------------------------------------------------


def test_ask_streams_answer_to_stdout_and_status_to_stderr(cli, tiny_chat_model_dir: Path, story_txt: Path) -> None:
    result = run(cli, "ask", story_txt, "Who betrayed the captain?", "-m", tiny_chat_model_dir, *KNOBS)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip()  # a (random-model) answer
    assert "read " in result.stderr and f"of {story_txt}" not in result.stdout
    assert "tokens" in result.stderr and "memory blocks" in result.stderr


def test_several_questions_read_the_document_once(cli, tiny_chat_model_dir: Path, story_txt: Path, monkeypatch) -> None:
    from infllm_cli.runner import Runner

    fed: list[int] = []
    original = Runner.feed

    def recording_feed(self, tokens, on_progress=None, after_chunk=None):
        tokens = list(tokens)
        fed.append(len(tokens))
        return original(self, tokens, on_progress, after_chunk)

    monkeypatch.setattr(Runner, "feed", recording_feed)
    result = run(cli, "ask", story_txt, "Who betrayed the captain?", "-q", "Who loved books?", "-q", "What is the report?", "-m", tiny_chat_model_dir, *KNOBS, "--json")
    assert result.exit_code == 0, result.stderr
    records = json_lines(result.stdout)
    assert [r["question"] for r in records] == ["Who betrayed the captain?", "Who loved books?", "What is the report?"]
    doc_tokens = records[0]["stats"]["document_tokens"]
    assert doc_tokens > 64 and fed.count(doc_tokens) == 1  # the document went through the model once
    assert records[-1]["stats"]["tokens_read"] < 2 * doc_tokens
    for r in records:
        assert isinstance(r["answer"], str)
        s = r["stats"]
        assert s["generated_tokens"] <= 6 and s["blocks"] > 0 and s["prefill_seconds"] > 0
        assert s["source"]["read"].startswith(f"read {doc_tokens:,} tokens")


def test_text_mode_with_several_questions_has_headings(cli, tiny_chat_model_dir: Path, story_txt: Path) -> None:
    result = run(cli, "ask", story_txt, "-q", "Who?", "-q", "Why?", "-m", tiny_chat_model_dir, *KNOBS)
    assert result.exit_code == 0, result.stderr
    headings = [line for line in result.stdout.splitlines() if line.startswith("## ")]
    assert headings == ["## Who?", "## Why?"]


def test_ask_reads_stdin(cli, tiny_llama_dir: Path, story_txt: Path) -> None:
    result = run(cli, "ask", "-", "Who betrayed the captain?", "-m", tiny_llama_dir, *KNOBS, "--json", input=story_txt.read_bytes())
    assert result.exit_code == 0, result.stderr
    [record] = json_lines(result.stdout)
    assert record["stats"]["source"]["name"] == "<stdin>" and record["stats"]["document_tokens"] > 64


def test_ask_a_pdf(cli, tiny_chat_model_dir: Path, book_pdf: Path) -> None:
    result = run(cli, "ask", book_pdf, "Who betrayed the captain?", "-m", tiny_chat_model_dir, *KNOBS, "--json")
    assert result.exit_code == 0, result.stderr
    [record] = json_lines(result.stdout)
    assert record["stats"]["source"]["units"] == 2 and record["stats"]["source"]["kind"] == "pdf"
    assert "from 2 pages of" in record["stats"]["source"]["read"]


def test_attention_modes(cli, tiny_llama_dir: Path, story_txt: Path) -> None:
    for mode in ("streaming", "dense"):
        result = run(cli, "ask", story_txt, "Who?", "-q", "Where?", "-q", "Who?", "-m", tiny_llama_dir, *KNOBS,
                     "--attention", mode, "--json")
        assert result.exit_code == 0, result.stderr
        records = json_lines(result.stdout)
        assert [r["stats"]["attention"] for r in records] == [mode] * 3
        assert records[0]["answer"] == records[2]["answer"]  # same question, same state after the document


def test_quiet_leaves_stderr_empty(cli, tiny_llama_dir: Path, story_txt: Path) -> None:
    result = run(cli, "ask", story_txt, "Who?", "-m", tiny_llama_dir, *KNOBS, "--quiet")
    assert result.exit_code == 0 and result.stderr == ""


def test_missing_question_is_a_usage_error(cli, tiny_llama_dir: Path, story_txt: Path) -> None:
    assert_one_line_error(run(cli, "ask", story_txt, "-m", tiny_llama_dir), 2, "no question")


# -- summarize ---------------------------------------------------------------------------------------


def test_summarize_sections_streams_one_heading_per_section(cli, tiny_chat_model_dir: Path, story_md: Path) -> None:
    result = run(cli, "summarize", story_md, "--style", "sections", "-m", tiny_chat_model_dir, *KNOBS)
    assert result.exit_code == 0, result.stderr
    headings = [line for line in result.stdout.splitlines() if line.startswith("## ")]
    assert headings == ["## The Ship", "## The Mutiny", "## The Robot", "## Overall summary"]


def test_summarize_json_and_brief(cli, tiny_chat_model_dir: Path, story_md: Path) -> None:
    result = run(cli, "summarize", story_md, "--style", "sections", "-m", tiny_chat_model_dir, *KNOBS, "--json")
    assert result.exit_code == 0, result.stderr
    [record] = json_lines(result.stdout)
    assert [s["title"] for s in record["sections"]] == ["The Ship", "The Mutiny", "The Robot"]
    assert record["style"] == "sections" and isinstance(record["summary"], str)
    assert sum(s["tokens"] for s in record["sections"]) == record["stats"]["document_tokens"]

    result = run(cli, "summarize", story_md, "-m", tiny_chat_model_dir, *KNOBS)
    assert result.exit_code == 0, result.stderr
    assert "## " not in result.stdout  # brief: a single summary without headings


def test_summarize_detailed_goes_per_section_only_for_long_sources(cli, tiny_chat_model_dir: Path, story_md: Path) -> None:
    long = run(cli, "summarize", story_md, "--style", "detailed", "-m", tiny_chat_model_dir, *KNOBS, "--json")
    assert long.exit_code == 0, long.stderr
    assert len(json_lines(long.stdout)[0]["sections"]) == 3  # longer than --n-local 64
    knobs = [k if k != "64" else "1024" for k in KNOBS]
    short = run(cli, "summarize", story_md, "--style", "detailed", "-m", tiny_chat_model_dir, *knobs, "--json")
    assert short.exit_code == 0, short.stderr
    assert json_lines(short.stdout)[0]["sections"] == []


def test_repository_directory_sections_are_files(cli, tiny_chat_model_dir: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "auth.py").write_text("def main():\n    return authenticate(user, password)\n" * 6)
    (repo / "README.md").write_text("The committee wrote the report about the ship.\n" * 6)
    result = run(cli, "summarize", repo, "--style", "sections", "-m", tiny_chat_model_dir, *KNOBS, "--json")
    assert result.exit_code == 0, result.stderr
    [record] = json_lines(result.stdout)
    assert sorted(s["title"] for s in record["sections"]) == ["README.md", "src/auth.py"]
    assert record["stats"]["source"]["kind"] == "directory" and record["stats"]["source"]["units"] == 2
    ask = run(cli, "ask", repo, "Where is auth handled?", "-m", tiny_chat_model_dir, *KNOBS)
    assert ask.exit_code == 0, ask.stderr
    assert "from 2 files of" in ask.stderr


# -- chat --------------------------------------------------------------------------------------------


def test_chat_keeps_history_until_exit(cli, tiny_chat_model_dir: Path, story_txt: Path, monkeypatch) -> None:
    from infllm_cli.prompting import PromptFormat

    seen: list[int] = []
    original = PromptFormat.qa_suffix

    def recording(self, question, history=()):
        seen.append(len(history))
        return original(self, question, history)

    monkeypatch.setattr(PromptFormat, "qa_suffix", recording)
    stdin = "Who betrayed the captain?\n\nWhy?\n/exit\nnever asked\n"
    result = run(cli, "chat", story_txt, "-m", tiny_chat_model_dir, *KNOBS, "--json", input=stdin)
    assert result.exit_code == 0, result.stderr
    records = json_lines(result.stdout)
    assert [r["question"] for r in records] == ["Who betrayed the captain?", "Why?"]
    assert seen[-2:] == [0, 1]

    seen.clear()
    result = run(cli, "chat", story_txt, "-m", tiny_chat_model_dir, *KNOBS, "--independent", input="One?\nTwo?\n")
    assert result.exit_code == 0, result.stderr
    assert seen[-2:] == [0, 0]


def test_chat_refuses_stdin_source(cli, tiny_llama_dir: Path) -> None:
    assert_one_line_error(run(cli, "chat", "-", "-m", tiny_llama_dir, input="x\n"), 2, "stdin")


# -- errors ------------------------------------------------------------------------------------------


def test_input_errors(cli, tiny_llama_dir: Path, tmp_path: Path) -> None:
    m = ["-m", tiny_llama_dir, *KNOBS]
    assert_one_line_error(run(cli, "ask", tmp_path / "nope.txt", "Q?", *m), 3, "no such file")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert_one_line_error(run(cli, "ask", empty, "Q?", *m), 3)
    binary = tmp_path / "blob.dat"
    binary.write_bytes(bytes(range(256)) * 8)
    assert_one_line_error(run(cli, "ask", binary, "Q?", *m), 3, "binary")
    nothing = tmp_path / "imgs"
    nothing.mkdir()
    (nothing / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    assert_one_line_error(run(cli, "ask", nothing, "Q?", *m), 3)
    assert_one_line_error(run(cli, "ask", "-", "Q?", *m, input=b""), 3)


def test_pdf_errors(cli, tiny_llama_dir: Path, book_pdf: Path, tmp_path: Path) -> None:
    from pypdf import PdfWriter

    m = ["-m", tiny_llama_dir, *KNOBS]
    enc = tmp_path / "locked.pdf"
    writer = PdfWriter(clone_from=str(book_pdf))
    writer.encrypt("secret")
    writer.write(str(enc))
    assert_one_line_error(run(cli, "ask", enc, "Q?", *m), 4, "password")
    assert_one_line_error(run(cli, "ask", enc, "Q?", *m, "--password", "wrong"), 4, "password")
    ok = run(cli, "ask", enc, "Q?", *m, "--password", "secret", "--json")
    assert ok.exit_code == 0, ok.stderr
    corrupt = tmp_path / "corrupt.pdf"
    corrupt.write_bytes(b"%PDF-1.4\n" + b"garbage " * 200)
    assert_one_line_error(run(cli, "ask", corrupt, "Q?", *m), 4)


def test_model_errors(cli, story_txt: Path, tmp_path: Path) -> None:
    assert_one_line_error(run(cli, "ask", story_txt, "Q?", "-m", "no-such-org/no-such-model-xyz", *KNOBS), 5, "no-such-model-xyz")
    no_weights = tmp_path / "model"
    no_weights.mkdir()
    (no_weights / "config.json").write_text('{"model_type": "llama"}')
    assert_one_line_error(run(cli, "ask", story_txt, "Q?", "-m", no_weights, *KNOBS), 5)


def test_unavailable_device_exits_6(cli, tiny_llama_dir: Path, story_txt: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    assert_one_line_error(run(cli, "ask", story_txt, "Q?", "-m", tiny_llama_dir, "--device", "cuda"), 6, "cuda")


def test_max_tokens_refuses_large_sources(cli, tiny_llama_dir: Path, story_txt: Path) -> None:
    assert_one_line_error(run(cli, "ask", story_txt, "Q?", "-m", tiny_llama_dir, *KNOBS, "--max-tokens", "50"), 3, "more than 50 tokens", "--max-tokens")


def test_max_bytes_limits_a_directory(cli, tiny_llama_dir: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a.txt").write_text("The captain sailed the ship across the sea. " * 40)
    (repo / "b.txt").write_text("The first mate betrayed him. " * 40)
    assert_one_line_error(run(cli, "ask", repo, "Q?", "-m", tiny_llama_dir, *KNOBS, "--max-bytes", "1000"), 3, "1,000 B", "--max-bytes")
    result = run(cli, "count", repo, "--max-bytes", "100000")
    assert result.exit_code == 0, result.stderr


def test_invalid_memory_config_exits_2(cli, tiny_llama_dir: Path, story_txt: Path) -> None:
    assert_one_line_error(run(cli, "ask", story_txt, "Q?", "-m", tiny_llama_dir, *KNOBS, "--chunk-size", "100"), 2, "chunk_size")
    bad = run(cli, "ask", story_txt, "Q?", "-m", tiny_llama_dir, "--attention", "sparse")
    assert bad.exit_code == 2 and "Traceback" not in bad.stderr


def test_internal_error_and_interrupt(cli, tiny_llama_dir: Path, story_txt: Path, monkeypatch) -> None:
    import infllm_cli.models as models

    def boom(*a, **k):
        raise RuntimeError("kaput\nsecond line")

    monkeypatch.setattr(models, "load_model", boom)
    result = run(cli, "ask", story_txt, "Q?", "-m", tiny_llama_dir, *KNOBS)
    assert_one_line_error(result, 1, "internal error: RuntimeError: kaput second line", "--debug", alone=False)
    result = run(cli, "ask", story_txt, "Q?", "-m", tiny_llama_dir, *KNOBS, "--debug")
    assert result.exit_code == 1 and "Traceback" in result.stderr

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "load_model", interrupt)
    result = run(cli, "ask", story_txt, "Q?", "-m", tiny_llama_dir, *KNOBS)
    assert result.exit_code == 130 and result.stderr.strip().splitlines()[-1] == "interrupted"


# -- count -------------------------------------------------------------------------------------------


def test_count_with_the_model_tokenizer(cli, tiny_llama_dir: Path, story_txt: Path, monkeypatch) -> None:
    import infllm_cli.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("count must not load a model"))
    result = run(cli, "count", story_txt, "-m", tiny_llama_dir, "--preset", "tiny")
    assert result.exit_code == 0, result.stderr
    assert f"(model tokenizer: {tiny_llama_dir})" in result.stdout
    assert "key/value memory: about" in result.stdout and "= 2 x 2 layers x 2 KV heads x 16 dims x 4 bytes" in result.stdout
    result = run(cli, "count", story_txt, "-m", tiny_llama_dir, "--preset", "tiny", "--json", "--tokens-per-second", "100")
    data = json.loads(result.stdout)
    assert data["exact"] and data["tokens"] > 64 and data["memory"]["kv_bytes_per_token"] == 512
    assert data["time_seconds"] == pytest.approx(data["tokens"] / 100)


def test_count_falls_back_to_characters(cli, story_txt: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("INFLLM_MODEL", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    result = run(cli, "count", story_txt, "-m", "not-cached/model")
    assert result.exit_code == 0, result.stderr
    n = -(-len(story_txt.read_text()) // 4)
    assert f"tokens: {n:,} (characters / 4, rough estimate)" in result.stdout
    assert "key/value memory: unknown" in result.stdout and "prefill time: unknown" in result.stdout


def test_count_uses_cached_tiktoken(cli, story_txt: Path, tmp_path: Path, monkeypatch) -> None:
    import hashlib

    from infllm_cli import estimate
    from tests.cli.test_settings_estimate import CL100K_URL, _fake_bpe

    cache = tmp_path / "tiktoken"
    cache.mkdir()
    (cache / hashlib.sha1(CL100K_URL.encode()).hexdigest()).write_bytes(_fake_bpe())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    monkeypatch.setattr(estimate, "_sha256_ok", lambda data, expected: True)
    result = run(cli, "count", story_txt, "-m", "not-cached/model", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["token_basis"] == "tiktoken cl100k_base, estimate" and not data["exact"] and data["tokens"] > 0


def test_count_errors(cli, tmp_path: Path) -> None:
    assert_one_line_error(run(cli, "count", tmp_path / "missing.pdf"), 3, "no such file")
