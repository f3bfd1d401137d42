"""A command run in process leaves the host's logging configuration as it found it."""

from __future__ import annotations

import logging
from pathlib import Path

from typer.testing import CliRunner

from infllm_cli.cli.app import app


def test_logging_is_restored_after_a_command(tmp_path: Path, caplog) -> None:
    root = logging.getLogger("infllm")
    before = (list(root.handlers), root.propagate, root.level)
    assert CliRunner().invoke(app, ["count", str(tmp_path / "missing")]).exit_code == 3
    doc = tmp_path / "a.txt"
    doc.write_text("hello world")
    result = CliRunner().invoke(app, ["count", str(doc), "-m", "not-cached/model"])
    assert result.exit_code == 0, result.stderr
    assert (list(root.handlers), root.propagate, root.level) == before
    with caplog.at_level(logging.WARNING):
        logging.getLogger("infllm.sources").warning("still propagates")
    assert "still propagates" in caplog.text
