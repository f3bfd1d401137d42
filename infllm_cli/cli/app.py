"""The ``infllm`` command line: a thin shell over the library.

Answers and summaries go to stdout (streamed as they are generated); progress, status lines, warnings
and errors go to stderr. ``--json`` puts exactly one JSON object per line on stdout.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import typer

from .. import __version__
from ..config import GenerationConfig, MemoryConfig
from ..errors import EXIT_INTERRUPTED, UsageError
from ..progress import Reporter
from ..prompting import Turn
from ..settings import DEFAULT_MODEL, resolve_model
from ..tokens import UNIT_NAMES, DocumentTokens, HFEncoder, describe_source, load_tokenizer, read_tokens
from .eval_cmd import eval_app
from .options import STYLES, Options, shared
from .runtime import handle_errors, quiet_library_progress, start

log = logging.getLogger("infllm.cli")

EXIT_CODES_HELP = """\
Exit codes: 0 success; 1 internal error (a bug: rerun with --debug for the traceback);
2 usage error (bad option, argument or memory configuration); 3 input error (missing path, empty or
binary input, no readable text, source over --max-tokens); 4 PDF error (encrypted without the right
password, corrupt); 5 model error (unknown model, directory without weights, unsupported architecture, broken or inconsistent
model files, a model that needs --trust-remote-code or --allow-pickle);
6 device/backend error; 130 interrupted (Ctrl-C).
"""

HELP = f"""\
Ask questions about, and summarize, documents far longer than a model's context window, on local
Hugging Face models with InfLLM context memory: the document streams through the model chunk by chunk
and is kept in a block memory that each question retrieves from.

SOURCE is a file (PDF, text, Markdown, HTML, EPUB, code), a directory (a repository: its text files) or
- for stdin. The model is --model, else $INFLLM_MODEL, else `model = "..."` in
~/.config/infllm/config.toml, else {DEFAULT_MODEL}.

Answers go to stdout; progress, status and errors go to stderr.
"""

app = typer.Typer(
    name="infllm",
    help=HELP,
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

app.add_typer(eval_app, name="eval")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"infllm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Show the version and exit.", callback=_version, is_eager=True)] = False,
) -> None:
    """Root options."""


# -- shared steps --------------------------------------------------------------------------------------


def emit(text: str) -> None:
    """Write answer text to stdout immediately."""
    sys.stdout.write(text)
    sys.stdout.flush()


def emit_json(obj: dict[str, Any]) -> None:
    emit(json.dumps(obj, ensure_ascii=False) + "\n")


@dataclass
class Prepared:
    """A source read into tokens and the model and memory it is to be read into."""

    opts: Options
    reporter: Reporter
    doc: DocumentTokens
    tokenizer: Any
    model_name: str
    model_config: Any
    memory: MemoryConfig
    preset_name: str
    gen: GenerationConfig


def open_document(source: str, opts: Options) -> Any:
    from ..sources import open_source

    return open_source(source, password=opts.password, max_bytes=opts.max_bytes)


def read_with_progress(document: Any, encoder: Any, opts: Options, reporter: Reporter, *, keep_ids: bool = True) -> DocumentTokens:
    units = UNIT_NAMES.get(document.kind, "")
    with reporter.task(f"reading {document.name}") as update:

        def progress(count: int, report: Any) -> None:
            update(count, f"{report.units:,} {units}" if units and report.units else "")

        return read_tokens(document, encoder, max_tokens=opts.max_tokens, keep_ids=keep_ids, on_progress=progress)


def prepare(source: str, opts: Options, reporter: Reporter) -> Prepared:
    """Open the source, check model (config, weight files, size) and memory settings, and read the source
    into token ids, all before the model's weights are loaded (so that bad input fails fast)."""
    from ..model_files import inspect_config

    gen = opts.generation_config()
    document = open_document(source, opts)
    choice = resolve_model(opts.model)
    log.debug("model %s (from %s)", choice.name, choice.origin)
    model_name = str(Path(choice.name).expanduser()) if Path(choice.name).expanduser().exists() else choice.name
    policy = opts.load_policy()
    inspect_config(model_name, policy)  # a missing, broken or unsafe model fails here, before torch is imported

    from ..models import check_model, resolve_device, resolve_dtype

    resolve_dtype(opts.dtype, resolve_device(opts.device))  # a device that cannot work fails here, not after reading
    model_config = check_model(model_name, device=opts.device, dtype=opts.dtype, policy=policy).config
    memory, preset_name = opts.memory_config(model_config)
    log.debug("memory: preset %s -> %s", preset_name, memory.to_dict())
    tokenizer = load_tokenizer(model_name, policy=policy)
    doc = read_with_progress(document, HFEncoder(tokenizer), opts, reporter)
    log.info("%s", doc.describe())
    check_fit(doc, memory, opts.attention, model_config)
    return Prepared(opts, reporter, doc, tokenizer, model_name, model_config, memory, preset_name, gen)


