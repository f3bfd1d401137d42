"""Sources of an answer: the passages of the document its tokens attended to most, with their provenance.

:func:`cite` turns an :class:`~infllm_cli.memory.ledger.AttentionLedger` filled while an answer was
generated into a short list of :class:`Source` objects:

1. the ledger's units (block-sized stream ranges: exactly the memory's blocks) that lie inside the
   document are its candidate passages, each with the attention mass it received (summed over layers,
   heads and answer tokens); the initial tokens (attention sinks) and the prompt/answer tokens around
   the document are not candidates;
2. ``score`` = a passage's mass / the mass of all the document's passages: the share of the attention the
   answer paid to the document that went to this passage (scores of all passages sum to 1);
3. the best passages are kept, adjacent ones merged (scores added), each mapped through the document's
   :class:`~infllm_cli.spanmap.SpanMap` to file, page, lines and section (a passage that crosses a page or
   file boundary is split, its score shared by tokens), passages in the same place merged again, and the
   ``max_sources`` best returned, best first, with a one-line excerpt decoded from the token ids.

What the score does and does not mean: docs/citations.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .memory.ledger import AttentionLedger
from .spanmap import SpanLocation

EXCERPT_CHARS = 120
CANDIDATES_PER_SOURCE = 4  # units considered per source asked for, before merging


@dataclass
class Source:
    """One cited passage of the document."""

    path: str
    page: int | None
    line_start: int | None
    line_end: int | None
    section: str | None
    tokens: tuple[int, int]  # document token range [start, end)
    score: float  # share of the answer's attention to the document
    excerpt: str = ""

    def location(self) -> str:
        return SpanLocation(self.path, self.page, self.line_start, self.line_end, self.section, self.tokens).location()

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "page": self.page, "line_start": self.line_start, "line_end": self.line_end,
            "section": self.section, "tokens": list(self.tokens), "score": round(self.score, 4),
            "excerpt": self.excerpt,
        }


def one_line_excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """Whitespace collapsed to single spaces, cut to ``limit`` characters with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def cite(
    ledger: AttentionLedger,
    document: Any,
    stream_offset: int,
    *,
    doc_start: int = 0,
    doc_end: int | None = None,
    decode: Callable[[list[int]], str] | None = None,
    max_sources: int = 5,
) -> list[Source]:
    """The ``max_sources`` passages of ``document`` (a :class:`~infllm_cli.tokens.DocumentTokens`) that
    received the most attention in ``ledger``.

    The memory read the document's tokens ``[doc_start, doc_end)`` starting at stream position
    ``stream_offset``. ``decode`` (token ids -> text) gives the excerpts; without it they are empty.
    """
    if max_sources <= 0:
        return []
    doc_end = document.count if doc_end is None else doc_end
    shift = doc_start - stream_offset  # stream position + shift = document token
    units = ledger.passages(stream_offset, stream_offset + (doc_end - doc_start))
    total = sum(p.mass for p in units)
    if total <= 0:
        return []
    best = sorted(units, key=lambda p: -p.mass)[: max_sources * CANDIDATES_PER_SOURCE]
    best.sort(key=lambda p: p.start)
    runs: list[list[Any]] = []  # [start, end, mass, (peak mass, peak start, peak end)] in document tokens
    for p in best:
        lo, hi = p.start + shift, p.end + shift
        peak = (p.mass, lo, hi)
        if runs and runs[-1][1] == lo:
            runs[-1][1] = hi
            runs[-1][2] += p.mass
            runs[-1][3] = max(runs[-1][3], peak)
        else:
            runs.append([lo, hi, p.mass, peak])
    runs.sort(key=lambda r: -r[3][0])  # most attended first: a duplicate location keeps the better passage
    sources: list[Source] = []
    peaks: dict[int, tuple[float, int, int]] = {}
    for lo, hi, mass, peak in runs:
        locations = document.locate(lo, hi) or [SpanLocation(document.name, None, None, None, None, (lo, hi))]
        for loc in locations:
            share = mass * (loc.tokens[1] - loc.tokens[0]) / (hi - lo)
            src = Source(loc.path, loc.page, loc.line_start, loc.line_end, loc.section, loc.tokens, share / total)
            kept = _merge_or_append(sources, src)
            peaks[id(kept)] = max(peaks.get(id(kept), peak), peak)
    # ranked by the passage's most attended block, not by its total: merging a run of moderately attended
    # neighbours (typically the text right before the question) must not outrank one sharply attended block
    sources.sort(key=lambda s: (-peaks[id(s)][0], -s.score))
    sources = sources[:max_sources]
    if decode is not None and getattr(document, "ids", None):
        for s in sources:  # the excerpt shows the most attended block of the passage
            _, a, b = peaks[id(s)]
            a, b = max(a, s.tokens[0]), min(b, s.tokens[1])
            a, b = (a, b) if a < b else s.tokens
            s.excerpt = one_line_excerpt(decode(list(document.ids[a:b])))
    return sources


def _merge_or_append(sources: list[Source], src: Source) -> Source:
    """Merge ``src`` into a source of the same path, page and section whose tokens touch it (the span
    covering both), or into one with the same printed location (a duplicate: scores add up, the passage
    kept is the one already listed, from a more attended run); else append it. The one kept."""
    for s in sources:
        if (s.path, s.page, s.section) != (src.path, src.page, src.section):
            continue
        if s.tokens[0] <= src.tokens[1] and src.tokens[0] <= s.tokens[1]:
            first, last = (s, src) if s.tokens[0] <= src.tokens[0] else (src, s)
            s.tokens = (first.tokens[0], max(s.tokens[1], src.tokens[1]))
            s.line_start = first.line_start if first.line_start is not None else last.line_start
            ends = [x for x in (s.line_end, src.line_end) if x is not None]
            s.line_end = max(ends) if ends else None
            s.score += src.score
            return s
        if s.location() == src.location():
            s.score += src.score
            return s
    sources.append(src)
    return src


def format_sources(sources: Sequence[Source]) -> str:
    """The "Sources" block printed after an answer (empty string when there are none)."""
    if not sources:
        return ""
    lines = ["Sources:"]
    for i, s in enumerate(sources, 1):
        where = s.location()
        if s.section and s.section != s.path:
            where += f" ({s.section})"
        lines.append(f"  [{i}] {where}  {s.score:.0%}" + (f'  "{s.excerpt}"' if s.excerpt else ""))
    return "\n".join(lines) + "\n"
