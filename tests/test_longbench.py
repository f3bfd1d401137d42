"""Benchmark files and metrics (:mod:`infllm_cli.longbench`): normalisation, EM / substring / F1 on
hand-checked examples, the three row formats, bad rows with their line numbers, and a run of rows
through the question-answering path of a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infllm_cli.errors import InputError, UsageError
from infllm_cli.longbench import (
    NO_QUESTION,
    BenchRow,
    EvalResult,
    RowResult,
    exact_match,
    normalize_answer,
    read_rows,
    resolve_choice,
    score,
    substring_match,
    token_f1,
)


def write_jsonl(path: Path, *rows: object) -> Path:
    """Rows as JSON lines; a str row is written as it is (blank or broken lines)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


LONGBENCH = {"input": "Who wrote it?", "context": "The committee wrote the report.", "answers": ["the committee"],
             "length": 5, "dataset": "qasper", "language": "en", "all_classes": None, "_id": "lb-1"}
INFINITEBENCH = {"id": 7, "context": "The robot read long books.", "input": "What did the robot read?",
                 "answer": "books", "options": ["poems", "books", "maps", "letters"]}
RULER = {"index": 3, "input": "The magic number is 4821. What is the magic number?", "outputs": ["4821"], "length": 12}


# -- normalisation and metrics -----------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("The  Quick, brown FOX!", "quick brown fox"),
    ("An apple a day", "apple day"),
    ("Theory of the anthem", "theory of anthem"),  # articles only as whole words
    ("U.S.A. don't", "usa dont"),  # punctuation is removed, not replaced by a space
    ("first-mate", "firstmate"),
    ("\n\t x   y \n", "x y"),
    ("CAFÉ «x»", "café «x»"),  # only ASCII punctuation, as in the SQuAD/LongBench scripts
    ("The", ""),
])
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_exact_match() -> None:
    assert exact_match("The Eiffel Tower.", ["eiffel tower"]) == 1.0
    assert exact_match("Eiffel Tower in Paris", ["Eiffel Tower"]) == 0.0
    assert exact_match("Paris", ["London", "paris!"]) == 1.0  # any reference answer
    assert exact_match("the", ["A"]) == 1.0  # both normalise to nothing
    assert exact_match("", ["x"]) == 0.0


def test_substring_match() -> None:
    assert substring_match("I think it's 42.", ["42"]) == 1.0
    assert substring_match("Eiffel Tower in Paris", ["the eiffel tower"]) == 1.0
    assert substring_match("4 2", ["42"]) == 0.0
    assert substring_match("no idea", ["London", "Paris"]) == 0.0
    assert substring_match("paris, then london", ["Berlin", "LONDON"]) == 1.0
    # an answer that normalises to nothing does not match every prediction
    assert substring_match("anything at all", ["The"]) == 0.0
    assert substring_match("a", ["The"]) == 1.0


def test_token_f1() -> None:
    # pred {cat, sat, on, mat} vs ref {cat, on, mat}: precision 3/4, recall 1 -> 6/7
    assert token_f1("the cat sat on the mat", ["cat on mat"]) == pytest.approx(6 / 7)
    assert token_f1("new york city", ["York"]) == pytest.approx(0.5)  # precision 1/3, recall 1
    assert token_f1("new york city", ["York", "New York City"]) == 1.0  # best reference
    assert token_f1("paris paris", ["paris"]) == pytest.approx(2 / 3)  # repeated words count once each
    assert token_f1("blue", ["red"]) == 0.0
    assert token_f1("", ["x"]) == 0.0
    assert token_f1("The", ["a"]) == 1.0  # both empty after normalisation


def test_multiple_choice_letters() -> None:
    options = ["poems", "books", "maps", "letters"]
    assert resolve_choice("B", options) == "books"
    assert resolve_choice("(C) the maps", options) == "maps"
    assert resolve_choice(" D.", options) == "letters"
    assert resolve_choice("A cat", options) == "A cat"  # a sentence, not a letter
    assert resolve_choice("E", options) == "E"  # no such option
    assert resolve_choice("B", None) == "B"
    row = BenchRow("ctx", "q", ("books",), "t", "1", "infinitebench", options=tuple(options))
    assert score("B", row) == {"em": 1.0, "substring": 1.0, "f1": 1.0}
    assert score("A", row) == {"em": 0.0, "substring": 0.0, "f1": 0.0}
    assert score("books", row, ["f1"]) == {"f1": 1.0}
    letter = BenchRow("ctx", "q", ("B",), "t", "1", "infinitebench", options=tuple(options))
    assert score("B", letter)["em"] == 1.0  # a letter reference still matches a letter prediction