def check_fit(doc: DocumentTokens, memory: MemoryConfig, attention: str, model_config: Any) -> None:
    """Warn when the configuration asks the model for positions beyond those it was trained on."""
    n_ctx = getattr(model_config, "max_position_embeddings", None)
    if not isinstance(n_ctx, int):
        return
    if attention == "dense" and doc.count > n_ctx:
        log.warning(
            "dense attention over %s tokens exceeds the %s-token context the model was trained on; "
            "answers will degrade (use --attention infllm)", f"{doc.count:,}", f"{n_ctx:,}"
        )
    elif attention != "dense" and memory.max_window > n_ctx:
        log.warning(
            "the memory window (n_init + n_local + block + query chunk - 1 = %s tokens) exceeds the %s-token context "
            "the model was trained on; lower --n-local or use a smaller --preset", f"{memory.max_window:,}", f"{n_ctx:,}"
        )


def load_runner(prep: Prepared) -> Any:
    from ..models import load_model
    from ..runner import Runner

    opts = prep.opts
    quiet_library_progress()
    with prep.reporter.status(f"loading {prep.model_name}"):
        loaded = load_model(prep.model_name, device=opts.device, dtype=opts.dtype, tokenizer=prep.tokenizer, policy=opts.load_policy())
    log.debug("loaded %s on %s as %s", prep.model_name, loaded.device, loaded.dtype)
    return Runner(loaded, prep.memory, attention=opts.attention, backend=opts.backend)


def stats_line(stats: dict[str, Any]) -> str:
    from ..formatting import human_bytes

    parts = []
    if stats.get("prefill_seconds"):
        rate = stats.get("prefill_tokens_per_second")
        parts.append(f"read in {stats['prefill_seconds']:.1f} s" + (f" ({rate:,.0f} tokens/s)" if rate else ""))
    parts.append(f"{stats.get('blocks', 0):,} memory blocks")
    gen_rate = stats.get("generate_tokens_per_second")
    parts.append(
        f"generated {stats.get('generated_tokens', 0):,} tokens in {stats.get('generate_seconds', 0):.1f} s"
        + (f" ({gen_rate:,.1f} tokens/s)" if gen_rate else "")
    )
    if stats.get("peak_memory_bytes"):
        parts.append(f"peak memory {human_bytes(stats['peak_memory_bytes'])}")
    return "; ".join(parts)


def feed_document(session: Any, prep: Prepared) -> None:
    """Stream the prefix and the document into the session's runner, with prefill progress."""
    total = prep.doc.count
    with prep.reporter.task("prefill", total=total) as update:
        session.read(prep.doc, on_progress=lambda n: update(min(n, total)))
    log.debug("prefill: %s document tokens in %.2f s", f"{total:,}", session.read_seconds)


