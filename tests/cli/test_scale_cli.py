"""Threads, the memory pre-flight and plain progress lines, as a real process sees them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.cli.conftest import KNOBS
from tests.hostile.harness import assert_clean_failure, assert_clean_success, run_cli


@pytest.fixture(scope="module")
def garbage_weights_dir(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's config and tokenizer, with a weights file that cannot be loaded."""
    path = tmp_path_factory.mktemp("garbage") / "model"
    shutil.copytree(tiny_llama_dir, path)
    (path / "model.safetensors").write_bytes(b"\xff" * 4096)
    return path


def test_threads_option_and_environment_are_honoured_and_logged(story_txt: Path, tiny_llama_dir: Path) -> None:
    out = run_cli("count", story_txt, "-m", tiny_llama_dir, "--threads", "1", "-v")
    assert_clean_success(out)
    assert "threads: 1 (--threads)" in out.err
    out = run_cli("count", story_txt, "-m", tiny_llama_dir, "-v", env={"INFLLM_THREADS": "1"})
    assert_clean_success(out)
    assert "threads: 1 (INFLLM_THREADS)" in out.err
    out = run_cli("count", story_txt, "-m", tiny_llama_dir, "-v", env={"INFLLM_THREADS": ""})
    assert_clean_success(out)
    assert "physical core" in out.err


@pytest.mark.parametrize("args, env", [(["--threads", "0"], {}), (["--threads", "many"], {}), ([], {"INFLLM_THREADS": "-3"})])
def test_invalid_thread_counts_are_usage_errors(story_txt: Path, tiny_llama_dir: Path, args: list, env: dict) -> None:
    out = run_cli("count", story_txt, "-m", tiny_llama_dir, *args, env=env)
    assert_clean_failure(out, 2, contains="positive integer")


def test_preflight_refuses_before_loading_weights(story_txt: Path, tiny_llama_dir: Path) -> None:
    out = run_cli("ask", story_txt, "Who?", "-m", tiny_llama_dir, *KNOBS, "--memory-budget", "64M", "-v")
    line = assert_clean_failure(out, 3, contains="predicted to need")
    assert "64.0 MiB is available (--memory-budget)" in line and "--skip-memory-check" in line
    assert "loaded " not in out.err  # the weights were never loaded (-v logs the load)
    out = run_cli("ask", story_txt, "Who?", "-m", tiny_llama_dir, *KNOBS, env={"INFLLM_MEMORY_BUDGET": "64M"})
    assert_clean_failure(out, 3, contains="(INFLLM_MEMORY_BUDGET)")
    # the same run allowed to start loads the weights and answers
    out = run_cli("ask", story_txt, "Who?", "-m", tiny_llama_dir, *KNOBS, "--memory-budget", "64M", "--skip-memory-check", "-v")
    assert_clean_success(out)
    assert "loaded " in out.err


def test_damaged_weights_fail_before_the_document_is_read(story_txt: Path, garbage_weights_dir: Path) -> None:
    """A weights file that is not safetensors is refused from its header (exit 5), before any read or load."""
    out = run_cli("ask", story_txt, "Who?", "-m", garbage_weights_dir, *KNOBS, "--memory-budget", "64M")
    assert_clean_failure(out, 5, contains="not a valid safetensors file")


def test_bad_memory_budget_is_a_usage_error(story_txt: Path, tiny_llama_dir: Path) -> None:
    out = run_cli("ask", story_txt, "Who?", "-m", tiny_llama_dir, *KNOBS, "--memory-budget", "lots")
    assert_clean_failure(out, 2, contains="--memory-budget")


def test_plain_progress_lines_when_stderr_is_not_a_terminal(story_txt: Path, tiny_llama_dir: Path) -> None:
    out = run_cli("ask", story_txt, "Who?", "-m", tiny_llama_dir, *KNOBS, "--progress-interval", "0.000001")
    assert_clean_success(out)
    lines = [line for line in out.err.splitlines() if line.startswith("prefill: ")]
    assert len(lines) >= 2, out.err
    assert "tokens (" in lines[-1] and "%)" in lines[-1] and "ETA " in lines[-1] and "elapsed " in lines[-1]
    assert "\x1b[" not in out.err and "\r" not in out.err
    for quiet in (["--quiet"], ["--progress-interval", "0"]):
        out = run_cli("ask", story_txt, "Who?", "-m", tiny_llama_dir, *KNOBS, *quiet)
        assert_clean_success(out)
        assert "prefill: " not in out.err
    out = run_cli("ask", story_txt, "Who?", "-m", tiny_llama_dir, *KNOBS, env={"INFLLM_PROGRESS_INTERVAL": "soon"})
    assert_clean_failure(out, 2, contains="INFLLM_PROGRESS_INTERVAL")
