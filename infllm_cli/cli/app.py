"""The ``infllm`` command line: a thin shell over the library.

Answers and summaries go to stdout (streamed as they are generated); progress, status lines, warnings
and errors go to stderr. ``--json`` puts exactly one JSON object per line on stdout.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional, Sequence

import typer

from .. import __version__
from ..config import GenerationConfig, MemoryConfig
from ..errors import UsageError
from ..progress import Reporter
from ..settings import DEFAULT_MODEL, resolve_model
from ..tokens import UNIT_NAMES, DocumentTokens, HFEncoder, describe_source, load_tokenizer, read_tokens
from .cache_cmd import cache_app
from .eval_cmd import eval_app
from .options import BRIEF_MAX_NEW_TOKENS, DEFAULT_MAX_NEW_TOKENS, STYLES, Options, shared
from .runtime import handle_errors, quiet_library_progress, start
from .stdio import write_out

log = logging.getLogger("infllm.cli")

EXIT_CODES_HELP = """\
Exit codes: 0 success; 1 internal error (a bug: rerun with --debug for the traceback);
2 usage error (bad option, argument or memory configuration); 3 input error (missing path, empty or
binary input, no readable text, source over --max-tokens, stdin closed, a read predicted not to fit in
memory: see --memory-budget); 4 PDF error (encrypted without the right password, corrupt); 5 model error
(unknown model, directory without weights, unsupported architecture, broken or inconsistent model
files, a model that needs --trust-remote-code or --allow-pickle); 6 device/backend error; 74 stdout
cannot be written (full device, I/O error, closed); 130 interrupted (Ctrl-C); 141 stdout closed by its
reader (e.g. | head), stopped quietly. An unwritable stderr never changes the exit code.
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
app.add_typer(cache_app, name="cache")


def _version(value: bool) -> None:
    if value:
        write_out(f"infllm {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Show the version and exit.", callback=_version, is_eager=True)] = False,
) -> None:
    """Root options."""


# -- shared steps --------------------------------------------------------------------------------------


def emit(text: str) -> None:
    """Write answer text to stdout immediately (a failing stdout raises :class:`~infllm_cli.errors.OutputError`)."""
    write_out(text)


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

    return open_source(source, password=opts.password, max_bytes=opts.max_bytes, password_origin=opts.password_origin)


def read_with_progress(document: Any, encoder: Any, opts: Options, reporter: Reporter, *, keep_ids: bool = True) -> DocumentTokens:
    units = UNIT_NAMES.get(document.kind, "")
    with reporter.task(f"reading {document.name}") as update:

        def progress(count: int, report: Any) -> None:
            update(count, f"{report.units:,} {units}" if units and report.units else "")

        return read_tokens(document, encoder, max_tokens=opts.max_tokens, keep_ids=keep_ids, on_progress=progress)


def prepare(source: str, opts: Options, reporter: Reporter, questions: Sequence[str] = ()) -> Prepared:
    """Open the source, check model (config, weight files, size) and memory settings (and that ``questions``
    fit the local window), and read the source into token ids, all before the model's weights are loaded (so
    that bad input fails fast)."""
    from ..model_files import inspect_config

    from ..budget import budget

    gen = opts.generation_config()
    if opts.cite and opts.attention == "dense":
        raise UsageError("--cite needs the context memory: use --attention infllm (or streaming), not dense")
    document = open_document(source, opts)
    choice = resolve_model(opts.model)
    log.debug("model %s (from %s)", choice.name, choice.origin)
    model_name = str(Path(choice.name).expanduser()) if Path(choice.name).expanduser().exists() else choice.name
    policy = opts.load_policy()
    inspect_config(model_name, policy)  # a missing, broken or unsafe model fails here, before torch is imported

    from ..models import check_model, resolve_device, resolve_dtype

    device = resolve_device(opts.device)
    resolve_dtype(opts.dtype, device)  # a device that cannot work fails here, not after reading
    available = budget(opts.memory_budget, device.type, str(device))  # a bad --memory-budget fails here too
    model_config = check_model(model_name, device=opts.device, dtype=opts.dtype, policy=policy).config
    memory, preset_name = opts.memory_config(model_config)
    log.debug("memory: preset %s -> %s", preset_name, memory.to_dict())
    tokenizer = load_tokenizer(model_name, policy=policy)
    if questions:
        from .session import check_question_tokens, question_token_limit

        limit = question_token_limit(memory, opts.attention, model_config)
        for q in questions:
            check_question_tokens(q, tokenizer, limit)
    doc = read_with_progress(document, HFEncoder(tokenizer), opts, reporter)
    log.info("%s", doc.describe())
    check_fit(doc, memory, opts.attention, model_config)
    memory = check_memory(doc.count, memory, opts, model_config, model_name, device, available)
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


