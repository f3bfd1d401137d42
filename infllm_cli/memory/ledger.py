"""Where the answer looked: attention received per passage of the stream, summed over layers, heads and
the answer's tokens.

While an :class:`AttentionLedger` is attached to a :class:`~infllm_cli.memory.cache.ContextMemory`
(:meth:`ContextMemory.citing`), every query chunk the memory attends adds

* the mass each local-window key received (the window's attention-mass pass, which the memory computes
  anyway to choose representative keys), at the key's stream position, and
* the mass each retrieved block received (``block_mass`` of the citing attention kernel: each selection
  slot's log-sum-exp, taken from the kernel's own running sums and normalised by the final lse),

into one float32 tensor indexed by *unit* (window keys outside the ledger's ``span``, the cited text,
are counted apart token by token: the question's tokens share a unit with the end of the document and get
much of the answer's attention): unit ``u`` is the stream range ``[n_init + u*bs, n_init +
(u+1)*bs)``, exactly the tokens of memory block ``u``, so a retrieved block and the same tokens seen in the
window land in the same unit. The initial tokens (attention sinks, which every query looks at whatever it
reads) are counted apart and never cited. Everything stays on the device; nothing synchronises until
:meth:`AttentionLedger.passages` is read.

A probability is a share of one query row's attention (rows = layers x query heads x tokens), so the
numbers are comparable across layers and heads; what they mean is described in docs/citations.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Passage:
    """A stream range ``[start, end)`` and the attention mass it received (summed over query rows)."""

    start: int
    end: int
    mass: float


class AttentionLedger:
    """Attention mass per block-sized unit of the stream (see the module docstring).

    Parameters
    ----------
    n_init : initial tokens of the memory (stream positions below it are the sinks)
    block_size : tokens per memory block (the unit)
    device : where the running sums live
    """

    def __init__(self, n_init: int, block_size: int, device: torch.device | str = "cpu") -> None:
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.n_init = n_init
        self.block_size = block_size
        self.units = torch.zeros(0, dtype=torch.float32, device=device)
        self.init_mass = torch.zeros((), dtype=torch.float32, device=device)
        self.rows = 0  # query rows measured: layers x query heads x tokens
        self.span: tuple[int, int] | None = None  # stream range of the cited text; window keys outside are skipped
        self.outside_mass = torch.zeros((), dtype=torch.float32, device=device)

    def _grow(self, n_units: int) -> None:
        if n_units > self.units.shape[0]:
            size = max(n_units, 2 * self.units.shape[0], 64)
            self.units = torch.nn.functional.pad(self.units, (0, size - self.units.shape[0]))

    def add(self, local_start: int, window_mass: torch.Tensor, block_mass: torch.Tensor | None,
            block_idx: torch.Tensor | None, rows: int) -> None:
        """One query chunk of one layer.

        Parameters
        ----------
        local_start : stream position of window key 0
        window_mass : [Nl] mass each window key received (summed over heads and queries)
        block_mass : [H, L, K] mass each selection slot received per query row, or None
        block_idx : the selection [Hkv, K] (or [K]) of block indices, -1 for empty slots
        rows : query rows of the chunk (heads x tokens)
        """
        self.rows += rows
        device = self.units.device
        n_l = window_mass.shape[0]
        pos = torch.arange(local_start, local_start + n_l, device=device)
        wm = window_mass.to(device=device, dtype=torch.float32)
        if local_start < self.n_init:  # the sinks are still in the window
            sink = pos < self.n_init
            self.init_mass += wm[sink].sum()
            pos, wm = pos[~sink], wm[~sink]
        if self.span is not None:  # keys outside the cited text (the question, the answer) must not leak
            # into the unit they share with its first or last tokens: they are counted apart, token by token
            inside = (pos >= self.span[0]) & (pos < self.span[1])
            self.outside_mass += wm.sum() - (wm * inside).sum()
            wm = wm * inside
        # every stored block lies before the window, so this also covers the block indices below
        self._grow(max(0, local_start + n_l - self.n_init) // self.block_size + 1)
        self.units.index_add_(0, (pos - self.n_init) // self.block_size, wm)
        if block_mass is None or block_idx is None or block_mass.numel() == 0:
            return
        k = block_mass.shape[-1]
        summed = block_mass.sum(dim=1)  # [H, K]
        if block_idx.dim() == 2:  # one selection per KV head: sum the query heads of each group
            per_slot = summed.view(block_idx.shape[0], -1, k).sum(dim=1)
            idx = block_idx
        else:
            per_slot = summed.sum(dim=0, keepdim=True)
            idx = block_idx[None]
        idx = idx.to(device)
        ok = idx >= 0  # empty slots add 0 to unit 0 (no boolean indexing: nothing synchronises)
        self.units.index_add_(0, idx.clamp(min=0).flatten(), (per_slot.to(device) * ok).flatten())

    def passages(self, start: int = 0, end: int | None = None) -> list[Passage]:
        """Units with any mass that overlap the stream range ``[start, end)``, in stream order, clipped to it."""
        out = []
        masses = self.units.tolist()
        bs = self.block_size
        for u, m in enumerate(masses):
            if m <= 0:
                continue
            lo, hi = self.n_init + u * bs, self.n_init + (u + 1) * bs
            lo, hi = max(lo, start), min(hi, end) if end is not None else hi
            if lo < hi:
                out.append(Passage(lo, hi, m))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"n_init": self.n_init, "block_size": self.block_size, "units": self.units.cpu().tolist(),
                "init_mass": float(self.init_mass), "rows": self.rows}
