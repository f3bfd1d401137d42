"""End to end on a real checkpoint: stories260k, a base model without chat template (skips when absent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infllm_cli.cli.app import app

ARGS = ["--preset", "tiny", "--device", "cpu", "--max-new-tokens", "16"]


@pytest.fixture
def stories_text(stories_dir: Path, tmp_path: Path) -> Path:
    """About 1,300 tokens of TinyStories text: several times the tiny preset's 256-token window."""
    path = tmp_path / "stories.txt"
    path.write_text((stories_dir / "long_text.txt").read_text()[:3000])
    return path


def test_ask_on_stories(stories_dir: Path, stories_text: Path) -> None:
    result = CliRunner().invoke(app, ["ask", str(stories_text), "What did Lily find?", "-m", str(stories_dir), *ARGS, "--json"])
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["answer"].strip()
    assert record["stats"]["document_tokens"] > 1000 and record["stats"]["blocks"] > 0
    assert record["stats"]["preset"] == "tiny"


def test_summarize_on_stories(stories_dir: Path, stories_text: Path) -> None:
    result = CliRunner().invoke(app, ["summarize", str(stories_text), "-m", str(stories_dir), *ARGS])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip()


def test_auto_preset_follows_the_trained_context(stories_dir: Path, stories_text: Path) -> None:
    result = CliRunner().invoke(app, ["count", str(stories_text), "-m", str(stories_dir), "--json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["preset"] == "tiny"  # trained on 512 tokens
    assert data["token_basis"] == f"model tokenizer: {stories_dir}" and data["exact"]