def open_session(source: str, opts: Options, reporter: Reporter) -> tuple[Prepared, Any, Any]:
    """Read SOURCE, load the model and stream the document in once: (prepared input, runner, session)."""
    from .session import DocumentSession

    prep = prepare(source, opts, reporter)
    runner = load_runner(prep)
    session = DocumentSession(runner)
    feed_document(session, prep)
    return prep, runner, session


def stream_answer(deltas: Iterator[str], reporter: Reporter, runner: Any, *, to_stdout: bool) -> str:
    """Consume an answer; echo it to stdout as it comes unless ``to_stdout`` is False (JSON mode)."""
    pieces: list[str] = []
    start = runner.stats.generated_tokens
    with reporter.generating() as update:
        for delta in deltas:
            pieces.append(delta)
            if to_stdout:
                emit(delta)
            update(runner.stats.generated_tokens - start)
    return "".join(pieces)


# -- commands ------------------------------------------------------------------------------------------

SourceArg = Annotated[str, typer.Argument(metavar="SOURCE", help="File, directory, or - for stdin.", show_default=False)]


@app.command(epilog=EXIT_CODES_HELP)
@shared("model", "backend", "memory", "generation", "source", "limit", "output")
def ask(
    source: SourceArg,
    question: Annotated[Optional[str], typer.Argument(metavar="QUESTION", help="The question.", show_default=False)] = None,
    more: Annotated[Optional[list[str]], typer.Option("--question", "-q", metavar="QUESTION", help="Another question (repeatable); all are answered from one read of the source.", show_default=False)] = None,
    *,
    opts: Options,
) -> None:
    """Answer questions about SOURCE.

    The source is read once; each question is then answered independently from that memory (the
    memory is restored to its state after the document before each question). With several questions,
    each answer follows a heading line "## <question>".
    """
    with handle_errors(opts):
        questions = [q for q in ([question] if question is not None else []) + list(more or [])]
        if not questions:
            raise UsageError('no question given: infllm ask SOURCE "QUESTION" [-q QUESTION ...]')
        if any(not q.strip() for q in questions):
            raise UsageError("a question is empty")
        reporter = start(opts)
        from .session import StatsMark

        prep, runner, session = open_session(source, opts, reporter)
        for i, q in enumerate(questions):
            mark = StatsMark.of(runner)
            if not opts.json and len(questions) > 1:
                emit(("\n" if i else "") + f"## {q.strip()}\n")
            answer = stream_answer(session.ask(q, prep.gen), reporter, runner, to_stdout=not opts.json)
            stats = session.stats(mark, {"preset": prep.preset_name, "attention": opts.attention, "model": prep.model_name})
            if opts.json:
                emit_json({"question": q, "answer": answer, "stats": stats})
            else:
                emit("\n")
            log.info("%s", stats_line(stats))