def test_per_task_means_and_average_over_tasks() -> None:
    result = EvalResult(("em", "f1"), [
        RowResult("1", "qa", "x", ("x",), {"em": 1.0, "f1": 1.0}),
        RowResult("2", "qa", "y", ("x",), {"em": 0.0, "f1": 0.5}),
        RowResult("3", "sum", "z", ("x",), {"em": 0.0, "f1": 0.25}),
    ])
    assert result.tasks() == {"qa": {"rows": 2, "em": 0.5, "f1": 0.75}, "sum": {"rows": 1, "em": 0.0, "f1": 0.25}}
    assert result.overall() == {"rows": 3, "tasks": 2, "em": 0.25, "f1": 0.5}  # mean of task means
    assert result.to_dict()["metrics"] == ["em", "f1"]


# -- formats -----------------------------------------------------------------------------------------


def test_longbench_row(tmp_path: Path) -> None:
    trec = dict(LONGBENCH, dataset="trec", _id="lb-2", answers=["Location"], all_classes=["Location", "Person"])
    [a, b] = read_rows(write_jsonl(tmp_path / "any.jsonl", LONGBENCH, trec))
    assert a == BenchRow("The committee wrote the report.", "Who wrote it?", ("the committee",), "qasper", "lb-1",
                         "longbench", line=1, all_classes=None, options=None)
    assert (b.task, b.id, b.line, b.all_classes) == ("trec", "lb-2", 2, ("Location", "Person"))


def test_infinitebench_row(tmp_path: Path) -> None:
    listed = {"id": 8, "context": "c", "input": "q", "answer": ["x", 42], "task": "math_calc"}
    [mc, lst] = read_rows(write_jsonl(tmp_path / "longbook_choice_eng.jsonl", INFINITEBENCH, listed))
    assert mc.format == "infinitebench" and mc.task == "longbook_choice_eng"  # task from the file name
    assert (mc.id, mc.context, mc.question, mc.answers) == ("7", "The robot read long books.", "What did the robot read?", ("books",))
    assert mc.options == ("poems", "books", "maps", "letters")
    assert (lst.task, lst.answers, lst.options) == ("math_calc", ("x", "42"), None)  # task from the row


def test_ruler_row(tmp_path: Path) -> None:
    [row] = read_rows(write_jsonl(tmp_path / "niah_single_1" / "validation.jsonl", RULER))
    assert row.format == "ruler" and row.context == RULER["input"] and row.question == ""  # the input is the document
    assert (row.answers, row.id, row.task) == (("4821",), "3", "niah_single_1")  # RULER's <task>/validation.jsonl
    [row] = read_rows(write_jsonl(tmp_path / "vt.jsonl", RULER))
    assert row.task == "vt"


def test_mixed_file_blank_lines_task_filter_and_limit(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "mixed.jsonl", LONGBENCH, "", RULER, dict(LONGBENCH, _id="lb-9"), "   ", INFINITEBENCH)
    rows = read_rows(path)
    assert [(r.format, r.line) for r in rows] == [("longbench", 1), ("ruler", 3), ("longbench", 4), ("infinitebench", 6)]
    assert [r.id for r in read_rows(path, ["qasper"])] == ["lb-1", "lb-9"]
    assert [r.id for r in read_rows(path, ["qasper", "mixed"])] == ["lb-1", "3", "lb-9", "7"]
    assert [r.id for r in read_rows(path, ["qasper"], limit=1)] == ["lb-1"]
    assert [r.id for r in read_rows(path, limit=2)] == ["lb-1", "3"]
    with pytest.raises(UsageError, match="no rows of task nope; its tasks: qasper, mixed") as err:
        read_rows(path, ["nope"])
    assert err.value.exit_code == 2


def test_limit_stops_reading(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "x.jsonl", LONGBENCH, LONGBENCH, "{broken")
    assert len(read_rows(path, limit=2)) == 2
    with pytest.raises(InputError, match="line 3"):
        read_rows(path)


