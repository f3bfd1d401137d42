"""A minimal in-memory Document for unit tests of the token and summary layers (the CLI tests use real sources)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from infllm_cli.sources.base import ReadReport, Span


@dataclass
class ListDocument:
    spans_: list[Span]
    name: str = "doc.txt"
    kind: str = "text"
    report: ReadReport = field(default_factory=ReadReport)

    def spans(self) -> Iterator[Span]:
        for span in self.spans_:
            self.report.chars += len(span.text)
            yield span
        self.report.units = len({s.page or s.path for s in self.spans_})


class CharEncoder:
    """One token per character: makes offsets easy to check."""

    description = "chars"
    exact = True

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]
