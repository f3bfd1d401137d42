"""Questions, chats and summaries over a document read once (the library behind the CLI commands).

Nothing here prints: answers are produced as iterators of text deltas, progress goes to callbacks.

>>> from infllm_cli.models import load_model
>>> from infllm_cli.runner import Runner
>>> from infllm_cli.config import preset, GenerationConfig
>>> from infllm_cli.sources import open_source
>>> loaded = load_model("Qwen/Qwen2.5-1.5B-Instruct")
>>> session = DocumentSession(Runner(loaded, preset("paper")))
>>> doc = read_document(open_source("book.pdf"), loaded.tokenizer)
>>> session.read(doc)                                     # the document streams in once
>>> print("".join(session.ask("Who betrays the captain?", GenerationConfig())))
>>> print("".join(session.ask("Where does it end?", GenerationConfig())))   # same read, independent
>>> answer = session.ask("Who betrays the captain?", GenerationConfig(), cite=True)
>>> text = "".join(answer)                                 # generate; then
>>> [s.location() for s in answer.sources]                # the passages it attended to most

With ``cache=MemoryCache()`` (:mod:`infllm_cli.persist`) the memory is saved after the read and loaded
(or extended, for a document that grew) the next time the same document is read with the same model and
memory configuration; ``session.outcome`` says which happened.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from ..citations import Source, cite
from ..config import GenerationConfig
from ..errors import UsageError
from ..prompting import PromptFormat, Turn
from ..tokens import DocumentTokens, Encoder, HFEncoder, Segment, read_tokens

log = logging.getLogger("infllm.session")

#: Tokens beyond the document the block store is sized for (prompt, question, answer); see :func:`read_into`.
RESERVE_SLACK_TOKENS = 4096


def read_document(document: Any, tokenizer: Any, *, max_tokens: int | None = None, on_progress: Callable | None = None) -> DocumentTokens:
    """Read a :class:`~infllm_cli.sources.base.Document` into token ids with the model's tokenizer."""
    return read_tokens(document, HFEncoder(tokenizer), max_tokens=max_tokens, on_progress=on_progress)


# -- question limits ---------------------------------------------------------------------------------

#: Longest question, in characters, checked before anything is loaded: a question is read at true
#: positions in the local window, and longer text belongs in the document.
MAX_QUESTION_CHARS = 32_768


def check_question(question: str) -> None:
    """Raise :class:`UsageError` for an empty question or one over :data:`MAX_QUESTION_CHARS`."""
    if not question.strip():
        raise UsageError("a question is empty")
    if len(question) > MAX_QUESTION_CHARS:
        raise UsageError(
            f"a question has {len(question):,} characters; the limit is {MAX_QUESTION_CHARS:,} "
            "(put long text in the document instead)"
        )


def question_token_limit(memory: Any, attention: str, model_config: Any = None) -> int | None:
    """Most tokens a question may have: the local window ``n_local`` with the context memory or streaming
    attention (the question and the answer are read at true positions in it), the model's trained context
    with dense attention."""
    if attention != "dense":
        return int(memory.n_local)
    n_ctx = getattr(model_config, "max_position_embeddings", None)
    return n_ctx if isinstance(n_ctx, int) and n_ctx > 0 else None


def check_question_tokens(question: str, tokenizer: Any, limit: int | None) -> None:
    """Raise :class:`UsageError` when ``question`` has more than ``limit`` tokens."""
    if limit is None:
        return
    n = len(tokenizer.encode(question.strip(), add_special_tokens=False))
    if n > limit:
        raise UsageError(
            f"a question has {n:,} tokens; at most {limit:,} fit the local window (shorten it, or raise --n-local)"
        )


# -- text post-processing ----------------------------------------------------------------------------


class StopText:
    """Cuts a stream of text deltas at the first stop string, holding back only what could start one;
    also drops leading whitespace of the answer."""

    def __init__(self, stops: Sequence[str] = ()) -> None:
        self.stops = tuple(s for s in stops if s)
        self.held = ""
        self.started = False
        self.stopped = False

    def push(self, delta: str) -> str:
        if self.stopped:
            return ""
        if not self.started:
            delta = delta.lstrip()
            if not delta:
                return ""
            self.started = True
        text = self.held + delta
        for stop in self.stops:
            i = text.find(stop)
            if i >= 0:
                self.stopped = True
                self.held = ""
                return text[:i]
        keep = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:n]):
                    keep = max(keep, n)
                    break
        self.held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        out, self.held = ("" if self.stopped else self.held), ""
        return out


