"""Per-token negative log-likelihood of a text, overall and by position bucket.

The text streams through a :class:`~infllm_cli.runner.Runner` chunk by chunk; each chunk's logits are
turned into NLL sums per bucket at once, so memory stays bounded whatever the length. The logits of a
chunk's last position score the first token of the next chunk.

Buckets are by target position (the index of the predicted token in the stream): 0-256, 256-512,
512-1K, 1K-2K, 2K-4K, then doubling to the end.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from .config import MemoryConfig
from .models import LoadedModel
from .runner import Runner


def bucket_start(position: int) -> int:
    """First position of the bucket holding ``position``: 0 below 256, else the largest power of two <= it."""
    return 0 if position < 256 else 1 << (position.bit_length() - 1)


def bucket_edges(n_tokens: int) -> list[int]:
    """Bucket boundaries covering positions ``0 .. n_tokens``: 0, 256, 512, 1K, 2K, 4K, 8K, ... n_tokens."""
    edges = [0]
    start = 256
    while start < n_tokens:
        edges.append(start)
        start *= 2
    return edges + [n_tokens]


@dataclass
class PerplexityResult:
    tokens: int
    attention: str
    config: dict[str, Any]
    bucket_sums: dict[int, float] = field(default_factory=dict)  # bucket start -> NLL sum
    bucket_counts: dict[int, int] = field(default_factory=dict)

    @property
    def count(self) -> int:
        """Predicted tokens (every token but the first)."""
        return sum(self.bucket_counts.values())

    @property
    def nll(self) -> float:
        return sum(self.bucket_sums.values()) / self.count if self.count else float("nan")

    def buckets(self) -> list[dict[str, float]]:
        edges = bucket_edges(self.tokens)
        rows = []
        for start, end in zip(edges[:-1], edges[1:]):
            n = self.bucket_counts.get(start, 0)
            if n:
                nll = self.bucket_sums[start] / n
                rows.append({"start": start, "end": end, "nll": nll, "ppl": math.exp(nll)})
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "nll": self.nll,
            "ppl": math.exp(self.nll) if self.count else float("nan"),
            "attention": self.attention,
            "config": self.config,
            "buckets": self.buckets(),
        }


def perplexity(
    loaded: LoadedModel,
    tokens: Iterable[int],
    memory: MemoryConfig,
    attention: str = "infllm",
    backend: str = "auto",
    max_tokens: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> PerplexityResult:
    """Stream ``tokens`` (at most ``max_tokens``) and accumulate next-token NLL by bucket."""
    runner = Runner(loaded, memory, attention=attention, backend=backend)
    config = {"backend": backend, **memory.to_dict()} if attention != "dense" else {"chunk_size": memory.chunk_size}
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    prev_logits: torch.Tensor | None = None
    limited = tokens if max_tokens is None else itertools.islice(tokens, max_tokens)
    pos = 0  # stream index of the chunk's first token
    for chunk in runner.chunks(limited):
        logits = runner.forward(chunk, logits_to_keep=0).float()  # [n, V]
        if prev_logits is not None:  # the previous chunk's last logits score this chunk's first token
            logits = torch.cat([prev_logits[None], logits])
            targets, first_target = chunk, pos
        else:
            targets, first_target = chunk[1:], 1
        nll = torch.nn.functional.cross_entropy(
            logits[: len(targets)], torch.tensor(targets, device=logits.device), reduction="none"
        )
        prev_logits = logits[-1]
        for t, value in enumerate(nll.double().tolist(), start=first_target):  # bucket by target position
            b = bucket_start(t)
            sums[b] = sums.get(b, 0.0) + value
            counts[b] = counts.get(b, 0) + 1
        pos += len(chunk)
        if on_progress is not None:
            on_progress(pos)
    return PerplexityResult(tokens=pos, attention=attention, config=config, bucket_sums=sums, bucket_counts=counts)
