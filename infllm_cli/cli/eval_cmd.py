"""``infllm eval perplexity``: per-token NLL of a text under infllm, streaming (sink + window) or dense attention.

The model, backend, memory, source and output options are the shared ones (:mod:`.options`); errors are
one line with their exit code like every other command (:mod:`.runtime`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from typing import Annotated, Any, Iterator, Optional

import typer

from ..errors import InputError
from ..formatting import one_line
from .options import Options, shared
from .runtime import handle_errors, quiet_library_progress, start
from .stdio import write_out

log = logging.getLogger("infllm.cli")

eval_app = typer.Typer(help="Measure how well the model reads long inputs.", no_args_is_help=True)


@eval_app.callback()
def _group() -> None:
    """Measure how well the model reads long inputs."""


class TextTokenIds:
    """Token ids of a source, streamed piece by piece, tokenized as the tokenizer does by default: special
    tokens such as BOS added once at the start, special-token strings in the text (e.g. a literal ``<s>``)
    read as those special tokens, so that scores match the model's published ones.

    ``ask`` and ``count`` differ on purpose: a document's text must not inject control tokens, so they read
    special-token strings as plain text. ``special_strings`` counts how many such strings were honoured here
    (the two token counts differ exactly when it is non-zero, besides the BOS token)."""

    def __init__(self, source: str, tokenizer: Any, opts: Options) -> None:
        self.source, self.tokenizer, self.opts = source, tokenizer, opts
        self.special_strings = 0
        self.example: str | None = None

    def __iter__(self) -> Iterator[int]:
        from ..sources import open_source
        from ..tokens import pieces

        specials = [t for t in getattr(self.tokenizer, "all_special_tokens", []) if t]
        first = True
        for piece in pieces(open_source(self.source, password=self.opts.password, max_bytes=self.opts.max_bytes,
                                           password_origin=self.opts.password_origin)):
            found = {t: piece.text.count(t) for t in specials}
            self.special_strings += sum(found.values())
            self.example = self.example or next((t for t, n in found.items() if n), None)
            yield from self.tokenizer(piece.text, add_special_tokens=first)["input_ids"]
            first = False

    def describe(self) -> str:
        return ("model tokenizer's default: special tokens added, "
                f"{self.special_strings} special-token strings in the text read as special tokens")


MAX_TOKEN_ID_BYTES = 256 * 1024 * 1024
"""Largest ``--token-ids`` file read."""
MAX_TOKEN_ID = 2**31 - 1


def json_token_ids(source: str) -> list[int]:
    """The token ids of a ``--token-ids`` file (or ``-``): a flat JSON array of integers in
    ``[0, 2**31)``. Anything else is an :class:`InputError` with one line (binary or non-UTF-8 data,
    deep nesting, a non-list top level, negative, huge or non-integer ids); the vocabulary bound is
    checked once the model is loaded (:func:`check_vocabulary`)."""
    from ..sources.common import display_path

    shown = display_path(source)
    try:
        if source == "-":
            raw = sys.stdin.buffer.read(MAX_TOKEN_ID_BYTES + 1)
        else:
            if not os.path.isfile(source):
                raise InputError(f"no such file: {shown}")
            with open(source, "rb") as fh:
                raw = fh.read(MAX_TOKEN_ID_BYTES + 1)
    except OSError as exc:
        raise InputError(f"cannot read {shown}: {one_line(exc.strerror or exc)}") from None
    if len(raw) > MAX_TOKEN_ID_BYTES:
        raise InputError(f"{shown}: over {MAX_TOKEN_ID_BYTES >> 20} MiB, too large for a token-id file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{shown}: not UTF-8 text (binary data?); expected a JSON array of token ids") from None
    try:
        ids = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{shown}: not a JSON array of token ids ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise InputError(f"{shown}: JSON nested too deeply; expected a flat JSON array of token ids") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise InputError(f"{shown}: not a JSON array of token ids ({one_line(exc, 120)})") from None
    if not isinstance(ids, list):
        raise InputError(f"{shown}: expected a JSON array of token ids, got a JSON {type(ids).__name__}")
    for position, value in enumerate(ids):
        if type(value) is not int or not 0 <= value <= MAX_TOKEN_ID:
            shown_value = one_line(json.dumps(value) if type(value) is not int or abs(value) < 10**20 else f"{str(value)[:12]}...", 60)
            raise InputError(f"{shown}: token id {position} is {shown_value}; expected non-negative integers below 2**31")
    return ids


def check_vocabulary(ids: list[int], vocab_size: int | None, source: str) -> None:
    """Raise :class:`InputError` when an id is outside the model's vocabulary (``vocab_size`` ids)."""
    from ..sources.common import display_path

    if not vocab_size or not ids:
        return
    top = max(ids)
    if top >= vocab_size:
        position = ids.index(top)
        raise InputError(f"{display_path(source)}: token id {position} is {top}, outside the model's vocabulary of {vocab_size:,} ids")


def _vocab_size(loaded: Any) -> int | None:
    try:
        return int(loaded.model.get_input_embeddings().num_embeddings)
    except Exception:
        size = getattr(getattr(loaded.model, "config", None), "vocab_size", None)
        return size if isinstance(size, int) else None


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
        text_ids = None
        if ids is None:
            ids = text_ids = TextTokenIds(source, loaded.tokenizer, opts)
        else:
            check_vocabulary(ids, _vocab_size(loaded), source)
        with reporter.task(f"scoring {source}", total=max_tokens) as update:
            result = perplexity(loaded, ids, memory, attention=opts.attention, backend=opts.backend,
                                max_tokens=max_tokens, on_progress=update)
        if result.count == 0:
            raise InputError(f"{source}: fewer than two tokens, nothing to score")
        result.config["preset"] = preset_name
        result.config["tokenization"] = "token ids given" if text_ids is None else text_ids.describe()
        if text_ids is not None and text_ids.special_strings:
            log.warning("%d special-token strings in the text (e.g. %r) were read as special tokens, as the "
                        "tokenizer does by default; `ask` and `count` read them as plain text, so their token "
                        "counts differ", text_ids.special_strings, text_ids.example)
        write_out((json.dumps(result.to_dict()) if opts.json else format_table(result)) + "\n")


from . import eval_jsonl_cmd  # noqa: E402,F401  registers 'eval jsonl'
from . import recall_cmd  # noqa: E402,F401  registers 'eval recall'