def generate_text(runner: Any, suffix: Sequence[int], gen: GenerationConfig, stops: Sequence[str] = (),
                  ledger: Any = None) -> Iterator[str]:
    """Feed ``suffix``, then yield the answer's text deltas (cut at ``stops``; leading and trailing
    whitespace removed). With a ``ledger``, the answer's attention is recorded in it (citations)."""
    cut = StopText(stops)
    stream = runner.generate(list(suffix), gen, ledger=ledger) if ledger is not None else runner.generate(list(suffix), gen)
    pending_ws = ""
    try:
        for delta in stream:
            text = cut.push(delta)
            if text:
                # hold trailing whitespace until more text follows, so the answer ends cleanly
                stripped = text.rstrip()
                if stripped:
                    yield pending_ws + stripped
                    pending_ws = text[len(stripped) :]
                else:
                    pending_ws += text
            if cut.stopped:
                break
        tail = cut.flush().rstrip()
        if tail:
            yield pending_ws + tail
    finally:
        stream.close()


def with_turn_stops(gen: GenerationConfig, fmt: PromptFormat) -> GenerationConfig:
    """``gen`` plus the chat template's end-of-turn tokens as stop tokens."""
    extra = tuple(i for i in fmt.stop_token_ids() if i not in gen.stop_token_ids)
    return dataclasses.replace(gen, stop_token_ids=tuple(gen.stop_token_ids) + extra) if extra else gen


def read_into(runner: Any, prefix: Sequence[int], body: Any, on_progress: Callable[[int], None] | None,
              cache: Any = None, *, document: Any = None, refresh: bool = False) -> tuple[int, float, Any]:
    """Empty the runner's memory and stream ``prefix`` then ``body`` into it.

    ``on_progress`` sees the body's tokens fed so far, counting the prefix. With a
    :class:`~infllm_cli.persist.MemoryCache` (and a runner with a context memory) the read goes through it
    (:class:`~infllm_cli.persist.CachedRead`): loaded, extended from a saved prefix, or built and saved.
    Returns (tokens fed, seconds, :class:`~infllm_cli.persist.ReadOutcome` or None without a cache).
    """
    if cache is not None and runner.attention != "dense":
        from ..persist import CachedRead

        outcome = CachedRead(runner, cache, prefix, body, document=document, refresh=refresh).run(on_progress)
        return outcome.tokens_read, outcome.seconds, outcome
    runner.reset()
    if hasattr(body, "__len__"):  # room for the document, the question and the answer, allocated once
        runner.reserve(len(prefix) + len(body) + RESERVE_SLACK_TOKENS)
    start = time.perf_counter()
    base = runner.feed(prefix) if prefix else 0
    fed = base + runner.feed(body, (lambda n: on_progress(base + n)) if on_progress else None)
    return fed, time.perf_counter() - start, None


@dataclass
class Citing:
    """Where the document sat in the stream an answer was generated from, to cite it afterwards."""

    document: DocumentTokens
    stream_offset: int  # stream position of document token ``doc_start``
    doc_start: int = 0
    doc_end: int | None = None
    max_sources: int = 5


class Answer:
    """An answer being generated: iterate it for text deltas; once it is exhausted, :attr:`text` is the
    whole answer and :attr:`sources` the passages it drew from (empty unless it was asked with citations)."""

    def __init__(self, runner: Any, suffix: Sequence[int], gen: GenerationConfig, stops: Sequence[str] = (),
                 citing: Citing | None = None) -> None:
        self._runner = runner
        self._citing = citing
        self._ledger = runner.cache.new_ledger() if citing is not None else None
        if citing is not None:
            end = citing.document.count if citing.doc_end is None else citing.doc_end
            self._ledger.span = (citing.stream_offset, citing.stream_offset + end - citing.doc_start)
        self._deltas = generate_text(runner, suffix, gen, stops, self._ledger)
        self._pieces: list[str] = []
        self._sources: list[Source] | None = None
        self.done = False

    def __iter__(self) -> "Answer":
        return self

    def __next__(self) -> str:
        try:
            delta = next(self._deltas)
        except StopIteration:
            self.done = True
            raise
        self._pieces.append(delta)
        return delta

    def close(self) -> None:
        self._deltas.close()

    @property
    def text(self) -> str:
        return "".join(self._pieces)

    @property
    def sources(self) -> list[Source]:
        """The cited passages, best first (computed once, after the answer is complete)."""
        if self._sources is None:
            if not self.done:
                raise RuntimeError("the answer is still being generated: consume it first")
            c = self._citing
            if c is None or self._ledger is None:
                self._sources = []
            else:
                tok = self._runner.loaded.tokenizer
                self._sources = cite(self._ledger, c.document, c.stream_offset, doc_start=c.doc_start,
                                     doc_end=c.doc_end, max_sources=c.max_sources,
                                     decode=lambda ids: tok.decode(ids, skip_special_tokens=True))
        return self._sources