# -- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("line, fragment", [
    ("{not json", "line 2: invalid JSON"),
    ("[1, 2]", "line 2: expected a JSON object, got list"),
    (json.dumps({"question": "q", "text": "t"}), "line 2: not a LongBench"),
    (json.dumps(dict(LONGBENCH, answers={"a": 1})), "line 2: 'answers' must be a string or a list of strings"),
    (json.dumps(dict(LONGBENCH, answers=[])), "line 2: no reference answers"),
    (json.dumps(dict(LONGBENCH, context="  ")), "line 2: the context is empty"),
    (json.dumps(dict(RULER, input="")), "line 2: the input is empty"),
    (json.dumps(dict(LONGBENCH, input=5)), "line 2: 'input' must be a string"),
])
def test_bad_rows_name_file_and_line(tmp_path: Path, line: str, fragment: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", LONGBENCH, line, LONGBENCH)
    with pytest.raises(InputError) as err:
        read_rows(path)
    assert str(path) in str(err.value) and fragment in str(err.value), str(err.value)
    assert err.value.exit_code == 3


def test_unknown_keys_are_listed(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", {"question": "q", "text": "t"})
    with pytest.raises(InputError, match="line 1: .*keys: question, text"):
        read_rows(path)


def test_empty_missing_and_non_utf8_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(InputError, match="empty.jsonl: no rows"):
        read_rows(empty)
    blank = write_jsonl(tmp_path / "blank.jsonl", "", "  ")
    with pytest.raises(InputError, match="no rows"):
        read_rows(blank)
    with pytest.raises(InputError, match="no such file"):
        read_rows(tmp_path / "missing.jsonl")
    with pytest.raises(InputError, match="not a file"):
        read_rows(tmp_path)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(json.dumps(LONGBENCH).encode() + b"\n" + b'{"input": "caf\xe9"}\n')
    with pytest.raises(InputError, match="line 2: not UTF-8"):
        read_rows(latin)


# -- running rows through the question-answering path ------------------------------------------------


def test_evaluate_rows_reads_each_row_into_an_emptied_memory(tiny_chat_model_dir: Path, monkeypatch) -> None:
    from infllm_cli.cli.session import DocumentSession
    from infllm_cli.config import GenerationConfig, MemoryConfig
    from infllm_cli.longbench import evaluate_rows
    from infllm_cli.models import load_model
    from infllm_cli.prompting import PromptFormat
    from infllm_cli.runner import Runner

    loaded = load_model(str(tiny_chat_model_dir), device="cpu")
    memory = MemoryConfig(n_init=4, n_local=64, block_size=16, topk=2, repr_topk=2, exc_block_size=16, chunk_size=64)
    runner = Runner(loaded, memory, backend="torch")
    prefix = PromptFormat.for_tokenizer(loaded.tokenizer).qa_prefix()

    reads: list[tuple[int, int]] = []  # (document tokens, tokens in the memory after reading)
    original_read = DocumentSession.read

    def recording_read(self, document, on_progress=None):
        fed = original_read(self, document, on_progress)
        reads.append((document.count, self.runner.tokens_seen))
        return fed

    questions: list[str] = []
    original_suffix = PromptFormat.qa_suffix

    def recording_suffix(self, question, history=()):
        questions.append(question)
        return original_suffix(self, question, history)

    monkeypatch.setattr(DocumentSession, "read", recording_read)
    monkeypatch.setattr(PromptFormat, "qa_suffix", recording_suffix)
    story = " ".join(["The captain sailed the ship across the sea. The first mate betrayed him."] * 6)
    first = BenchRow(story, "Who betrayed the captain?", ("the first mate",), "qa", "a", "longbench")
    ruler = BenchRow("The magic number is 4821. What is the magic number?", "", ("4821",), "niah", "r", "ruler")
    choice = BenchRow("The robot read long books.", "What did the robot read?", ("books",), "mc", "c", "infinitebench",
                      options=("poems", "books"))
    seen: list[str] = []
    result = evaluate_rows(runner, [first, ruler, choice, first], GenerationConfig(max_new_tokens=4), on_row=lambda r: seen.append(r.id))

    assert seen == ["a", "r", "c", "a"] and [r.task for r in result.rows] == ["qa", "niah", "mc", "qa"]
    encode = lambda text: len(loaded.tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    assert [count for count, _ in reads] == [encode(story), encode(ruler.context), encode(choice.context), encode(story)]
    assert all(seen_tokens == len(prefix) + count for count, seen_tokens in reads)  # nothing left from earlier rows
    assert questions == ["Who betrayed the captain?", NO_QUESTION, "What did the robot read?\n\nA. poems\nB. books",
                         "Who betrayed the captain?"]
    assert result.rows[0].prediction == result.rows[3].prediction  # same row, same answer: a fresh memory each time
    for row, res in zip([first, ruler, choice, first], result.rows):
        assert res.answers == row.answers and res.scores == score(res.prediction, row)
    assert result.tasks()["qa"]["rows"] == 2 and result.overall()["tasks"] == 3
