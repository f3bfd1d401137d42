"""``infllm eval recall`` through the CLI: table and JSON output, oracle rows, one-line errors."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from infllm_cli.cli.eval_cmd import eval_app
from infllm_cli.config import SELECTIONS

KNOBS = ["--n-init", "4", "--n-local", "64", "--block-size", "16", "--topk", "2", "--repr-topk", "2",
         "--exc-block-size", "16", "--chunk-size", "128", "--device", "cpu", "--backend", "torch"]


def test_recall_json_has_a_row_per_task_length_depth_variant(tiny_llama_dir):
    result = CliRunner().invoke(eval_app, ["recall", "--model", str(tiny_llama_dir), *KNOBS, "--task", "passkey",
                                           "--task", "copy", "--length", "500", "--depth", "0.2", "--depth", "0.6",
                                           "--trials", "2", "--oracle", "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["memory"]["n_local"] == 64 and data["memory"]["question_topk"] == SELECTIONS["default"]["question_topk"] == 4
    rows = data["rows"]
    assert len(rows) == 2 * 2 * 2  # tasks x depths x (selection, oracle)
    assert {r["variant"] for r in rows} == {"infllm-default", "infllm-default+oracle"}
    for r in rows:
        assert r["trials"] == 2 and 0.0 <= r["token_accuracy"] <= 1.0 and r["nll"] > 0
        assert len(r["layer_hit"]) == 2  # the tiny model's layers
        if r["variant"].endswith("+oracle"):
            assert r["evidence_hit"] == 1.0  # forced blocks are always read


def test_recall_all_facts_rows(tiny_llama_dir):
    result = CliRunner().invoke(eval_app, ["recall", "--model", str(tiny_llama_dir), *KNOBS, "--task", "multikey",
                                           "--length", "700", "--depth", "0.5", "--trials", "1", "--oracle",
                                           "--all-facts", "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert [r["variant"] for r in rows] == ["infllm-default", "infllm-default+oracle", "infllm-default+all-facts"]
    assert rows[2]["evidence_hit"] == 1.0


def test_recall_with_question_exact_reads_and_reports_it(tiny_llama_dir):
    result = CliRunner().invoke(eval_app, ["recall", "--model", str(tiny_llama_dir), *KNOBS, "--task", "multikey",
                                           "--length", "700", "--depth", "0.5", "--trials", "1", "--question-exact", "2",
                                           "--question-topk", "0", "--question-shared", "0", "--question-rescore", "8",
                                           "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["memory"]["question_exact"], data["memory"]["question_rescore"], data["memory"]["question_topk"]) == (2, 8, 0)
    assert len(data["rows"]) == 1 and 0.0 <= data["rows"][0]["evidence_hit"] <= 1.0


def test_recall_paper_selection_and_table(tiny_llama_dir):
    result = CliRunner().invoke(eval_app, ["recall", "--model", str(tiny_llama_dir), *KNOBS, "--selection", "paper",
                                           "--task", "multikey", "--length", "700", "--depth", "0.5", "--trials", "1",
                                           "--quiet"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["task", "length", "depth"]
    assert lines[1].split()[:4] == ["multikey", "700", "0.50", "infllm-paper"]


def test_recall_errors_are_one_line(tiny_llama_dir, tmp_path):
    model = ["--model", str(tiny_llama_dir), *KNOBS]
    cases = [
        (["recall", *model, "--task", "haystack"], 2, "unknown task"),
        (["recall", *model, "--length", "lots"], 2, "not a length"),
        (["recall", *model, "--depth", "1.5"], 2, "--depth"),
        (["recall", *model, "--key-format", "emoji"], 2, "key format"),
        (["recall", *model, "--length", "30", "--task", "multivalue"], 2, "too short"),
        (["recall", *model, "--filler", str(tmp_path / "nothing.txt")], 2, "filler"),
        (["recall", *model, "--oracle", "--attention", "dense"], 2, "--oracle"),
        (["recall", *model, "--all-facts", "--attention", "streaming"], 2, "--all-facts"),
        (["recall", *model, "--selection", "best"], 2, "best"),
        (["recall", *model, "--question-exact", "2", "--question-rescore", "0"], 2, "question_rescore"),
    ]
    for args, code, fragment in cases:
        result = CliRunner().invoke(eval_app, args)
        assert result.exit_code == code, (args, result.output)
        assert fragment in result.output, (args, result.output)
        assert "Traceback" not in result.output