def check_citable(runner: Any) -> None:
    """Citations need the context memory: raise :class:`~infllm_cli.errors.UsageError` for dense attention."""
    from ..errors import UsageError

    if getattr(runner, "attention", "infllm") == "dense":
        raise UsageError("--cite needs the context memory: use --attention infllm (or streaming), not dense")


# -- stats -------------------------------------------------------------------------------------------


@dataclass
class StatsMark:
    """Engine counters at one moment, to report per-answer deltas."""

    generate_seconds: float
    generated_tokens: int

    @classmethod
    def of(cls, runner: Any) -> "StatsMark":
        return cls(runner.stats.generate_seconds, runner.stats.generated_tokens)


def answer_stats(runner: Any, doc: DocumentTokens | None, read_seconds: float, since: StatsMark, extra: dict | None = None) -> dict[str, Any]:
    s = runner.stats
    gen_s = s.generate_seconds - since.generate_seconds
    gen_n = s.generated_tokens - since.generated_tokens
    out: dict[str, Any] = {
        "tokens_read": s.tokens_read,
        "document_tokens": doc.count if doc else None,
        "blocks": s.blocks,
        "prefill_seconds": round(read_seconds, 4),
        "prefill_tokens_per_second": round(doc.count / read_seconds, 2) if doc and read_seconds > 0 else None,
        "generate_seconds": round(gen_s, 4),
        "generated_tokens": gen_n,
        "generate_tokens_per_second": round(gen_n / gen_s, 2) if gen_s > 0 else None,
        "peak_memory_bytes": s.peak_memory_bytes,
    }
    if doc is not None:
        r = doc.report
        out["source"] = {
            "name": doc.name,
            "kind": doc.kind,
            "units": r.units,
            "units_without_text": r.units_without_text,
            "skipped": len(r.skipped),
            "characters": r.chars,
            "read": doc.describe(),
        }
    if extra:
        out.update(extra)
        if (extra.get("memory_cache") or {}).get("how") in ("loaded", "extended"):
            out["prefill_tokens_per_second"] = None  # the memory was (mostly) loaded, not read
    return out


def cache_stats(outcome: Any, extra: dict | None) -> dict | None:
    """``extra`` plus a ``memory_cache`` entry describing a read through the cache."""
    if outcome is None:
        return extra
    info = {"how": outcome.how, "tokens_reused": outcome.tokens_reused, "tokens_read": outcome.tokens_read,
            "seconds": round(outcome.seconds, 4), "bytes": outcome.entry_bytes, "entry": outcome.entry_id,
            "saved_seconds": None if outcome.saved_seconds is None else round(outcome.saved_seconds, 3)}
    return dict(extra or {}, memory_cache=info)


# -- questions ---------------------------------------------------------------------------------------


