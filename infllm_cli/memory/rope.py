"""Rotary positions for the context memory, taken from the model's own rotary embedding.

The runner feeds the model with every ``position_id`` set to 0, so the keys and queries that reach the
attention function carry no rotation (only the rotary embedding's constant attention scaling, which
YaRN / LongRoPE use). The memory then rotates them itself, at positions *relative to the local window*:

* local window: key ``j`` at ``j - local_start``, query ``i`` at ``i - local_start`` (true relative
  distances, bounded by the window size whatever the document length);
* memory (initial tokens, retrieved blocks): keys at 0, queries at ``memory_distance``.

Because the cos/sin tables come from the model's rotary module, every RoPE variant it implements
(default, linear, dynamic, llama3, yarn, longrope, partial rotary as in Phi-3) is honoured. All supported
families use the ``rotate_half`` layout on the first ``rotary_dim`` channels.

Variants whose frequencies depend on the sequence length (dynamic NTK, LongRoPE's short/long factors) are
tabulated at the window's length (``max_window + 1`` positions): the longest distance the memory ever
presents, whatever the length of the stream. With a window inside the model's original context they
therefore stay at their in-distribution frequencies.
"""

from __future__ import annotations

import torch
from torch import nn


def find_rotary_embedding(model: nn.Module) -> nn.Module:
    """The model's shared rotary embedding module (``model.model.rotary_emb`` in the supported families)."""
    base = model.get_decoder() if hasattr(model, "get_decoder") else model
    rotary = getattr(base, "rotary_emb", None)
    if rotary is None:
        raise ValueError(f"{type(model).__name__} has no shared rotary embedding (model.model.rotary_emb)")
    return rotary


class RotaryTable:
    """Pure rotations R(p) for positions ``0 .. n_positions-1``, from a model's rotary embedding.

    Parameters
    ----------
    rotary : the model's rotary embedding module, called as ``rotary(x, position_ids) -> (cos, sin)``
    n_positions : how many positions to tabulate
    device : where the tables live
    """

    def __init__(self, rotary: nn.Module, n_positions: int, device: torch.device) -> None:
        probe = torch.zeros(1, dtype=torch.float32, device=device)
        positions = torch.arange(n_positions, device=device)[None, :]
        with torch.no_grad():
            cos, sin = rotary(probe, positions)
        cos, sin = cos[0].float(), sin[0].float()  # [P, rotary_dim]
        # The rotary module folds a constant attention scaling into cos/sin; the model already applied it
        # once (at position 0), so the tables here must be pure rotations.
        scaling = cos[0, 0].clone()
        self.cos = cos / scaling
        self.sin = sin / scaling
        self.rotary_dim = cos.shape[-1]
        self.n_positions = n_positions

    def rotate(self, x: torch.Tensor, start: int, *, constant: bool = False) -> torch.Tensor:
        """Rotate ``x`` [..., n, D]: row ``r`` at position ``start + r``, or every row at ``start`` when
        ``constant``. Returns a new tensor of ``x``'s dtype; the arithmetic is done in float32."""
        n = x.shape[-2]
        end = start + (1 if constant else n)
        if start < 0 or end > self.n_positions:
            raise IndexError(f"positions {start}..{end - 1} outside the rotary table (0..{self.n_positions - 1})")
        cos, sin = self.cos[start:end], self.sin[start:end]
        r = self.rotary_dim
        half = r // 2
        xf = x.float()
        out = xf.clone() if r < x.shape[-1] else torch.empty_like(xf)
        x1, x2 = xf[..., :half], xf[..., half:r]
        # rotate_half layout: [x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin] (cos/sin halves are equal)
        c, s_ = cos[:, :half], sin[:, :half]
        torch.addcmul(x1 * c, x2, s_, value=-1.0, out=out[..., :half])
        torch.addcmul(x2 * c, x1, s_, out=out[..., half:r])
        return out.to(x.dtype)
