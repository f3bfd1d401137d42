"""Long-context benchmark files (LongBench, InfiniteBench, RULER) and their answer metrics.

Rows of the three public JSON-lines formats are normalised to one :class:`BenchRow`; the format is
recognised per row from its keys. :func:`evaluate_rows` answers every row through the same
question-answering path as ``infllm ask`` (:class:`~infllm_cli.cli.session.DocumentSession`: each row's
context is a fresh document, read into an emptied memory) and scores the answers with the standard
metrics: exact match, substring match and token F1, all after SQuAD/LongBench answer normalisation.

>>> rows = read_rows(Path("qasper.jsonl"), limit=10)
>>> result = evaluate_rows(runner, rows, GenerationConfig(max_new_tokens=32))
>>> result.tasks()["qasper"]["f1"]
"""

from __future__ import annotations

import json
import logging
import re
import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .config import GenerationConfig
from .errors import InputError, UsageError
from .sources.base import ReadReport, Span

log = logging.getLogger("infllm.longbench")

NO_QUESTION = "Complete the task stated in the document."
"""The question asked for rows without a separate one (RULER; LongBench summarization tasks)."""

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_CHOICE = re.compile(r"^\s*\(?([A-Z])(?:\)|[.:]|\s*$)")


# -- rows ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchRow:
    """One benchmark item, whatever file format it came from.

    ``context`` is the document streamed into the memory, ``question`` what is asked after it (empty
    when the format has none), ``answers`` the reference answers (any one counts), ``line`` the 1-based
    line of the file it was read from.
    """

    context: str
    question: str
    answers: tuple[str, ...]
    task: str
    id: str
    format: str  # "longbench", "infinitebench" or "ruler"
    line: int = 0
    all_classes: tuple[str, ...] | None = None
    options: tuple[str, ...] | None = None


def _strings(value: Any, where: str, key: str) -> tuple[str, ...]:
    """A string, number or list of them as a tuple of strings."""
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in items):
        raise InputError(f"{where}: {key!r} must be a string or a list of strings")
    return tuple(str(v) for v in items)


def _task_from_path(path: Path) -> str:
    """The file stem, or the folder for RULER's ``<task>/validation.jsonl`` layout."""
    if path.stem in ("validation", "test") and path.parent.name:
        return path.parent.resolve().name
    return path.stem


def parse_row(obj: Any, path: Path, line: int) -> BenchRow:
    """Normalise one decoded JSON line; raises :class:`InputError` naming ``path`` and ``line``."""
    where = f"{path}, line {line}"
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    keys = set(obj)

    def ident(*names: str) -> str:
        return next((str(obj[n]) for n in names if obj.get(n) is not None), f"{path.stem}:{line}")

    if {"input", "outputs"} <= keys and "context" not in keys:
        fmt, context, question = "ruler", obj["input"], ""
        answers = _strings(obj["outputs"], where, "outputs")
        task, row_id = str(obj.get("task") or _task_from_path(path)), ident("index", "id")
    elif {"input", "context", "answers"} <= keys:
        fmt, context, question = "longbench", obj["context"], obj["input"]
        answers = _strings(obj["answers"], where, "answers")
        task, row_id = str(obj.get("dataset") or _task_from_path(path)), ident("_id", "id")
    elif {"input", "context", "answer"} <= keys:
        fmt, context, question = "infinitebench", obj["context"], obj["input"]
        answers = _strings(obj["answer"], where, "answer")
        task, row_id = str(obj.get("task") or _task_from_path(path)), ident("id", "_id")
    else:
        raise InputError(
            f"{where}: not a LongBench (input, context, answers), InfiniteBench (input, context, answer) "
            f"or RULER (input, outputs) row; keys: {', '.join(sorted(map(str, keys))) or 'none'}"
        )
    if not isinstance(context, str) or not context.strip():
        raise InputError(f"{where}: the {'input' if fmt == 'ruler' else 'context'} is empty or not a string")
    if question is None:
        question = ""
    if not isinstance(question, str):
        raise InputError(f"{where}: 'input' must be a string")
    if not answers:
        raise InputError(f"{where}: no reference answers")
    classes = _strings(obj["all_classes"], where, "all_classes") if obj.get("all_classes") else None
    options = _strings(obj["options"], where, "options") if obj.get("options") else None
    return BenchRow(context, question, answers, task, row_id, fmt, line, classes, options)


def iter_rows(path: Path) -> Iterator[BenchRow]:
    """Rows of a JSON-lines file, lazily; blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such file: {path}" if not path.exists() else f"not a file: {path}")
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(f"{path}, line {number}: not UTF-8 text") from None
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}, line {number}: invalid JSON ({exc.msg} at column {exc.colno})") from None
            yield parse_row(obj, path, number)


def read_rows(path: Path, tasks: Sequence[str] = (), limit: int | None = None) -> list[BenchRow]:
    """The first ``limit`` rows of ``path`` whose task is one of ``tasks`` (all tasks when empty).

    Parameters
    ----------
    path : a LongBench, InfiniteBench or RULER JSON-lines file (formats may even be mixed)
    tasks : task names to keep; empty keeps every row
    limit : most rows to return; reading stops once they are found

    Raises
    ------
    InputError
        A bad line (named by number), or a file without rows.
    UsageError
        No row has one of the requested ``tasks``.
    """
    wanted = set(tasks)
    seen: list[str] = []
    rows: list[BenchRow] = []
    for row in iter_rows(path):
        if row.task not in seen:
            seen.append(row.task)
        if wanted and row.task not in wanted:
            continue
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    if not seen:
        raise InputError(f"{path}: no rows")
    if not rows:
        raise UsageError(f"{path} has no rows of task {', '.join(sorted(wanted))}; its tasks: {', '.join(seen)}")
    log.debug("%d rows from %s (tasks %s)", len(rows), path, ", ".join(seen))
    return rows


# -- metrics ------------------------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """Lower case, ASCII punctuation removed, articles (a, an, the) dropped, whitespace collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised reference answer."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in answers))


