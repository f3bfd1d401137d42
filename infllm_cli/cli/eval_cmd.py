"""``infllm eval perplexity``: per-token NLL of a text under infllm, streaming (sink + window) or dense attention."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer

from ..errors import InputError

eval_app = typer.Typer(help="Measure how well the model reads long inputs.", no_args_is_help=True)


@eval_app.callback()
def _group() -> None:
    """Measure how well the model reads long inputs."""


def text_token_ids(source: str, tokenizer, password: Optional[str]) -> Iterator[int]:
    """Token ids of a source, streamed piece by piece, tokenized as the tokenizer does by default
    (special tokens such as BOS added once at the start; special-token strings in the text honoured)."""
    from ..sources import open_source
    from ..tokens import pieces

    first = True
    for piece in pieces(open_source(source, password=password)):
        yield from tokenizer(piece.text, add_special_tokens=first)["input_ids"]
        first = False


def json_token_ids(source: str) -> list[int]:
    raw = sys.stdin.read() if source == "-" else Path(source).read_text()
    try:
        ids = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InputError(f"{source}: not a JSON array of token ids ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(ids, list) or not all(isinstance(i, int) and i >= 0 for i in ids):
        raise InputError(f"{source}: expected a JSON array of non-negative integer token ids")
    return ids


def format_table(result) -> str:
    """Human-readable table of a :class:`~infllm_cli.evaluate.PerplexityResult`."""
    lines = [f"attention {result.attention}: {result.tokens:,} tokens, NLL {result.nll:.4f} nats, PPL {math.exp(result.nll):.3f}",
             f"{'positions':>15}  {'NLL':>8}  {'PPL':>9}"]
    for b in result.buckets():
        lines.append(f"{b['start']:>7}-{b['end']:<7}  {b['nll']:8.4f}  {b['ppl']:9.3f}")
    return "\n".join(lines)


@eval_app.command("perplexity")
def perplexity_cmd(
    source: Annotated[str, typer.Argument(help="Text source (file, directory, PDF, ... or - for stdin).")],
    model: Annotated[Optional[str], typer.Option(help="Model directory or cached hub id (default: INFLLM_MODEL, config file, built-in default).")] = None,
    attention: Annotated[str, typer.Option(help="infllm | streaming (n_init sinks + n_local window) | dense.")] = "infllm",
    token_ids: Annotated[bool, typer.Option("--token-ids", help="SOURCE is a JSON array of token ids.")] = False,
    max_tokens: Annotated[Optional[int], typer.Option(help="Score at most this many tokens.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:N].")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16.")] = "auto",
    backend: Annotated[str, typer.Option(help="Memory attention ops: auto | torch | triton.")] = "auto",
    preset: Annotated[str, typer.Option(help="Memory preset: paper | small | tiny; knobs below override it.")] = "paper",
    n_init: Annotated[Optional[int], typer.Option(help="Initial tokens always attended.")] = None,
    n_local: Annotated[Optional[int], typer.Option(help="Local window (tokens).")] = None,
    block_size: Annotated[Optional[int], typer.Option(help="Tokens per memory block.")] = None,
    topk: Annotated[Optional[int], typer.Option(help="Blocks retrieved per query chunk.")] = None,
    repr_topk: Annotated[Optional[int], typer.Option(help="Representative keys per block.")] = None,
    exc_block_size: Annotated[Optional[int], typer.Option(help="Query chunk sharing one retrieval.")] = None,
    chunk_size: Annotated[Optional[int], typer.Option(help="Prefill chunk (a multiple of --exc-block-size).")] = None,
    password: Annotated[Optional[str], typer.Option(help="Password of an encrypted PDF.")] = None,
) -> None:
    """Per-token negative log-likelihood of SOURCE, overall and by position bucket (0-256, 256-512, 512-1K, ...)."""
    from ..config import ATTENTION_MODES, preset as get_preset
    from ..errors import UsageError
    from ..evaluate import perplexity  # torch/transformers: imported only when the command runs
    from ..models import load_model
    from ..settings import resolve_model

    if attention not in ATTENTION_MODES:
        raise UsageError(f"unknown --attention {attention!r}; choose one of: {', '.join(ATTENTION_MODES)}")
    memory = get_preset(preset).replace(
        n_init=n_init, n_local=n_local, block_size=block_size, topk=topk, repr_topk=repr_topk,
        exc_block_size=exc_block_size, chunk_size=chunk_size,
    )
    loaded = load_model(resolve_model(model).name, device=device, dtype=dtype)
    ids = json_token_ids(source) if token_ids else text_token_ids(source, loaded.tokenizer, password)
    result = perplexity(loaded, ids, memory, attention=attention, backend=backend, max_tokens=max_tokens)
    if result.count == 0:
        raise InputError(f"{source}: fewer than two tokens, nothing to score")
    typer.echo(json.dumps(result.to_dict()) if json_out else format_table(result))
