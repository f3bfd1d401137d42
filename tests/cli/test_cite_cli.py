"""`--cite` through the real command line (subprocesses, recall test model, micro preset).

Text mode prints a "Sources:" block after the answer on stdout; `--json` carries `sources` always (an
empty list without --cite); `--max-sources` limits the list; `--cite` with dense attention is a usage
error (exit 2, one line) before any model is loaded.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from infllm_cli.recall import _PROSE_WORDS
from tests.hostile.harness import assert_clean_failure, assert_clean_success, run_cli

MODEL = Path(__file__).resolve().parents[1] / "models" / "recall-byte256"
ARGS = ["-m", MODEL, "--preset", "micro", "--max-new-tokens", "4", "--quiet", "--device", "cpu"]
ENV = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def document(tmp_path_factory) -> Path:
    if not (MODEL / "model.safetensors").exists():
        pytest.skip("recall test model absent")
    rng = random.Random(3)
    w = _PROSE_WORDS
    text = " ".join(f"{rng.choice(w['subject'])} {rng.choice(w['verb'])} {rng.choice(w['object'])} {rng.choice(w['tail'])}"
                    for _ in range(40))
    path = tmp_path_factory.mktemp("cite") / "notes.md"
    path.write_text("# Notes\n" + text + "\n\n# More\n" + text[::-1] + "\n")
    return path


def test_text_mode_prints_sources(document):
    out = run_cli("ask", document, "What is the pass key?", *ARGS, "--cite", "--max-sources", "2", env=ENV)
    assert_clean_success(out)
    answer, sources = out.out.split("Sources:\n")
    lines = sources.splitlines()
    assert 1 <= len(lines) <= 2
    for line in lines:
        assert line.startswith("  [") and "notes.md:" in line and "%" in line


def test_json_always_carries_sources(document):
    out = run_cli("ask", document, "What is the pass key?", *ARGS, "--json", "--cite", "-q", "Where?", env=ENV)
    assert_clean_success(out)
    rows = [json.loads(line) for line in out.out.splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert 1 <= len(row["sources"]) <= 5
        for s in row["sources"]:
            assert set(s) == {"path", "page", "line_start", "line_end", "section", "tokens", "score", "excerpt"}
            assert s["path"].endswith("notes.md") and s["section"] in ("Notes", "More")
            assert s["line_start"] <= s["line_end"] and 0 < s["score"] <= 1 and s["tokens"][0] < s["tokens"][1]
        assert sum(s["score"] for s in row["sources"]) <= 1 + 1e-3
    plain = run_cli("ask", document, "What is the pass key?", *ARGS, "--json", env=ENV)
    assert_clean_success(plain)
    assert json.loads(plain.out)["sources"] == []


def test_cite_with_dense_attention_is_a_usage_error(document):
    out = run_cli("ask", document, "What?", *ARGS, "--cite", "--attention", "dense", env=ENV)
    assert_clean_failure(out, 2, "--cite needs the context memory")


def test_summarize_and_chat_cite(document):
    out = run_cli("summarize", document, *ARGS, "--json", "--cite", env=ENV)
    assert_clean_success(out)
    row = json.loads(out.out)
    assert row["sources"] and all(s["path"].endswith("notes.md") for s in row["sources"])
    out = run_cli("summarize", document, *ARGS, "--json", "--cite", "--style", "sections", env=ENV)
    assert_clean_success(out)
    row = json.loads(out.out)
    assert row["sources"] == []  # the overall summary is written from the section summaries
    assert len(row["sections"]) == 2 and all(sec["sources"] for sec in row["sections"])
    out = run_cli("chat", document, *ARGS, "--cite", stdin=b"What is it?\nAnd then?\n", env=ENV)
    assert_clean_success(out)
    assert out.out.count("Sources:\n") == 2
