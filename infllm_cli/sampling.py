"""Choosing the next token from logits: greedy, or temperature + nucleus (top-p) sampling."""

from __future__ import annotations

import torch

from .config import GenerationConfig


def make_generator(gen: GenerationConfig, device: torch.device) -> torch.Generator | None:
    """A seeded generator when ``gen.seed`` is set (sampling is then reproducible)."""
    if gen.greedy or gen.seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(gen.seed)
    return g


def sample_next(logits: torch.Tensor, gen: GenerationConfig, generator: torch.Generator | None = None) -> int:
    """Next token id from ``logits`` [V] (float)."""
    logits = logits.float()
    if gen.greedy:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / gen.temperature, dim=-1)
    if gen.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        # keep the smallest prefix whose mass reaches top_p (always at least one token)
        drop = cumulative - sorted_probs >= gen.top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=generator))