def check_memory(tokens: int, memory: MemoryConfig, opts: Options, model_config: Any, model_name: str,
                 device: Any, available: Any) -> MemoryConfig:
    """The pre-flight memory check, before the weights are loaded (see :mod:`infllm_cli.budget`): refuse a
    read predicted not to fit (exit 3) unless --skip-memory-check; on CUDA, move a block store that does not
    fit on the GPU to host memory. Returns the memory config to use."""
    from ..budget import plan
    from ..estimate import model_shape

    path = Path(model_name).expanduser()
    shape = model_shape(model_config, opts.dtype, str(device), path if path.is_dir() else None)
    if opts.skip_memory_check:
        log.info("memory check skipped (--skip-memory-check)")
        return memory
    memory, _ = plan(tokens, memory, opts.attention, shape, device.type, available, offload_given=opts.offload is not None)
    return memory


def load_runner(prep: Prepared) -> Any:
    from ..models import load_model
    from ..runner import Runner

    opts = prep.opts
    quiet_library_progress()
    with prep.reporter.status(f"loading {prep.model_name}"):
        loaded = load_model(prep.model_name, device=opts.device, dtype=opts.dtype, tokenizer=prep.tokenizer, policy=opts.load_policy())
    return Runner(loaded, prep.memory, attention=opts.attention, backend=opts.backend)


def read_line(stats: dict[str, Any]) -> str:
    """How long reading the document took, and the memory it left: said once, after the read."""
    rate = stats.get("prefill_tokens_per_second")
    return (
        f"read in {stats.get('prefill_seconds', 0):.1f} s" + (f" ({rate:,.0f} tokens/s)" if rate else "")
        + f"; {stats.get('blocks', 0):,} memory blocks"
    )


def stats_line(stats: dict[str, Any], *, with_read: bool = True) -> str:
    """One status line of an answer's stats; ``with_read=False`` leaves out the read (said once already)."""
    from ..formatting import human_bytes

    parts = [read_line(stats)] if with_read else []
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
    if session.outcome is not None:
        log.info("%s", session.outcome.describe())


def open_session(source: str, opts: Options, reporter: Reporter, questions: Sequence[str] = ()) -> tuple[Prepared, Any, Any]:
    """Read SOURCE, load the model and stream the document in once: (prepared input, runner, session)."""
    from .session import DocumentSession

    cache = opts.memory_cache()
    prep = prepare(source, opts, reporter, questions)
    runner = load_runner(prep)
    session = DocumentSession(runner, cache=cache, refresh=opts.refresh)
    feed_document(session, prep)
    return prep, runner, session


def emit_sources(answer: Any, opts: Options) -> list[dict[str, Any]]:
    """With --cite, print the answer's "Sources" block (text mode); the sources as JSON-ready dicts."""
    from ..citations import format_sources

    if not opts.cite:
        return []
    sources = answer.sources
    if not opts.json:
        block = format_sources(sources)
        emit(block if block else "Sources: none (no attention to the document was measured)\n")
    return [s.to_dict() for s in sources]


@dataclass
class Streamed:
    """What :func:`stream_answer` consumed (not :class:`~infllm_cli.cli.session.Answer`, the live generator)."""

    text: str
    truncated: bool  # generation stopped at --max-new-tokens, not at the end of the answer


