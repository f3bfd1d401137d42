"""A quick measurement of how long reading a document will take on this machine (``infllm count --calibrate``).

Two measurements, a few seconds each, instead of a nominal speed:

1. the model reads random tokens until its local window is full, then the next ``measure`` tokens are
   timed: the cost per token of the model and the memory attention once the window is full, which stays
   the same for the whole document;
2. block scoring, the one cost that grows with the document (every query chunk of every layer scores every
   stored block), is timed on a synthetic store of the size the whole document will produce. It grows
   linearly from nothing to that, so the read pays half of it on average.

``seconds = tokens * cost_per_token + layers * (tokens / exc_block_size) * score_at_end / 2``

Dense attention grows quadratically and is not estimated.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

from .config import MemoryConfig

log = logging.getLogger("infllm.calibrate")


@dataclass(frozen=True)
class Calibration:
    seconds: float | None
    tokens_per_second: float  # model + memory attention once the window is full
    measured_tokens: int
    scoring_seconds: float  # of the whole read
    basis: str


def calibrate(loaded: Any, memory: MemoryConfig, attention: str, backend: str, tokens: int, measure: int = 2048) -> Calibration:
    """Time a short read with ``loaded`` and the block scoring at the size of a ``tokens``-token read."""
    from .runner import Runner

    runner = Runner(loaded, memory, attention=attention, backend=backend)
    vocab = int(loaded.model.config.vocab_size)
    gen = torch.Generator().manual_seed(0)
    fill = memory.n_init + memory.n_local + memory.block_size if attention != "dense" else 0
    measure = max(memory.exc_block_size, measure // memory.exc_block_size * memory.exc_block_size)
    warm = torch.randint(0, vocab, (fill + memory.exc_block_size,), generator=gen).tolist()
    timed = torch.randint(0, vocab, (measure,), generator=gen).tolist()
    runner.feed(warm)
    start = time.perf_counter()
    runner.feed(timed)
    per_token = (time.perf_counter() - start) / measure
    rate = 1.0 / per_token
    if attention == "dense":
        return Calibration(None, rate, measure, 0.0, f"dense: {rate:,.0f} tokens/s over {measure:,} tokens, "
                           "but its cost grows with the length; not estimated")
    scoring = 0.0
    if attention == "infllm" and memory.topk > 0:
        scoring = _scoring_seconds(runner, memory, tokens)
    seconds = tokens * per_token + scoring
    basis = (f"calibrated on this machine: {rate:,.0f} tokens/s over {measure:,} tokens with a full window, "
             f"plus {scoring:.1f} s of block scoring measured at the final memory size")
    log.info("%s", basis)
    return Calibration(seconds, rate, measure, scoring, basis)


def _scoring_seconds(runner: Any, memory: MemoryConfig, tokens: int) -> float:
    """Block scoring of a whole ``tokens``-token read: timed per call at the final store size, half of that
    on average over the read, for every query chunk of every layer."""
    layer = runner.cache.memories[0]
    n_blocks = max(0, tokens - memory.n_init - memory.n_local) // memory.block_size
    if n_blocks <= memory.topk:
        return 0.0
    n_kv, _, d = layer.k_raw.shape
    h = runner.model.config.num_attention_heads
    dev, dt = layer.k_raw.device, layer.k_raw.dtype
    r = memory.repr_topk
    store = SimpleNamespace(  # what BlockSelector reads: random representatives of the final size
        n_blocks=n_blocks,
        repr_keys=torch.randn((n_blocks, n_kv, max(r, 1), d), device=dev, dtype=dt),
        repr_sum=torch.randn((n_blocks, n_kv, 1, d), device=dev, dtype=dt),
        bounds=torch.randn((n_blocks, n_kv, 1, 2 * d), device=dev, dtype=dt),
    )
    q = torch.randn((h, memory.exc_block_size, d), device=dev, dtype=dt)
    layer.selector.select(q, store)  # warm-up
    calls = 5
    start = time.perf_counter()
    for _ in range(calls):
        layer.selector.select(q, store)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    per_call = (time.perf_counter() - start) / calls
    chunks = tokens / memory.exc_block_size
    return len(runner.cache.memories) * chunks * per_call / 2