@app.command(epilog=EXIT_CODES_HELP)
@shared("model", "backend", "memory", "generation", "source", "limit", "output")
def summarize(
    source: SourceArg,
    style: Annotated[str, typer.Option("--style", metavar="STYLE", help="brief: one overall summary; detailed: one thorough summary, or per section when the source is longer than the local window; sections: a summary per section (PDF outline, headings, files) then an overall one.", callback=lambda v: _check_style(v))] = "brief",
    *,
    opts: Options,
) -> None:
    """Summarize SOURCE.

    Per-section summaries are printed under a heading line "## <section>" (merged sections "## <first> …
    <last>"; parts of a source without structure "## Part i of n"), followed by "## Overall summary".
    Each part is read on its own; the overall summary is written from the part summaries.
    """
    with handle_errors(opts):
        reporter = start(opts)
        prep = prepare(source, opts, reporter)
        from .session import StatsMark, SummaryPiece, Summarizer, answer_stats

        runner = load_runner(prep)
        summ = Summarizer(runner)
        doc = prep.doc
        mark = StatsMark.of(runner)
        sections: list[dict[str, Any]] = []
        to_stdout = not opts.json
        if summ.per_section(doc, style):
            parts = summ.plan(doc)
            log.info("summarizing %d parts one by one", len(parts))
            pieces: list[SummaryPiece] = []
            for i, part in enumerate(parts, 1):
                if to_stdout:
                    emit(("\n" if i > 1 else "") + f"## {part.title}\n")
                with reporter.task(f"reading part {i}/{len(parts)}", total=part.tokens) as update:
                    deltas = summ.part(doc, part, prep.gen, on_progress=lambda n: update(min(n, part.tokens)))
                text = stream_answer(deltas, reporter, runner, to_stdout=to_stdout)
                if to_stdout:
                    emit("\n")
                pieces.append(SummaryPiece(part.title, text, part.tokens, part.location))
                sections.append({"title": part.title, "location": part.location, "tokens": part.tokens, "summary": text})
            if to_stdout:
                emit("\n## Overall summary\n")
            overall = stream_answer(summ.overall(pieces, prep.gen), reporter, runner, to_stdout=to_stdout)
        else:
            kind = "brief" if style == "brief" else "detailed"  # `sections` of a single section: one thorough summary
            with reporter.task("prefill", total=doc.count) as update:
                deltas = summ.whole(doc, kind, prep.gen, on_progress=lambda n: update(min(n, doc.count)))
            overall = stream_answer(deltas, reporter, runner, to_stdout=to_stdout)
        if to_stdout:
            emit("\n")
        stats = answer_stats(runner, doc, summ.read_seconds, mark, {"preset": prep.preset_name, "attention": opts.attention, "model": prep.model_name})
        if opts.json:
            emit_json({"source": doc.name, "style": style, "summary": overall, "sections": sections, "stats": stats})
        log.info("%s", stats_line(stats))


def _check_style(value: str) -> str:
    if value not in STYLES:
        raise typer.BadParameter(f"{value!r} is not one of: {', '.join(STYLES)}")
    return value


@app.command(epilog=EXIT_CODES_HELP)
@shared("model", "backend", "memory", "generation", "source", "limit", "output")
def chat(
    source: SourceArg,
    independent: Annotated[bool, typer.Option("--independent", help="Answer each question on its own, without the earlier turns.")] = False,
    *,
    opts: Options,
) -> None:
    """Chat about SOURCE: questions are read from stdin, one per line.

    The source is read once. Each answer is streamed to stdout. The conversation is kept: every
    question is answered after the document and the earlier questions and answers of the session
    (--independent answers each on its own). Type /reset to forget the conversation, /exit (or end the
    input) to stop. The prompt "> " is shown on stderr when stdin is a terminal.
    """
    with handle_errors(opts):
        if source == "-":
            raise UsageError("chat reads its questions from stdin, so the source cannot be stdin; pass a file or directory")
        reporter = start(opts)
        from .session import StatsMark

        prep, runner, session = open_session(source, opts, reporter)
        history: list[Turn] = []
        interactive = _isatty(sys.stdin) and not opts.quiet
        while True:
            if interactive:
                sys.stderr.write("> ")
                sys.stderr.flush()
            line = sys.stdin.readline()
            if not line:
                break
            q = line.strip()
            if not q:
                continue
            if q in ("/exit", "/quit"):
                break
            if q == "/reset":
                history.clear()
                log.info("conversation forgotten")
                continue
            mark = StatsMark.of(runner)
            answer = stream_answer(session.ask(q, prep.gen, () if independent else history), reporter, runner, to_stdout=not opts.json)
            stats = session.stats(mark, {"preset": prep.preset_name, "attention": opts.attention, "model": prep.model_name, "turn": len(history) + 1})
            if opts.json:
                emit_json({"question": q, "answer": answer, "stats": stats})
            else:
                emit("\n")
            history.append(Turn(q, answer))
            log.debug("%s", stats_line(stats))


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except Exception:
        return False


