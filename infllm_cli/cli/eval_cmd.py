"""``infllm eval perplexity``: per-token NLL of a text under infllm, streaming (sink + window) or dense attention.

The model, backend, memory, source and output options are the shared ones (:mod:`.options`); errors are
one line with their exit code like every other command (:mod:`.runtime`).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import typer

from ..errors import InputError
from .options import Options, shared
from .runtime import handle_errors, quiet_library_progress, start

eval_app = typer.Typer(help="Measure how well the model reads long inputs.", no_args_is_help=True)


@eval_app.callback()
def _group() -> None:
    """Measure how well the model reads long inputs."""


def text_token_ids(source: str, tokenizer: Any, opts: Options) -> Iterator[int]:
    """Token ids of a source, streamed piece by piece, tokenized as the tokenizer does by default
    (special tokens such as BOS added once at the start; special-token strings in the text honoured)."""
    from ..sources import open_source
    from ..tokens import pieces

    first = True
    for piece in pieces(open_source(source, password=opts.password, max_bytes=opts.max_bytes)):
        yield from tokenizer(piece.text, add_special_tokens=first)["input_ids"]
        first = False


def json_token_ids(source: str) -> list[int]:
    if source != "-" and not Path(source).is_file():
        raise InputError(f"no such file: {source}")
    raw = sys.stdin.read() if source == "-" else Path(source).read_text()
    try:
        ids = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InputError(f"{source}: not a JSON array of token ids ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(ids, list) or not all(isinstance(i, int) and i >= 0 for i in ids):
        raise InputError(f"{source}: expected a JSON array of non-negative integer token ids")
    return ids


def format_table(result: Any) -> str:
    """Human-readable table of a :class:`~infllm_cli.evaluate.PerplexityResult`."""
    lines = [f"attention {result.attention}: {result.tokens:,} tokens, NLL {result.nll:.4f} nats, PPL {math.exp(result.nll):.3f}",
             f"{'positions':>15}  {'NLL':>8}  {'PPL':>9}"]
    for b in result.buckets():
        lines.append(f"{b['start']:>7}-{b['end']:<7}  {b['nll']:8.4f}  {b['ppl']:9.3f}")
    return "\n".join(lines)


@eval_app.command("perplexity")
@shared("model", "backend", "memory", "source", "output")
def perplexity_cmd(
    source: Annotated[str, typer.Argument(help="Text source (file, directory, PDF, ... or - for stdin).", metavar="SOURCE")],
    token_ids: Annotated[bool, typer.Option("--token-ids", help="SOURCE is a JSON array of token ids.")] = False,
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", metavar="N", min=2, help="Score only the first N tokens.")] = None,
    opts: Options = None,  # type: ignore[assignment]  # filled by @shared
) -> None:
    """Per-token negative log-likelihood of SOURCE, overall and by position bucket (0-256, 256-512, 512-1K, ...)."""
    with handle_errors(opts):
        from ..evaluate import perplexity  # torch/transformers: imported only when the command runs
        from ..models import check_model, load_model
        from ..settings import resolve_model

        reporter = start(opts)
        model_name = resolve_model(opts.model).name
        policy = opts.load_policy()
        memory, preset_name = opts.memory_config(check_model(model_name, device=opts.device, dtype=opts.dtype, policy=policy).config)
        ids = json_token_ids(source) if token_ids else None
        quiet_library_progress()
        with reporter.status(f"loading {model_name}"):
            loaded = load_model(model_name, device=opts.device, dtype=opts.dtype, policy=policy)
        if ids is None:
            ids = text_token_ids(source, loaded.tokenizer, opts)
        with reporter.task(f"scoring {source}", total=max_tokens) as update:
            result = perplexity(loaded, ids, memory, attention=opts.attention, backend=opts.backend,
                                max_tokens=max_tokens, on_progress=update)
        if result.count == 0:
            raise InputError(f"{source}: fewer than two tokens, nothing to score")
        result.config["preset"] = preset_name
        typer.echo(json.dumps(result.to_dict()) if opts.json else format_table(result))


from . import eval_jsonl_cmd  # noqa: E402,F401  registers 'eval jsonl'
from . import recall_cmd  # noqa: E402,F401  registers 'eval recall'