def stream_answer(deltas: Iterator[str], reporter: Reporter, runner: Any, gen: GenerationConfig, *, to_stdout: bool) -> Streamed:
    """Consume an answer; echo it to stdout as it comes unless ``to_stdout`` is False (JSON mode). An answer
    cut at ``gen.max_new_tokens`` gets one warning line on stderr."""
    pieces: list[str] = []
    start = runner.stats.generated_tokens
    runner.finish_reason = None
    with reporter.generating() as update:
        for delta in deltas:
            pieces.append(delta)
            if to_stdout:
                emit(delta)
            update(runner.stats.generated_tokens - start)
    truncated = gen.max_new_tokens > 0 and runner.finish_reason == "length"
    if truncated:
        log.warning("the answer was cut at --max-new-tokens %d (raise it for a complete answer)", gen.max_new_tokens)
    return Streamed("".join(pieces), truncated)


# -- commands ------------------------------------------------------------------------------------------

SourceArg = Annotated[str, typer.Argument(metavar="SOURCE", help="File, directory, or - for stdin.", show_default=False)]


@app.command(epilog=EXIT_CODES_HELP)
@shared("model", "backend", "memory", "generation", "source", "limit", "cite", "output", "cache")
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
        from .session import StatsMark, check_question

        for q in questions:
            check_question(q)
        reporter = start(opts)
        prep, runner, session = open_session(source, opts, reporter, questions)
        extra = {"preset": prep.preset_name, "attention": opts.attention, "model": prep.model_name}
        log.info("%s", read_line(session.stats(StatsMark.of(runner))))
        for i, q in enumerate(questions):
            mark = StatsMark.of(runner)
            if not opts.json and len(questions) > 1:
                emit(("\n" if i else "") + f"## {q.strip()}\n")
            asked = session.ask(q, prep.gen, cite=opts.cite, max_sources=opts.max_sources)
            answer = stream_answer(asked, reporter, runner, prep.gen, to_stdout=not opts.json)
            stats = session.stats(mark, extra)
            if not opts.json:
                emit("\n")
            sources = emit_sources(asked, opts)
            if opts.json:
                emit_json({"question": q, "answer": answer.text, "truncated": answer.truncated, "sources": sources,
                           "stats": stats})
            log.info("%s", stats_line(stats, with_read=False))


@app.command(epilog=EXIT_CODES_HELP)
@shared("model", "backend", "memory", "generation", "source", "limit", "cite", "output", "cache")
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
        cache = opts.memory_cache()
        prep = prepare(source, opts, reporter)
        from .session import StatsMark, SummaryPiece, Summarizer, answer_stats

        gen = opts.generation_config(BRIEF_MAX_NEW_TOKENS if style == "brief" else DEFAULT_MAX_NEW_TOKENS)
        runner = load_runner(prep)
        summ = Summarizer(runner, cache=cache, refresh=opts.refresh)
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
                    deltas = summ.part(doc, part, gen, on_progress=lambda n: update(min(n, part.tokens)),
                                       cite=opts.cite, max_sources=opts.max_sources)
                piece = stream_answer(deltas, reporter, runner, gen, to_stdout=to_stdout)
                if to_stdout:
                    emit("\n")
                part_sources = emit_sources(deltas, opts)
                pieces.append(SummaryPiece(part.title, piece.text, part.tokens, part.location))
                sections.append({"title": part.title, "location": part.location, "tokens": part.tokens, "summary": piece.text,
                                 "truncated": piece.truncated, "sources": part_sources})
            if to_stdout:
                emit("\n## Overall summary\n")
            overall = stream_answer(summ.overall(pieces, gen), reporter, runner, gen, to_stdout=to_stdout)
            sources: list[dict[str, Any]] = []  # the overall summary reads the part summaries, not the source
        else:
            kind = "brief" if style == "brief" else "detailed"  # `sections` of a single section: one thorough summary
            with reporter.task("prefill", total=doc.count) as update:
                deltas = summ.whole(doc, kind, gen, on_progress=lambda n: update(min(n, doc.count)),
                                    cite=opts.cite, max_sources=opts.max_sources)
            if summ.outcomes:
                log.info("%s", summ.outcomes[-1].describe())
            overall = stream_answer(deltas, reporter, runner, gen, to_stdout=to_stdout)
        if to_stdout:
            emit("\n")
        if not sections:
            sources = emit_sources(deltas, opts)
        extra = {"preset": prep.preset_name, "attention": opts.attention, "model": prep.model_name}
        if summ.outcomes:
            extra["memory_cache_reads"] = {how: sum(o.how == how for o in summ.outcomes) for how in ("loaded", "extended", "built")}
        stats = answer_stats(runner, doc, summ.read_seconds, mark, extra) | {"blocks": summ.blocks}
        if opts.json:
            emit_json({"source": doc.name, "style": style, "summary": overall.text, "truncated": overall.truncated,
                       "sources": sources, "sections": sections, "stats": stats})
        log.info("%s", stats_line(stats))


