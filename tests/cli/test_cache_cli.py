"""The memory cache through the CLI, as real processes: status lines, reuse, options, `infllm cache`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from infllm_cli.persist import MemoryCache
from tests.cli.conftest import KNOBS, SENTENCES
from tests.hostile.harness import REPO, assert_clean_failure, assert_clean_success, run_cli


def entries() -> list[str]:
    return MemoryCache(os.environ["INFLLM_CACHE_DIR"]).ids()


def test_second_ask_loads_the_memory_and_answers_the_same(tiny_llama_dir: Path, story_txt: Path) -> None:
    first = run_cli("ask", story_txt, "Who sailed?", "-m", tiny_llama_dir, *KNOBS)
    assert_clean_success(first)
    assert "memory built: read" in first.err and "saved to the cache" in first.err
    second = run_cli("ask", story_txt, "Who sailed?", "-m", tiny_llama_dir, *KNOBS, "--json")
    assert_clean_success(second)
    assert "memory loaded from the cache" in second.err and "saved" in second.err
    row = json.loads(second.out)
    assert row["answer"] == first.out.strip()
    assert row["stats"]["memory_cache"]["how"] == "loaded" and row["stats"]["tokens_read"] < 30
    assert len(entries()) == 1
    refreshed = run_cli("ask", story_txt, "Who sailed?", "-m", tiny_llama_dir, *KNOBS, "--refresh")
    assert_clean_success(refreshed)
    assert "memory built" in refreshed.err and refreshed.out == first.out
    assert len(entries()) == 1


def test_no_cache_neither_loads_nor_saves(tiny_llama_dir: Path, story_txt: Path) -> None:
    out = run_cli("ask", story_txt, "Who?", "-m", tiny_llama_dir, *KNOBS, "--no-cache")
    assert_clean_success(out)
    assert "memory built" not in out.err and "from the cache" not in out.err and entries() == []
    assert_clean_failure(run_cli("ask", story_txt, "Who?", "-m", tiny_llama_dir, *KNOBS, "--no-cache", "--refresh"), 2, "--refresh")
    assert_clean_failure(run_cli("ask", story_txt, "Who?", "-m", tiny_llama_dir, *KNOBS, "--max-cache-size", "lots"), 2, "size")


def test_a_corrupted_entry_is_reported_and_rebuilt(tiny_llama_dir: Path, story_txt: Path) -> None:
    first = run_cli("ask", story_txt, "Who?", "-m", tiny_llama_dir, *KNOBS)
    assert_clean_success(first)
    (entry,) = entries()
    tensors = MemoryCache(os.environ["INFLLM_CACHE_DIR"]).path(entry) / "tensors.safetensors"
    with open(tensors, "r+b") as f:
        f.truncate(tensors.stat().st_size - 100)
    bad = run_cli("cache", "verify")
    assert_clean_failure_with_stdout(bad, 3)
    again = run_cli("ask", story_txt, "Who?", "-m", tiny_llama_dir, *KNOBS)
    assert_clean_success(again)
    warnings = [line for line in again.err.splitlines() if line.startswith("warning:") and "cut at --max-new-tokens" not in line]
    assert len(warnings) == 1 and "unusable" in warnings[0] and "truncated" in warnings[0]
    assert "memory built" in again.err and again.out == first.out
    assert_clean_success(run_cli("cache", "verify"))


def assert_clean_failure_with_stdout(outcome, code: int) -> None:
    assert outcome.returncode == code, outcome.err
    assert "Traceback" not in outcome.err and len([l for l in outcome.err.splitlines() if l.startswith("error:")]) == 1
    assert "FAILED" in outcome.out


def test_cache_ls_rm_clear(tiny_llama_dir: Path, story_txt: Path, story_md: Path) -> None:
    for source in (story_txt, story_md):
        assert_clean_success(run_cli("ask", source, "Who?", "-m", tiny_llama_dir, *KNOBS))
    listed = run_cli("cache", "ls", "--json")
    assert_clean_success(listed)
    rows = [json.loads(line) for line in listed.out.splitlines()]
    assert {Path(r["document"]).name for r in rows} == {"story.txt", "story.md"}
    assert all(r["tokens"] > 0 and r["bytes"] > 0 and r["model"] and r["problem"] is None for r in rows)
    human = run_cli("cache", "ls")
    assert "2 memories" in human.out and "story.md" in human.out
    assert_clean_success(run_cli("cache", "rm", rows[0]["id"][:12]))
    assert entries() == [rows[1]["id"]]
    assert_clean_failure(run_cli("cache", "rm", "0123456789abcdef"), 2, "no cached memory")
    assert_clean_success(run_cli("cache", "clear"))
    assert entries() == []


def test_two_concurrent_runs_leave_one_valid_entry(tiny_llama_dir: Path, tmp_path: Path) -> None:
    doc = tmp_path / "long.txt"
    doc.write_text("\n".join(f"{SENTENCES[i % 4]} Line {i}." for i in range(300)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "infllm_cli", "ask", str(doc), "Who sailed?", "-m", str(tiny_llama_dir), *KNOBS]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=env) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0 and b"Traceback" not in err, err.decode()
    assert results[0][0] == results[1][0]
    errs = [err.decode() for _, err in results]
    assert any("memory built" in e for e in errs)
    (entry,) = entries()
    assert MemoryCache(os.environ["INFLLM_CACHE_DIR"]).verify(entry) is None
    later = run_cli("ask", doc, "Who sailed?", "-m", tiny_llama_dir, *KNOBS)
    assert "memory loaded from the cache" in later.err and later.stdout == results[0][0]