@app.command(epilog=EXIT_CODES_HELP)
@shared("model", "memory", "source", "limit", "output")
def count(
    source: SourceArg,
    tokens_per_second: Annotated[Optional[float], typer.Option("--tokens-per-second", metavar="RATE", help="Prefill speed you measured (`infllm ask` prints it on stderr); gives a time estimate.", min=0.001, show_default=False)] = None,
    *,
    opts: Options,
) -> None:
    """Count the tokens of SOURCE and estimate memory blocks and key/value memory, without loading a model.

    Tokens are counted with the model's own tokenizer when it is available locally (--model directory,
    or a cached hub model), else with tiktoken cl100k_base/o200k_base when its file is already cached,
    else as characters / 4. The output says which.
    """
    with handle_errors(opts):
        from ..estimate import choose_encoder, estimate_memory, human_seconds, model_shape, offline_model_config
        from ..formatting import human_bytes

        reporter = start(opts)
        document = open_document(source, opts)
        choice = resolve_model(opts.model)
        model_name = choice.name
        encoder, _ = choose_encoder(model_name, opts.load_policy())
        config, config_note = offline_model_config(model_name, opts.load_policy())
        memory, preset_name = opts.memory_config(config)
        doc = read_with_progress(document, encoder, opts, reporter, keep_ids=False)
        path = Path(model_name).expanduser()
        shape = model_shape(config, opts.dtype, opts.device, path if path.is_dir() else None) if config is not None else None
        est = estimate_memory(doc.count, memory, opts.attention, shape)
        seconds = doc.count / tokens_per_second if tokens_per_second else None
        r = doc.report
        result: dict[str, Any] = {
            "source": doc.name,
            "kind": doc.kind,
            "units": r.units,
            "units_without_text": r.units_without_text,
            "skipped": len(r.skipped),
            "characters": r.chars,
            "tokens": doc.count,
            "token_basis": encoder.description,
            "exact": bool(getattr(encoder, "exact", False)),
            "model": model_name,
            "preset": preset_name,
            "attention": opts.attention,
            "memory_config": memory.to_dict(),
            "blocks": est.blocks,
            "memory": est.to_dict() | {
                "dtype": shape.dtype if shape else None,
                "weights_bytes": shape.weights_bytes if shape else None,
                "note": None if shape else config_note,
            },
            "time_seconds": seconds,
            "time_basis": f"{tokens_per_second:g} tokens/s given with --tokens-per-second" if tokens_per_second else "unknown: pass --tokens-per-second from a measured run",
        }
        if opts.json:
            emit_json(result)
            return
        lines = [f"source: {describe_source(doc.name, doc.kind, r)}"]
        lines.append(f"tokens: {doc.count:,} ({encoder.description})")
        if opts.attention == "infllm":
            lines.append(f"memory blocks: about {est.blocks:,} of {memory.block_size} tokens (preset {preset_name}, n_local {memory.n_local:,})")
        if shape is not None:
            lines.append(
                f"key/value memory: about {human_bytes(est.total_kv_bytes)} "
                f"(block store {human_bytes(est.block_store_bytes)}{' in host memory' if memory.offload else ''}, "
                f"window {human_bytes(est.window_bytes)}) at {shape.dtype}: "
                f"{human_bytes(shape.kv_bytes_per_token)} per token = 2 x {shape.layers} layers x {shape.kv_heads} KV heads x {shape.head_dim} dims x {shape.dtype_bytes} bytes"
            )
            if shape.weights_bytes:
                lines.append(f"model weights: {human_bytes(shape.weights_bytes)} on disk (not included above)")
        else:
            lines.append(f"key/value memory: unknown ({config_note})")
        if seconds is not None:
            lines.append(f"prefill time: about {human_seconds(seconds)} at {tokens_per_second:,g} tokens/s")
        else:
            lines.append("prefill time: unknown (depends on model and hardware; pass --tokens-per-second from a measured run)")
        emit("\n".join(lines) + "\n")


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":  # pragma: no cover
    main()
