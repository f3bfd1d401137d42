"""``infllm eval jsonl`` in process (CliRunner) on small benchmark files with the tiny random models:
the table and --json, --task/--limit, --metric, the predictions file, and errors with their exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from infllm_cli.longbench import NO_QUESTION, read_rows, score
from tests.cli.conftest import KNOBS, SENTENCES
from tests.cli.test_cli import assert_one_line_error, run

STORY = " ".join(SENTENCES * 3)  # about 150 tokens: more than the 64-token window of KNOBS

# scripted answers for test_scores_of_known_answers, by question
SCRIPT = {
    "Who betrayed the captain?": "The first mate.",  # EM 1, substring 1, F1 1
    "Where did the ship sail?": "It sailed across the sea",  # EM 0, substring 1, F1 2/3
    "What did the robot love?": "reading",  # all 0
}


def longbench_row(question: str, answers: list[str], dataset: str, _id: str) -> dict:
    return {"input": question, "context": STORY, "answers": answers, "length": 150, "dataset": dataset,
            "language": "en", "all_classes": None, "_id": _id}


@pytest.fixture
def longbench_file(tmp_path: Path) -> Path:
    rows = [
        longbench_row("Who betrayed the captain?", ["the first mate"], "qasper", "q1"),
        longbench_row("Where did the ship sail?", ["across the sea"], "qasper", "q2"),
        longbench_row("What did the robot love?", ["long books", "books"], "hotpotqa", "h1"),
    ]
    path = tmp_path / "longbench.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def eval_jsonl(cli: CliRunner, model: Path, *args: object):
    return run(cli, "eval", "jsonl", *args, "-m", model, *KNOBS, "--backend", "torch", "--max-new-tokens", "3")


def cells(table: str) -> list[list[str]]:
    return [line.split() for line in table.strip().splitlines()]


@pytest.fixture
def scripted(monkeypatch) -> list[str]:
    """Answers from SCRIPT instead of the random model; returns the questions asked, in order."""
    from infllm_cli.cli.session import DocumentSession

    asked: list[str] = []

    def ask(self, question, gen, history=()):
        asked.append(question)
        return iter([SCRIPT.get(question, "")])

    monkeypatch.setattr(DocumentSession, "ask", ask)
    return asked


def test_scores_of_known_answers(cli, tiny_chat_model_dir: Path, longbench_file: Path, scripted: list[str], monkeypatch) -> None:
    from infllm_cli.runner import Runner

    resets: list[int] = []
    original = Runner.reset
    monkeypatch.setattr(Runner, "reset", lambda self: (resets.append(1), original(self))[1])

    result = eval_jsonl(cli, tiny_chat_model_dir, longbench_file)
    assert result.exit_code == 0, result.stderr
    assert scripted == list(SCRIPT)
    assert len(resets) == 1 + 3  # the runner's own, then one per row
    table = cells(result.stdout)
    assert table[0] == ["task", "rows", "EM", "%", "substring", "%", "F1", "%"]
    assert table[1:] == [
        ["qasper", "2", "50.00", "100.00", "83.33"],
        ["hotpotqa", "1", "0.00", "0.00", "0.00"],
        ["average", "(2", "tasks)", "3", "25.00", "50.00", "41.67"],
    ]
    assert "answered 3 rows of 2 tasks" in result.stderr

    result = eval_jsonl(cli, tiny_chat_model_dir, longbench_file, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["metrics"] == ["em", "substring", "f1"] and report["attention"] == "infllm"
    assert report["memory"]["n_local"] == 64 and report["max_new_tokens"] == 3
    assert report["tasks"]["qasper"] == pytest.approx({"rows": 2, "em": 0.5, "substring": 1.0, "f1": 5 / 6})
    assert report["tasks"]["hotpotqa"] == {"rows": 1, "em": 0.0, "substring": 0.0, "f1": 0.0}
    assert report["overall"] == pytest.approx({"rows": 3, "tasks": 2, "em": 0.25, "substring": 0.5, "f1": 5 / 12})


def test_one_metric(cli, tiny_chat_model_dir: Path, longbench_file: Path, scripted: list[str]) -> None:
    result = eval_jsonl(cli, tiny_chat_model_dir, longbench_file, "--metric", "f1", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["metrics"] == ["f1"] and set(report["tasks"]["qasper"]) == {"rows", "f1"}
    result = eval_jsonl(cli, tiny_chat_model_dir, longbench_file, "--metric", "substring")
    assert result.exit_code == 0, result.stderr
    assert cells(result.stdout)[0] == ["task", "rows", "substring", "%"]
    assert cells(result.stdout)[1] == ["qasper", "2", "100.00"]


def test_ruler_and_infinitebench_rows(cli, tiny_chat_model_dir: Path, tmp_path: Path, scripted: list[str]) -> None:
    ruler = tmp_path / "niah_single_1" / "validation.jsonl"
    ruler.parent.mkdir()
    ruler.write_text(json.dumps({"index": 0, "input": STORY + " What is the magic number?", "outputs": ["4821"], "length": 160}) + "\n")
    result = eval_jsonl(cli, tiny_chat_model_dir, ruler, "--json")
    assert result.exit_code == 0, result.stderr
    assert scripted == [NO_QUESTION]  # RULER's input is the document; its request is at its end
    assert json.loads(result.stdout)["tasks"] == {"niah_single_1": {"rows": 1, "em": 0.0, "substring": 0.0, "f1": 0.0}}

    infinite = tmp_path / "longbook_choice_eng.jsonl"
    infinite.write_text(json.dumps({"id": 1, "context": STORY, "input": "Who betrayed the captain?", "answer": ["the first mate"],
                                    "options": ["the robot", "the first mate"]}) + "\n")
    result = eval_jsonl(cli, tiny_chat_model_dir, infinite, "--json")
    assert result.exit_code == 0, result.stderr
    assert scripted[-1] == "Who betrayed the captain?\n\nA. the robot\nB. the first mate"


def test_real_generation_task_limit_and_predictions(cli, tiny_chat_model_dir: Path, longbench_file: Path, tmp_path: Path) -> None:
    preds = tmp_path / "preds.jsonl"
    result = eval_jsonl(cli, tiny_chat_model_dir, longbench_file, "--task", "qasper", "--json", "--predictions", preds)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert list(report["tasks"]) == ["qasper"] and report["overall"]["rows"] == 2
    lines = [json.loads(line) for line in preds.read_text().splitlines()]
    assert [(p["id"], p["task"], p["answers"]) for p in lines] == [("q1", "qasper", ["the first mate"]), ("q2", "qasper", ["across the sea"])]
    rows = read_rows(longbench_file)
    for p, row in zip(lines, rows):
        assert isinstance(p["prediction"], str) and p["scores"] == score(p["prediction"], row)
    for m in ("em", "substring", "f1"):  # the task means are the means of the rows written
        assert report["tasks"]["qasper"][m] == pytest.approx(sum(p["scores"][m] for p in lines) / 2)

    # never overwrite what is there, unless --force
    before = preds.read_text()
    refused = eval_jsonl(cli, tiny_chat_model_dir, longbench_file, "--predictions", preds)
    assert_one_line_error(refused, 2, "already exists", "--force")
    assert preds.read_text() == before

    result = eval_jsonl(cli, tiny_chat_model_dir, longbench_file, "--limit", "1", "--task", "hotpotqa", "--task", "qasper",
                        "--predictions", preds, "--force")
    assert result.exit_code == 0, result.stderr
    assert cells(result.stdout)[1][:2] == ["qasper", "1"] and len(cells(result.stdout)) == 3
    assert [json.loads(line)["id"] for line in preds.read_text().splitlines()] == ["q1"]


def test_errors(cli, tiny_chat_model_dir: Path, longbench_file: Path, tmp_path: Path) -> None:
    m = tiny_chat_model_dir
    assert_one_line_error(eval_jsonl(cli, m, tmp_path / "missing.jsonl"), 3, "no such file")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(longbench_file.read_text().splitlines()[0] + "\n{oops\n")
    assert_one_line_error(eval_jsonl(cli, m, bad), 3, f"{bad}, line 2: invalid JSON")
    bad.write_text('{"question": "q", "text": "t"}\n')
    assert_one_line_error(eval_jsonl(cli, m, bad), 3, "line 1: not a LongBench")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert_one_line_error(eval_jsonl(cli, m, empty), 3, "no rows")
    assert_one_line_error(eval_jsonl(cli, m, longbench_file, "--task", "nope"), 2, "no rows of task nope", "qasper, hotpotqa")
    assert_one_line_error(eval_jsonl(cli, m, longbench_file, "--predictions", tmp_path / "no" / "dir.jsonl"), 2, "no such directory")
    assert_one_line_error(eval_jsonl(cli, m, longbench_file, "--predictions", tmp_path), 2, "is a directory")
    for args in (["--metric", "bleu"], ["--limit", "0"]):
        usage = eval_jsonl(cli, m, longbench_file, *args)
        assert usage.exit_code == 2 and "Traceback" not in usage.stderr and usage.stdout == ""


def test_predictions_on_a_full_device_is_an_output_error(cli, tiny_chat_model_dir: Path, longbench_file: Path, scripted: list[str]) -> None:
    result = eval_jsonl(cli, tiny_chat_model_dir, longbench_file, "--predictions", "/dev/full", "--force")
    assert_one_line_error(result, 74, "cannot write --predictions /dev/full", "No space left")
