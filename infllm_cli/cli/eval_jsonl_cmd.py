"""``infllm eval jsonl``: answer the rows of a LongBench / InfiniteBench / RULER file and score them.

The library is :mod:`infllm_cli.longbench`; this module parses options, loads the model, writes the
optional predictions file and prints the per-task table (or one JSON object).
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Annotated, Any, Optional

import typer

from ..config import MAX_NEW_TOKENS
from ..errors import OutputError, UsageError
from .eval_cmd import eval_app
from .options import Options, _choice, shared
from .runtime import handle_errors, quiet_library_progress, start
from .stdio import write_out

log = logging.getLogger("infllm.cli.eval")

METRIC_CHOICES = ("em", "substring", "f1", "all")
COLUMNS = {"em": "EM %", "substring": "substring %", "f1": "F1 %"}


def format_table(result: Any) -> str:
    """Per-task rows and means (as percentages) of an :class:`~infllm_cli.longbench.EvalResult`, then
    the average over tasks."""
    tasks, overall = result.tasks(), result.overall()
    label = f"average ({overall['tasks']} task{'s' if overall['tasks'] != 1 else ''})"
    width = max(len("task"), len(label), *(len(t) for t in tasks))
    head = f"{'task':<{width}}  {'rows':>6}" + "".join(f"  {COLUMNS[m]:>11}" for m in result.metrics)

    def line(name: str, values: dict[str, Any]) -> str:
        return f"{name:<{width}}  {values['rows']:>6}" + "".join(f"  {100 * values[m]:>11.2f}" for m in result.metrics)

    return "\n".join([head, *(line(t, v) for t, v in tasks.items()), line(label, overall)])


def check_predictions_path(path: Path, force: bool) -> None:
    """Refuse (usage error, before any work) to write over an existing file unless ``force``."""
    if path.is_dir():
        raise UsageError(f"--predictions {path} is a directory")
    if path.exists() and not force:
        raise UsageError(f"--predictions {path} already exists; pass --force to overwrite it")
    if not path.parent.is_dir():
        raise UsageError(f"--predictions {path}: no such directory {path.parent}")


class PredictionsWriter:
    """One JSON line per scored row, flushed as it comes; the file is created at the first row, so a run
    that fails before answering anything leaves nothing behind."""

    def __init__(self, path: Path, force: bool) -> None:
        self.path, self.force = path, force
        self.file: IO[str] | None = None

    def write(self, row: Any) -> None:
        if self.file is None:
            try:
                self.file = self.path.open("w" if self.force else "x", encoding="utf-8")
            except FileExistsError:
                raise UsageError(f"--predictions {self.path} already exists; pass --force to overwrite it") from None
            except OSError as exc:
                raise OutputError(f"cannot write --predictions {self.path}: {exc.strerror or exc}") from None
        try:
            self.file.write(json.dumps(row.to_dict(), ensure_ascii=False) + "\n")
            self.file.flush()
        except OSError as exc:
            raise OutputError(f"cannot write --predictions {self.path}: {exc.strerror or exc}") from None

    def close(self) -> None:
        if self.file is not None:
            try:
                self.file.close()
            except OSError:  # the write that failed was reported already
                pass


@eval_app.command("jsonl")
@shared("model", "backend", "memory", "output")
def jsonl_cmd(
    file: Annotated[Path, typer.Argument(help="LongBench, InfiniteBench or RULER JSON-lines file.", metavar="FILE", show_default=False)],
    task: Annotated[Optional[list[str]], typer.Option("--task", metavar="NAME", help="Only rows of this task (repeatable).", show_default=False)] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", metavar="N", min=1, help="Only the first N (matching) rows.", show_default=False)] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", metavar="N", min=1, max=MAX_NEW_TOKENS, help="Most tokens to generate per answer (greedy decoding).")] = 32,
    metric: Annotated[str, typer.Option("--metric", metavar="NAME", help="em, substring, f1 or all.", callback=_choice("metric", METRIC_CHOICES))] = "all",
    predictions: Annotated[Optional[Path], typer.Option("--predictions", metavar="PATH", help="Write one JSON line per row (id, task, prediction, answers, scores).", show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --predictions file.")] = False,
    opts: Options = None,  # type: ignore[assignment]  # filled by @shared
) -> None:
    """Answer every row of FILE (each context read into an emptied memory) and score the answers.

    Prints per-task means of exact match, substring match and token F1 (answers normalised as in the
    SQuAD/LongBench scripts), then their average over tasks; --json prints one object instead.
    """
    with handle_errors(opts):
        from ..config import GenerationConfig
        from ..longbench import METRICS, evaluate_rows, read_rows
        from ..models import check_model, load_model, resolve_device, resolve_dtype
        from ..settings import resolve_model
        from ..tokens import load_tokenizer

        reporter = start(opts)
        metrics = tuple(METRICS) if metric == "all" else (metric,)
        if predictions is not None:
            check_predictions_path(predictions, force)
        gen = GenerationConfig(max_new_tokens=max_new_tokens)
        resolve_dtype(opts.dtype, resolve_device(opts.device))  # a device that cannot work fails before reading
        rows = read_rows(file, task or (), limit)
        choice = resolve_model(opts.model)
        model_name = str(Path(choice.name).expanduser()) if Path(choice.name).expanduser().exists() else choice.name
        policy = opts.load_policy()
        memory, preset_name = opts.memory_config(check_model(model_name, device=opts.device, dtype=opts.dtype, policy=policy).config)
        tokenizer = load_tokenizer(model_name, policy=policy)
        quiet_library_progress()
        with reporter.status(f"loading {model_name}"):
            loaded = load_model(model_name, device=opts.device, dtype=opts.dtype, tokenizer=tokenizer, policy=policy)
        from ..runner import Runner

        runner = Runner(loaded, memory, attention=opts.attention, backend=opts.backend)
        began = time.perf_counter()
        with ExitStack() as stack, reporter.task(f"answering {file.name}", total=len(rows), unit="rows") as update:
            writer = PredictionsWriter(predictions, force) if predictions is not None else None
            if writer is not None:
                stack.callback(writer.close)
            done = 0

            def on_row(row: Any) -> None:
                nonlocal done
                done += 1
                update(done)
                if writer is not None:
                    writer.write(row)

            result = evaluate_rows(runner, rows, gen, metrics=metrics, on_row=on_row)
        overall = result.overall()
        log.info("answered %d row%s of %d task%s from %s in %.1f s", overall["rows"], "s" if overall["rows"] != 1 else "",
                 overall["tasks"], "s" if overall["tasks"] != 1 else "", file, time.perf_counter() - began)
        if opts.json:
            out = {"file": str(file), "model": model_name, "attention": opts.attention, "preset": preset_name,
                   "max_new_tokens": max_new_tokens, **result.to_dict()}
            if opts.attention != "dense":
                out["memory"] = memory.to_dict()
            write_out(json.dumps(out, ensure_ascii=False) + "\n")
        else:
            write_out(format_table(result) + "\n")