def substring_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when any normalised reference answer occurs in the normalised prediction (an answer that
    normalises to nothing matches only an empty prediction)."""
    pred = normalize_answer(prediction)
    for a in answers:
        ref = normalize_answer(a)
        if (ref in pred) if ref else not pred:
            return 1.0
    return 0.0


def _f1(pred_tokens: list[str], ref_tokens: list[str]) -> float:
    if not pred_tokens or not ref_tokens:
        return float(pred_tokens == ref_tokens)
    common = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, answers: Sequence[str]) -> float:
    """Best F1 over the reference answers of the normalised prediction's words against the answer's."""
    pred = normalize_answer(prediction).split()
    return max((_f1(pred, normalize_answer(a).split()) for a in answers), default=0.0)


METRICS: dict[str, Callable[[str, Sequence[str]], float]] = {"em": exact_match, "substring": substring_match, "f1": token_f1}


def resolve_choice(prediction: str, options: Sequence[str] | None) -> str:
    """For multiple choice: a prediction that is an option letter (``B``, ``B.``, ``(B) ...``) becomes
    that option's text; anything else is returned unchanged."""
    if options:
        m = _CHOICE.match(prediction)
        if m and ord(m.group(1)) - ord("A") < len(options):
            return options[ord(m.group(1)) - ord("A")]
    return prediction


def score(prediction: str, row: BenchRow, metrics: Sequence[str] = tuple(METRICS)) -> dict[str, float]:
    """``metrics`` (names in :data:`METRICS`) of ``prediction`` against the row's answers; for multiple
    choice the better of the prediction as given and as the option its letter names."""
    preds = {prediction, resolve_choice(prediction, row.options)}
    return {name: max(METRICS[name](p, row.answers) for p in preds) for name in metrics}


# -- running ------------------------------------------------------------------------------------------


@dataclass
class RowResult:
    """A row's prediction and its scores."""

    id: str
    task: str
    prediction: str
    answers: tuple[str, ...]
    scores: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "task": self.task, "prediction": self.prediction, "answers": list(self.answers), "scores": self.scores}


@dataclass
class EvalResult:
    """Per-row results; :meth:`tasks` gives per-task means, :meth:`overall` the mean over tasks."""

    metrics: tuple[str, ...]
    rows: list[RowResult] = field(default_factory=list)

    def tasks(self) -> dict[str, dict[str, Any]]:
        """``{task: {"rows": n, metric: mean, ...}}`` in order of first appearance."""
        groups: dict[str, list[RowResult]] = {}
        for r in self.rows:
            groups.setdefault(r.task, []).append(r)
        return {t: {"rows": len(rs), **{m: sum(r.scores[m] for r in rs) / len(rs) for m in self.metrics}} for t, rs in groups.items()}

    def overall(self) -> dict[str, Any]:
        """Rows, tasks, and each metric averaged over the tasks (as benchmark tables average columns)."""
        tasks = self.tasks()
        means = {m: sum(t[m] for t in tasks.values()) / len(tasks) if tasks else 0.0 for m in self.metrics}
        return {"rows": len(self.rows), "tasks": len(tasks), **means}

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": list(self.metrics), "tasks": self.tasks(), "overall": self.overall()}


@dataclass
class _TextDocument:
    """A row's context as a source document (one span), so it is tokenized exactly as ``ask`` does."""

    name: str
    text: str
    kind: str = "text"
    report: ReadReport = field(default_factory=ReadReport)

    def spans(self) -> Iterator[Span]:
        self.report.units, self.report.chars = 1, len(self.text)
        yield Span(self.text, self.name)


def evaluate_rows(
    runner: Any,
    rows: Sequence[BenchRow],
    gen: GenerationConfig,
    *,
    metrics: Sequence[str] = tuple(METRICS),
    on_row: Callable[[RowResult], None] | None = None,
) -> EvalResult:
    """Answer and score every row; each row's context is read into an emptied memory.

    Parameters
    ----------
    runner : a :class:`~infllm_cli.runner.Runner` (its memory is reset for every row)
    rows : the rows to answer
    gen : decoding settings (greedy with ``temperature`` 0)
    metrics : names in :data:`METRICS` to compute
    on_row : called with each row's result as soon as it is scored

    Returns
    -------
    EvalResult
        Predictions, per-row scores, per-task means.
    """
    from .cli.session import DocumentSession, read_document

    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise UsageError(f"unknown metric {unknown[0]!r}; choose from: {', '.join(METRICS)}")
    session = DocumentSession(runner)
    result = EvalResult(tuple(metrics))
    for row in rows:
        doc = read_document(_TextDocument(f"{row.task}:{row.id}", row.context), runner.loaded.tokenizer)
        session.read(doc)
        question = row.question.strip() or NO_QUESTION
        if row.options:
            question += "\n\n" + "\n".join(f"{chr(ord('A') + i)}. {o}" for i, o in enumerate(row.options))
        prediction = "".join(session.ask(question, gen))
        res = RowResult(row.id, row.task, prediction, row.answers, score(prediction, row, metrics))
        log.debug("%s %s (%d tokens): %r -> %s", row.task, row.id, doc.count, prediction, res.scores)
        result.rows.append(res)
        if on_row is not None:
            on_row(res)
    return result
