"""The CLI process under hostile stdio, options and signals (real subprocesses, see harness.py).

Output side: a closed stdout pipe ends quietly with 141, a full stdout with 74 and one error line, an
unwritable stderr never changes the exit code, and nothing prints "Exception ignored" at shutdown.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.cli.conftest import KNOBS, SENTENCES
from tests.hostile.harness import Outcome, assert_clean_failure, assert_clean_success, error_lines, run_cli


@pytest.fixture
def story(tmp_path: Path) -> Path:
    path = tmp_path / "story.txt"
    path.write_text("\n".join(f"{SENTENCES[i % len(SENTENCES)]} Day {i}." for i in range(16)) + "\n")
    return path


@pytest.fixture
def full():
    with open("/dev/full", "wb") as fh:
        yield fh


@pytest.fixture
def closed_pipe():
    """The write end of a pipe whose reader has gone away."""
    r, w = os.pipe()
    os.close(r)
    yield w
    os.close(w)


def assert_quiet(outcome: Outcome, code: int) -> None:
    """Exit ``code`` with nothing but (at most) status lines on stderr: no error line, no traceback, no
    shutdown noise."""
    err = outcome.err
    assert outcome.returncode == code, f"exit {outcome.returncode}, wanted {code}; stderr:\n{err}"
    for noise in ("Traceback", "Exception ignored", "BrokenPipeError", "Fatal Python error"):
        assert noise not in err, err
    assert not error_lines(outcome), err


def model_args(model: Path) -> list[object]:
    return ["-m", model, *KNOBS]


# -- stdout closed or full, stderr full ------------------------------------------------------------------


def test_answer_into_closed_pipe_ends_quietly_141(tiny_chat_model_dir: Path, story: Path, closed_pipe: int) -> None:
    outcome = run_cli("ask", story, "Who?", *model_args(tiny_chat_model_dir), stdout=closed_pipe)
    assert_quiet(outcome, 141)


def test_json_into_closed_pipe_ends_quietly_141(tiny_chat_model_dir: Path, story: Path, closed_pipe: int) -> None:
    outcome = run_cli("ask", story, "Who?", "-q", "Why?", "--json", *model_args(tiny_chat_model_dir), stdout=closed_pipe)
    assert_quiet(outcome, 141)


def test_answer_to_full_device_is_74_with_one_line(tiny_chat_model_dir: Path, story: Path, full) -> None:
    outcome = run_cli("ask", story, "Who?", *model_args(tiny_chat_model_dir), stdout=full)
    line = assert_clean_failure(outcome, 74, "cannot write to stdout")
    assert "No space left on device" in line


def test_answer_with_full_stderr_still_succeeds(tiny_chat_model_dir: Path, story: Path, full) -> None:
    outcome = run_cli("ask", story, "Who?", *model_args(tiny_chat_model_dir), stderr=full)
    assert outcome.returncode == 0
    assert outcome.stdout.strip()


def test_count_into_closed_pipe_and_full_device(story: Path, closed_pipe: int, full, tmp_path: Path) -> None:
    env = {"TIKTOKEN_CACHE_DIR": str(tmp_path / "none"), "XDG_CONFIG_HOME": str(tmp_path)}
    assert_quiet(run_cli("count", story, "-m", "not-cached/model", stdout=closed_pipe, env=env), 141)
    assert_clean_failure(run_cli("count", story, "-m", "not-cached/model", stdout=full, env=env), 74, "cannot write to stdout")


def test_input_and_usage_errors_keep_their_code_when_stderr_is_full(tmp_path: Path, full) -> None:
    assert run_cli("ask", tmp_path / "missing.txt", "Who?", "-m", "x/y", stderr=full).returncode == 3
    assert run_cli("count", tmp_path / "missing.txt", stderr=full).returncode == 3
    assert run_cli("ask", "--no-such-option", stderr=full).returncode == 2
    assert run_cli("count", "--n-local", "-5", tmp_path / "missing", stderr=full).returncode == 2


def test_help_and_version_to_full_or_closed_stdout(full, closed_pipe: int) -> None:
    assert_clean_failure(run_cli("--help", stdout=full), 74, "cannot write to stdout")
    assert_clean_failure(run_cli("--version", stdout=full), 74, "cannot write to stdout")
    assert_clean_failure(run_cli("ask", "--help", stdout=full), 74, "cannot write to stdout")
    assert_quiet(run_cli("--help", stdout=closed_pipe), 141)
    assert_quiet(run_cli("summarize", "--help", stdout=closed_pipe), 141)


def test_closed_stdout_is_74_before_any_work(story: Path) -> None:
    outcome = run_cli("count", story, "-m", "not-cached/model", close=(1,))
    assert_clean_failure(outcome, 74, "stdout")


def test_closed_stderr_does_not_change_the_outcome(story: Path, tmp_path: Path) -> None:
    assert run_cli("count", tmp_path / "missing", close=(2,)).returncode == 3
    outcome = run_cli("count", story, "-m", "not-cached/model", close=(2,), env={"TIKTOKEN_CACHE_DIR": str(tmp_path / "none")})
    assert outcome.returncode == 0 and b"tokens:" in outcome.stdout


def test_chat_with_closed_stdin_is_an_input_error(story: Path) -> None:
    # fails before any model is looked at (the model does not exist)
    assert_clean_failure(run_cli("chat", story, "-m", "no/such-model", close=(0,)), 3, "stdin is closed")