@dataclass
class DocumentSession:
    """A runner holding one document; answers questions independently from that single read."""

    runner: Any
    format: PromptFormat | None = None
    document: DocumentTokens | None = None
    read_seconds: float = 0.0
    doc_offset: int = 0  # stream position of the document's first token
    cache: Any = None  # a persist.MemoryCache: save the memory after reading, reuse it next time
    refresh: bool = False  # with a cache: read again and replace the saved memory
    outcome: Any = None  # persist.ReadOutcome of the last read through the cache
    _snapshot: Any = None
    _used: bool = False

    def __post_init__(self) -> None:
        if self.format is None:
            self.format = PromptFormat.for_tokenizer(self.runner.loaded.tokenizer)

    def read(self, document: DocumentTokens, on_progress: Callable[[int], None] | None = None) -> int:
        """Reset the memory, stream the question prefix and the document in, and remember that state."""
        prefix = self.format.qa_prefix()
        self.doc_offset = len(prefix)
        fed, self.read_seconds, self.outcome = read_into(self.runner, prefix, document.ids, on_progress, self.cache,
                                                         document=document, refresh=self.refresh)
        log.debug("document read: %d tokens fed (prefix %d) in %.2fs", fed, len(prefix), self.read_seconds)
        self.document = document
        self._snapshot = self.runner.snapshot()
        self._used = False
        return fed

    def ask(self, question: str, gen: GenerationConfig, history: Sequence[Turn] = (), *, cite: bool = False,
            max_sources: int = 5) -> Answer:
        """The answer to ``question`` (after the earlier ``history`` turns): an :class:`Answer`, iterated for
        its text deltas; with ``cite``, its :attr:`Answer.sources` are the passages it attended to most."""
        if self._snapshot is None:
            raise RuntimeError("read a document first")
        if cite:
            check_citable(self.runner)
        if self._used:  # the first question continues from the document directly
            self.runner.restore(self._snapshot)
        self._used = True
        suffix = self.format.qa_suffix(question, history)
        citing = Citing(self.document, self.doc_offset, max_sources=max_sources) if cite else None
        return Answer(self.runner, suffix, with_turn_stops(gen, self.format), self.format.stop_strings(), citing)

    def stats(self, since: StatsMark, extra: dict | None = None) -> dict[str, Any]:
        return answer_stats(self.runner, self.document, self.read_seconds, since, cache_stats(self.outcome, extra))


# -- summaries ---------------------------------------------------------------------------------------


@dataclass
class Part:
    """A range of the document summarized on its own: one section, several small ones, or a slice."""

    title: str
    start: int
    end: int
    location: str = ""
    sections: int = 1
    titled: bool = True  # False for slices of a source without structure ("Part i of n")

    @property
    def tokens(self) -> int:
        return self.end - self.start


def segment_title(seg: Segment, kind: str) -> str | None:
    if kind == "directory":
        return f"{seg.path}: {seg.title}" if seg.title and seg.title != seg.path else seg.path
    return seg.title


def segment_end_title(seg: Segment, kind: str) -> str | None:
    """The title of the section in force at the end of ``seg`` (a PDF page may start several)."""
    if seg.last_title is None:
        return segment_title(seg, kind)
    return segment_title(dataclasses.replace(seg, title=seg.last_title), kind)


def plan_parts(doc: DocumentTokens, *, min_tokens: int, max_untitled_tokens: int) -> list[Part]:
    """Group the document's segments into parts to summarize one by one.

    Consecutive titled segments shorter than ``min_tokens`` are merged; untitled stretches longer than
    ``max_untitled_tokens`` are cut into equal slices (a document without any structure becomes
    "Part 1", "Part 2", ...). A titled section is never cut, however long: the memory holds it.
    """
    parts: list[Part] = []
    pending: list[tuple[str | None, Segment]] = []

    def flush_pending() -> None:
        if not pending:
            return
        titled = [(t, s) for t, s in pending if t]
        first, last = pending[0][1], pending[-1][1]
        title = ""
        if titled:  # "<first> … <last>" whenever the part covers more than one section
            first_title, last_title = titled[0][0], segment_end_title(titled[-1][1], doc.kind)
            title = first_title if last_title in (None, first_title) else f"{first_title} … {last_title}"
        loc = first.locations() if first is last else f"{first.first_location} - {last.last_location}"
        parts.append(Part(title, first.start, last.end, loc, len(pending)))
        pending.clear()

    # merge adjacent untitled segments first (a document without structure may still have many spans)
    for seg in doc.segments:
        title = segment_title(seg, doc.kind)
        if title is None:
            if pending and pending[-1][0] is None:
                pending.append((None, seg))
                continue
            flush_pending()
            pending.append((None, seg))
            continue
        if pending and pending[-1][0] is None:
            flush_pending()
        pending.append((title, seg))
        if sum(s.tokens for _, s in pending) >= min_tokens:
            flush_pending()
    flush_pending()

    # cut long untitled parts into slices; merge a too-small trailing titled group into the one before
    out: list[Part] = []
    for part in parts:
        if not part.title and part.tokens > max_untitled_tokens:
            n = math.ceil(part.tokens / max_untitled_tokens)
            step = math.ceil(part.tokens / n)
            for i in range(n):
                s = part.start + i * step
                out.append(Part("", s, min(part.end, s + step), part.location, 1, titled=False))
        else:
            out.append(part)
    if len(out) > 1 and out[-1].title and out[-1].tokens < min_tokens // 4 and out[-2].title:
        last = out.pop()
        prev = out[-1]
        out[-1] = Part(f"{prev.title.split(' … ')[0]} … {last.title.split(' … ')[-1]}", prev.start, last.end, prev.location, prev.sections + last.sections)
    for i, part in enumerate(out, 1):
        if not part.title:
            part.title = f"Part {i} of {len(out)}"
            part.titled = False
    return out