def _check_style(value: str) -> str:
    if value not in STYLES:
        raise typer.BadParameter(f"{value!r} is not one of: {', '.join(STYLES)}")
    return value


@app.command(epilog=EXIT_CODES_HELP)
@shared("model", "backend", "memory", "source", "limit", "output")
def count(
    source: SourceArg,
    tokens_per_second: Annotated[Optional[float], typer.Option("--tokens-per-second", metavar="RATE", help="Prefill speed you measured (`infllm ask` prints it on stderr); gives a time estimate.", min=0.001, show_default=False)] = None,
    calibrate: Annotated[bool, typer.Option("--calibrate", help="Load the model and time a short read and the block scoring on this machine (seconds to a minute); gives a time estimate.")] = False,
    *,
    opts: Options,
) -> None:
    """Count the tokens of SOURCE and estimate memory blocks, key/value memory and peak memory, without
    loading a model (unless --calibrate).

    Tokens are counted with the model's own tokenizer when it is available locally (--model directory,
    or a cached hub model), else with tiktoken cl100k_base/o200k_base when its file is already cached,
    else as characters / 4. The output says which. Peak memory is the prediction `ask` checks before
    loading the model. The time is unknown unless measured: --calibrate, or --tokens-per-second.
    """
    with handle_errors(opts):
        from ..budget import budget as memory_budget
        from ..budget import predict
        from ..estimate import choose_encoder, estimate_memory, human_seconds, model_shape, offline_model_config
        from ..formatting import human_bytes
        from ..models import resolve_device

        reporter = start(opts)
        device = resolve_device(opts.device)
        available = memory_budget(opts.memory_budget, device.type, str(device))
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
        peak = predict(doc.count, memory, opts.attention, shape, device.type) if shape is not None else None
        seconds = doc.count / tokens_per_second if tokens_per_second else None
        time_basis = f"{tokens_per_second:g} tokens/s given with --tokens-per-second" if tokens_per_second else "unknown: pass --calibrate or --tokens-per-second from a measured run"
        if calibrate and not tokens_per_second:
            from ..calibrate import calibrate as run_calibration
            from ..models import load_model

            quiet_library_progress()
            with reporter.status(f"calibrating {model_name}"):
                loaded = load_model(model_name, device=opts.device, dtype=opts.dtype)
                cal = run_calibration(loaded, memory, opts.attention, opts.backend, doc.count)
            seconds, time_basis = cal.seconds, cal.basis
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
            "peak_memory": None if peak is None else {
                "host_bytes": peak.host_bytes, "device_bytes": peak.device_bytes,
                "host_parts": peak.host_parts, "device_parts": peak.device_parts,
                "available_host_bytes": available.host, "available_device_bytes": available.device,
                "available_basis": available.source,
            },
            "time_seconds": seconds,
            "time_basis": time_basis,
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
        if peak is not None:
            where = f"GPU {human_bytes(peak.device_bytes)} + host {human_bytes(peak.host_bytes)}" if device.type == "cuda" else human_bytes(peak.host_bytes)
            avail = " and ".join(f"{k} {human_bytes(v)}" for k, v in (("host", available.host), ("GPU", available.device)) if v is not None)
            lines.append(f"peak memory: about {where} predicted (weights, block store, window, activations, runtime); "
                         f"available: {avail or 'unknown'} ({available.source})")
        if seconds is not None:
            lines.append(f"prefill time: about {human_seconds(seconds)} ({time_basis})")
        else:
            lines.append(f"prefill time: {time_basis}")
        emit("\n".join(lines) + "\n")


from . import chat_cmd  # noqa: E402,F401  registers 'chat'


def main() -> None:
    """Console-script entry point (kept for launchers generated before :mod:`.launch` existed)."""
    from .launch import main as launch_main

    launch_main()
