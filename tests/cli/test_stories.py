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


def test_count_and_perplexity_token_counts_are_explained(stories_dir: Path, tmp_path: Path) -> None:
    """long_text.txt holds 22 literal ``<s>`` separators: ``count`` (like ``ask``) reads them as plain text,
    ``eval perplexity`` as the tokenizer does by default (BOS tokens, matching the model card's 8,192 ids),
    and says so on stderr and in its JSON."""
    text = stories_dir / "long_text.txt"
    count = CliRunner().invoke(app, ["count", str(text), "-m", str(stories_dir), "--json"])
    assert count.exit_code == 0, count.stderr
    ppl = CliRunner().invoke(app, ["eval", "perplexity", str(text), "-m", str(stories_dir), "--preset", "tiny",
                                   "--attention", "streaming", "--max-tokens", "600", "--json"])
    assert ppl.exit_code == 0, ppl.stderr
    assert json.loads(count.stdout)["tokens"] == 8279
    record = json.loads(ppl.stdout)
    assert "22 special-token strings in the text read as special tokens" in record["config"]["tokenization"]
    assert "22 special-token strings in the text (e.g. '<s>') were read as special tokens" in ppl.stderr
    assert "`ask` and `count` read them as plain text" in ppl.stderr
