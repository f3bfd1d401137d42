"""``infllm eval recall``: synthetic long-context recall (pass key, copy, multi-key, multi-value) with a
retrieval diagnostic and an oracle ceiling. Registered on the ``eval`` group by :mod:`.eval_cmd`."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from ..errors import UsageError
from .eval_cmd import eval_app
from .options import Options, shared
from .runtime import handle_errors, quiet_library_progress, start
from .stdio import write_out

DEFAULT_LENGTHS = ["4K", "16K"]
DEFAULT_DEPTHS = [0.1, 0.5, 0.9]


def format_recall_table(rows: list[dict]) -> str:
    """Human-readable table of :func:`infllm_cli.recall_eval.summarize` rows."""
    head = f"{'task':<10} {'length':>8} {'depth':>5} {'variant':<16} {'n':>3} {'acc':>6} {'exact':>6} {'NLL':>7} {'hit':>6} {'rank':>6}"
    lines = [head]
    for r in rows:
        hit = "-" if r["evidence_hit"] is None else f"{r['evidence_hit']:.2f}"
        rank = "-" if r["evidence_rank"] is None else f"{r['evidence_rank']:.0f}"
        lines.append(
            f"{r['task']:<10} {r['length']:>8} {r['depth']:>5.2f} {r['variant']:<16} {r['trials']:>3} "
            f"{r['token_accuracy']:>6.3f} {r['exact_match']:>6.3f} {r['nll']:>7.3f} {hit:>6} {rank:>6}"
        )
    return "\n".join(lines)


@eval_app.command("recall")
@shared("model", "backend", "memory", "output")
def recall_cmd(
    task: Annotated[Optional[list[str]], typer.Option("--task", metavar="NAME", help="passkey, copy, multikey or multivalue (repeatable; default: passkey and multikey).")] = None,
    length: Annotated[Optional[list[str]], typer.Option("--length", metavar="N", help="Context length in tokens, e.g. 4096, 16K, 1M (repeatable; default 4K and 16K).")] = None,
    depth: Annotated[Optional[list[float]], typer.Option("--depth", metavar="F", help="Where the asked fact sits, 0 (start) to 1 (end) (repeatable; default 0.1, 0.5, 0.9).")] = None,
    trials: Annotated[int, typer.Option("--trials", metavar="N", min=1, max=100000, help="Trials per task x length x depth.")] = 5,
    seed: Annotated[int, typer.Option("--seed", metavar="N", min=0, max=2**63 - 1, help="Seed of the generated samples.")] = 0,
    filler: Annotated[str, typer.Option("--filler", metavar="NAME|FILE", help="Filler text: grass, prose, or a text file.")] = "grass",
    key_format: Annotated[str, typer.Option("--key-format", metavar="FMT", help="Keys: digits, alnum or words.")] = "digits",
    n_keys: Annotated[int, typer.Option("--n-keys", metavar="N", min=2, max=20, help="Facts planted by multikey / values by multivalue.")] = 4,
    oracle: Annotated[bool, typer.Option("--oracle", help="Also score with the evidence blocks forced into the selection (the selection's ceiling).")] = False,
    all_facts: Annotated[bool, typer.Option("--all-facts", help="Also score with the blocks of every planted fact forced in, the asked one and the others (multikey: the ceiling of a selection that finds the facts but cannot tell them apart).")] = False,
    opts: Options = None,  # type: ignore[assignment]  # filled by @shared
) -> None:
    """Recall of planted facts from long synthetic contexts: answer-token accuracy, exact match, NLL, and
    whether each layer's block selection found the evidence (hit rate, rank), per task x length x depth."""
    with handle_errors(opts):
        from ..models import check_model, load_model
        from ..recall import KEY_FORMATS, TASKS, parse_length
        from ..recall_eval import Variant, run_recall, summarize
        from ..settings import resolve_model

        tasks = task or ["passkey", "multikey"]
        bad = [t for t in tasks if t not in TASKS]
        if bad:
            raise UsageError(f"unknown task {bad[0]!r}; choose from: {', '.join(TASKS)}")
        if key_format not in KEY_FORMATS:
            raise UsageError(f"unknown key format {key_format!r}; choose from: {', '.join(KEY_FORMATS)}")
        try:
            lengths = [parse_length(x) for x in (length or DEFAULT_LENGTHS)]
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        depths = depth or DEFAULT_DEPTHS
        if any(not 0.0 <= d <= 1.0 for d in depths):
            raise UsageError("--depth must lie between 0 and 1")
        for flag, on in (("--oracle", oracle), ("--all-facts", all_facts)):
            if on and opts.attention != "infllm":
                raise UsageError(f"{flag} forces blocks into the memory's selection: it needs --attention infllm")
        reporter = start(opts)
        model_name = resolve_model(opts.model).name
        policy = opts.load_policy()
        memory, preset_name = opts.memory_config(check_model(model_name, device=opts.device, dtype=opts.dtype, policy=policy).config)
        quiet_library_progress()
        with reporter.status(f"loading {model_name}"):
            loaded = load_model(model_name, device=opts.device, dtype=opts.dtype, policy=policy)
        name = opts.attention if opts.attention != "infllm" else f"infllm-{opts.selection}"
        variants = [Variant(name, opts.attention, memory)]
        if oracle:
            variants.append(Variant(name + "+oracle", opts.attention, memory, oracle=True))
        if all_facts:
            variants.append(Variant(name + "+all-facts", opts.attention, memory, all_facts=True))
        total = len(tasks) * len(lengths) * len(depths) * trials * len(variants)
        try:
            with reporter.task("recall", total=total, unit="trials") as update:
                done = 0

                def tick(_: object) -> None:
                    nonlocal done
                    done += 1
                    update(done)

                results = run_recall(loaded, variants, tasks, lengths, depths, trials, seed=seed, filler=filler,
                                     key_format=key_format, n_keys=n_keys, backend=opts.backend, on_trial=tick)
        except ValueError as exc:  # a length too short for a task, an unusable filler file
            raise UsageError(str(exc)) from None
        rows = summarize(results)
        if opts.json:
            write_out(json.dumps({"model": model_name, "preset": preset_name, "memory": memory.to_dict(),
                                   "filler": filler, "key_format": key_format, "seed": seed, "rows": rows}) + "\n")
        else:
            write_out(format_recall_table(rows) + "\n")