@dataclass
class SummaryPiece:
    title: str | None
    text: str
    tokens: int
    location: str = ""


@dataclass
class Summarizer:
    """Brief, detailed and section-by-section summaries (see :meth:`run`)."""

    runner: Any
    format: PromptFormat | None = None
    encoder: Encoder | None = None
    pieces: list[SummaryPiece] = field(default_factory=list)
    read_seconds: float = 0.0
    cache: Any = None  # a persist.MemoryCache for the reads of the whole document and of each part
    refresh: bool = False
    outcomes: list[Any] = field(default_factory=list)
    blocks: int = 0  # memory blocks the document's reads built (summed over parts read one by one)

    def __post_init__(self) -> None:
        if self.format is None:
            self.format = PromptFormat.for_tokenizer(self.runner.loaded.tokenizer)
        if self.encoder is None:
            self.encoder = HFEncoder(self.runner.loaded.tokenizer)

    def per_section(self, doc: DocumentTokens, style: str) -> bool:
        """``sections``: always (if there is more than one part); ``detailed``: when the document is
        longer than the local window; ``brief``: never."""
        if style == "brief":
            return False
        if style == "detailed" and doc.count <= self.runner.config.n_local:
            return False
        return len(self.plan(doc)) > 1

    def plan(self, doc: DocumentTokens) -> list[Part]:
        n_local = self.runner.config.n_local
        return plan_parts(doc, min_tokens=max(n_local // 2, 64), max_untitled_tokens=max(4 * n_local, 1024))

    def _run(self, prefix: list[int], body: Any, suffix: list[int], gen: GenerationConfig, on_progress: Callable[[int], None] | None,
             citing: Citing | None = None, cache: Any = None, document: Any = None, *, is_document: bool = True) -> Answer:
        if citing is not None:
            check_citable(self.runner)
            citing.stream_offset = len(prefix)
        _, seconds, outcome = read_into(self.runner, prefix, body, on_progress, cache, document=document, refresh=self.refresh)
        self.read_seconds += seconds
        if outcome is not None:
            self.outcomes.append(outcome)
        if is_document:
            self.blocks += self.runner.blocks
        return Answer(self.runner, suffix, with_turn_stops(gen, self.format), (), citing)

    def whole(self, doc: DocumentTokens, kind: str, gen: GenerationConfig, on_progress: Callable[[int], None] | None = None,
              *, cite: bool = False, max_sources: int = 5) -> Answer:
        """One summary (``kind`` brief or detailed) of the whole document (with ``cite``, its sources)."""
        fmt = self.format
        citing = Citing(doc, 0, max_sources=max_sources) if cite else None
        return self._run(fmt.summary_prefix(kind), doc.ids, fmt.summary_suffix(kind), gen, on_progress, citing,
                         self.cache, doc)

    def part(self, doc: DocumentTokens, part: Part, gen: GenerationConfig, on_progress: Callable[[int], None] | None = None,
             *, cite: bool = False, max_sources: int = 5) -> Answer:
        """A summary of one part, read on its own into an emptied memory (with ``cite``, its sources)."""
        fmt = self.format
        title = part.title if part.titled else None
        citing = Citing(doc, 0, part.start, part.end, max_sources) if cite else None
        return self._run(fmt.summary_prefix("section", title), doc.ids[part.start : part.end],
                         fmt.summary_suffix("section", title), gen, on_progress, citing, self.cache)

    def overall(self, pieces: Sequence[SummaryPiece], gen: GenerationConfig) -> Answer:
        """An overall summary from the part summaries."""
        fmt = self.format
        text = "\n\n".join(f"## {p.title}\n{p.text.strip()}" for p in pieces)
        return self._run(fmt.summary_prefix("overall"), self.encoder.encode(text), fmt.summary_suffix("overall"), gen, None, is_document=False)
