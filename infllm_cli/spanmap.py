"""Token offsets of a read document back to where the text came from: file, page, lines, section.

:class:`SpanMap` is built while a document is tokenized (:func:`infllm_cli.tokens.read_tokens`): one
*record* per run of text with one provenance (a reader's span, or the part of it inside one tokenized
piece), holding the token offset where it starts and, for sources with line numbers, the token offsets
where each later line of it starts. It keeps no text: four bytes per record field and per line, in
``array('i')`` columns, with paths and section titles interned. :meth:`SpanMap.locate` maps any token
range to the spans it overlaps (consecutive records of one file, page and section merged, line range
computed); excerpts come from the document's token ids, which the reader keeps anyway.

The map is plain data: :meth:`SpanMap.to_dict` / :meth:`SpanMap.from_dict` give a JSON-safe dict (lists
of ints and strings), so it can be saved beside a persisted memory and a loaded memory cites the same
passages.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from dataclasses import dataclass
from typing import Any

from .sources.base import format_location


@dataclass(frozen=True)
class SpanLocation:
    """Where the tokens ``[tokens[0], tokens[1])`` of a document came from."""

    path: str
    page: int | None
    line_start: int | None
    line_end: int | None
    section: str | None
    tokens: tuple[int, int]

    def location(self) -> str:
        """E.g. ``book.pdf p.12``, ``src/a.py:10-42`` (as :meth:`infllm_cli.sources.base.Span.location`)."""
        return format_location(self.path, self.page, self.line_start, self.line_end)

    def key(self) -> tuple[str, int | None, str | None]:
        return (self.path, self.page, self.section)


class SpanMap:
    """Token offset -> provenance for one document (see the module docstring)."""

    def __init__(self) -> None:
        self.starts = array("i")  # token offset where each record starts (non-decreasing)
        self.path_ids = array("i")
        self.pages = array("i")  # -1: none
        self.lines = array("i")  # line number at the record's start, -1: none
        self.section_ids = array("i")  # -1: none
        self.line_offsets = array("i", [0])  # record r's later line starts: line_tokens[line_offsets[r]:line_offsets[r+1]]
        self.line_tokens = array("i")
        self.paths: list[str] = []
        self.sections: list[str] = []
        self._path_index: dict[str, int] = {}
        self._section_index: dict[str, int] = {}
        self.count = 0  # tokens covered

    def __len__(self) -> int:
        return len(self.starts)

    def _intern(self, value: str | None, table: list[str], index: dict[str, int]) -> int:
        if value is None:
            return -1
        i = index.get(value)
        if i is None:
            i = index[value] = len(table)
            table.append(value)
        return i

    def add(self, token_start: int, path: str, page: int | None, line: int | None, section: str | None,
            line_starts: list[int] | None = None) -> None:
        """A record from ``token_start`` on; ``line_starts`` are the token offsets where lines ``line + 1``,
        ``line + 2``, ... begin inside it."""
        if self.starts and token_start < self.starts[-1]:
            raise ValueError(f"records must come in token order: {token_start} after {self.starts[-1]}")
        self.starts.append(token_start)
        self.path_ids.append(self._intern(path, self.paths, self._path_index))
        self.pages.append(-1 if page is None else page)
        self.lines.append(-1 if line is None else line)
        self.section_ids.append(self._intern(section, self.sections, self._section_index))
        if line is not None and line_starts:
            self.line_tokens.extend(line_starts)
        self.line_offsets.append(len(self.line_tokens))

    def _line_at(self, record: int, token: int) -> int | None:
        first = self.lines[record]
        if first < 0:
            return None
        lo, hi = self.line_offsets[record], self.line_offsets[record + 1]
        return first + bisect_right(self.line_tokens, token, lo, hi) - lo

    def locate(self, start: int, end: int) -> list[SpanLocation]:
        """The spans that the token range ``[start, end)`` overlaps, in order; consecutive records with the
        same path, page and section are merged into one location with the whole line range."""
        start, end = max(0, start), min(end, self.count)
        if start >= end or not self.starts:
            return []
        r = max(0, bisect_right(self.starts, start) - 1)
        out: list[SpanLocation] = []
        n = len(self.starts)
        while r < n and self.starts[r] < end:
            rec_end = self.starts[r + 1] if r + 1 < n else self.count
            lo, hi = max(start, self.starts[r]), min(end, rec_end)
            if lo < hi:
                pid, sid, page = self.path_ids[r], self.section_ids[r], self.pages[r]
                loc = SpanLocation(self.paths[pid], None if page < 0 else page, self._line_at(r, lo),
                                   self._line_at(r, hi - 1), None if sid < 0 else self.sections[sid], (lo, hi))
                prev = out[-1] if out else None
                if prev is not None and prev.key() == loc.key() and prev.tokens[1] == lo:
                    out[-1] = SpanLocation(prev.path, prev.page, prev.line_start if prev.line_start is not None else loc.line_start,
                                           loc.line_end if loc.line_end is not None else prev.line_end, prev.section,
                                           (prev.tokens[0], hi))
                else:
                    out.append(loc)
            r += 1
        return out

    # -- persistence ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (lists of ints and strings); :meth:`from_dict` restores it."""
        return {
            "version": 1,
            "count": self.count,
            "paths": list(self.paths),
            "sections": list(self.sections),
            **{name: getattr(self, name).tolist() for name in _COLUMNS},
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> "SpanMap":
        if state.get("version") != 1:
            raise ValueError(f"unknown span map version {state.get('version')!r}")
        m = cls()
        m.count = int(state["count"])
        m.paths = list(state["paths"])
        m.sections = list(state["sections"])
        m._path_index = {p: i for i, p in enumerate(m.paths)}
        m._section_index = {s: i for i, s in enumerate(m.sections)}
        for name in _COLUMNS:
            setattr(m, name, array("i", state[name]))
        if not (len(m.starts) == len(m.path_ids) == len(m.pages) == len(m.lines) == len(m.section_ids)
                == len(m.line_offsets) - 1):
            raise ValueError("span map columns have different lengths")
        return m


_COLUMNS = ("starts", "path_ids", "pages", "lines", "section_ids", "line_offsets", "line_tokens")
