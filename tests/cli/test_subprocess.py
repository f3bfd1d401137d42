"""The CLI as a real process (`python -m infllm_cli`): what lands on stdout, stderr and the exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.cli.conftest import KNOBS

REPO = Path(__file__).resolve().parents[2]


def infllm(*args: object, stdin: bytes | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "infllm_cli", *map(str, args)],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        cwd=REPO,
        env=full_env,
        timeout=300,
    )


def test_stdin_source_answer_alone_on_stdout(tiny_chat_model_dir: Path, story_txt: Path) -> None:
    proc = infllm("ask", "-", "Who betrayed the captain?", "-m", tiny_chat_model_dir, *KNOBS, stdin=story_txt.read_bytes())
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert proc.stdout.strip()
    assert "read " in err and "from <stdin>" in err and "memory blocks" in err
    assert "read " not in proc.stdout.decode() and "Traceback" not in err
    assert "\x1b[" not in err  # no progress bars or colours when stderr is not a terminal


def test_json_lines_for_several_questions(tiny_llama_dir: Path, story_txt: Path) -> None:
    proc = infllm("ask", story_txt, "Who?", "-q", "Why?", "-m", tiny_llama_dir, *KNOBS, "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    records = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert [r["question"] for r in records] == ["Who?", "Why?"]
    assert {"tokens_read", "blocks", "prefill_seconds", "generate_seconds", "peak_memory_bytes", "source"} <= set(records[0]["stats"])


def test_missing_path_one_line_exit_3() -> None:
    proc = infllm("ask", "/nonexistent/book.pdf", "Who?", "-m", "whatever/model")
    assert proc.returncode == 3
    assert proc.stderr.decode().strip() == "error: no such file or directory: /nonexistent/book.pdf"
    assert proc.stdout == b""


def test_count_without_any_tokenizer(story_txt: Path, tmp_path: Path) -> None:
    env = {"TIKTOKEN_CACHE_DIR": str(tmp_path / "no-cache"), "XDG_CONFIG_HOME": str(tmp_path), "INFLLM_MODEL": "not-cached/model"}
    proc = infllm("count", story_txt, env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    assert "(characters / 4, rough estimate)" in out and "key/value memory: unknown" in out
