"""Shared inputs for the CLI tests: small documents, small memory knobs, an in-process runner."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

# Small memory knobs so that a few hundred tokens already fill memory blocks, and short answers.
KNOBS = [
    "--device", "cpu",
    "--n-init", "4", "--n-local", "64", "--block-size", "16", "--topk", "2", "--repr-topk", "2",
    "--exc-block-size", "16", "--chunk-size", "128",
    "--max-new-tokens", "6",
]

SENTENCES = [
    "The captain sailed the ship across the sea.",
    "The first mate betrayed him for a little gold.",
    "Once upon a time there was a little robot who loved to read long books.",
    "The committee wrote the report about the ship.",
]


@pytest.fixture
def cli() -> CliRunner:
    return CliRunner()


@pytest.fixture
def story_txt(tmp_path: Path) -> Path:
    """About 550 tokens of plain text for the tiny tokenizer."""
    path = tmp_path / "story.txt"
    lines = [f"{SENTENCES[i % len(SENTENCES)]} Day {i}." for i in range(16)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def story_md(tmp_path: Path) -> Path:
    """A Markdown document with three sections."""
    path = tmp_path / "story.md"
    parts = []
    for title, sentence in (("The Ship", SENTENCES[0]), ("The Mutiny", SENTENCES[1]), ("The Robot", SENTENCES[2])):
        parts.append(f"# {title}\n\n" + " ".join([sentence] * 4) + "\n")
    path.write_text("\n".join(parts))
    return path


@pytest.fixture
def book_pdf(tmp_path: Path) -> Path:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for i in range(2):
        pdf.add_page()
        pdf.start_section(f"Chapter {i + 1}")
        pdf.multi_cell(0, 8, " ".join(SENTENCES[i : i + 2] * 2))
    path = tmp_path / "book.pdf"
    pdf.output(str(path))
    return path
