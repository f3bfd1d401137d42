"""Explicit backend selection for the memory-attention ops.

``torch``  : the fp32 PyTorch reference (:mod:`infllm_kernels.reference`); runs anywhere.
``triton`` : the fused Triton kernels; on CUDA, or on CPU through the Triton interpreter
             (``TRITON_INTERPRET=1`` set before triton is first imported).
``auto``   : triton on CUDA, torch otherwise.

The choice is logged. Asking for ``triton`` where it cannot run raises :class:`BackendError`; nothing
falls back silently.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable

import torch

from . import reference

log = logging.getLogger("infllm.backend")

BACKENDS = ("auto", "torch", "triton")


class BackendError(RuntimeError):
    """The requested backend cannot run here."""


@dataclass(frozen=True)
class Backend:
    """The ops of the memory path; see :mod:`infllm_kernels.reference` for shapes."""

    name: str
    memory_attention: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    attention_mass: Callable[..., torch.Tensor]
    topk_blocks: Callable[..., torch.Tensor]
    block_scores: Callable[..., torch.Tensor]
    fused_attention_and_mass: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None
    memory_attention_cite: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None
    fused_attention_cite: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] | None = None

    def attention_and_mass(self, q_local, q_mem, k_local, v_local, k_init, v_init, k_blocks, v_blocks,
                           block_idx, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention output [H, L, D] and the mass [Nl] each local key received, in one call where the
        backend can share the work (torch), else as the attention pass plus the mass pass (triton)."""
        args = (q_local, q_mem, k_local, v_local, k_init, v_init, k_blocks, v_blocks, block_idx, scale)
        if self.fused_attention_and_mass is not None:
            out, _, mass = self.fused_attention_and_mass(*args)
            return out, mass
        out, lse = self.memory_attention(*args)
        return out, self.attention_mass(q_local, k_local, lse, scale)

    def attention_with_citations(self, q_local, q_mem, k_local, v_local, k_init, v_init, k_blocks, v_blocks,
                                 block_idx, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Attention output [H, L, D], the mass [Nl] each local key received, and ``block_mass`` [H, L, K]:
        what each query row gave each selection slot (see ``reference.memory_attention_cite_ref``)."""
        args = (q_local, q_mem, k_local, v_local, k_init, v_init, k_blocks, v_blocks, block_idx, scale)
        if self.fused_attention_cite is not None:
            out, _, mass, block_mass = self.fused_attention_cite(*args)
            return out, mass, block_mass
        if self.memory_attention_cite is None:
            raise BackendError(f"backend {self.name!r} cannot measure citations")
        out, lse, block_mass = self.memory_attention_cite(*args)
        return out, self.attention_mass(q_local, k_local, lse, scale), block_mass


TORCH = Backend(
    name="torch",
    memory_attention=reference.memory_attention_ref,
    attention_mass=reference.attention_mass_ref,
    topk_blocks=reference.topk_blocks_ref,
    block_scores=reference.block_scores_ref,
    fused_attention_and_mass=reference.memory_attention_and_mass_ref,
    fused_attention_cite=reference.memory_attention_cite_ref,
)


def triton_interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _triton_backend() -> Backend:
    from . import triton_ops  # imported lazily: triton is only needed when asked for

    return Backend(
        name="triton",
        memory_attention=triton_ops.memory_attention,
        attention_mass=triton_ops.attention_mass,
        topk_blocks=triton_ops.topk_blocks,
        block_scores=triton_ops.block_scores,
        memory_attention_cite=triton_ops.memory_attention_cite,
    )


def select_backend(name: str, device: torch.device | str) -> Backend:
    """Resolve ``auto|torch|triton`` for ``device`` and log the choice."""
    device = torch.device(device)
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    if name == "auto":
        name = "triton" if device.type == "cuda" else "torch"
        reason = f"auto on {device.type}"
    else:
        reason = "requested"
    if name == "torch":
        log.info("attention backend: torch (%s)", reason)
        return TORCH
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        raise BackendError(f"backend 'triton' needs the triton package ({exc}); use --backend torch") from None
    if device.type == "cpu" and not triton_interpreter_enabled():
        raise BackendError(
            "backend 'triton' on CPU needs the Triton interpreter: set TRITON_INTERPRET=1 before starting, "
            "or use --backend torch"
        )
    if device.type not in ("cpu", "cuda"):
        raise BackendError(f"backend 'triton' cannot run on device {device.type!r}; use --backend torch")
    log.info("attention backend: triton (%s%s)", reason, ", interpreter" if device.type == "cpu" else "")
    return _triton_backend()
