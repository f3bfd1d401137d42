"""Shared launcher helpers for the Triton kernels: validation, tile sizes, interpreter detection.

Every launcher validates its inputs with these helpers and raises :class:`ValueError` with a message that
names the offending argument, before anything reaches Triton (whose own errors on bad pointers are
cryptic, and whose interpreter silently reads out of bounds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton

from .backend import triton_interpreter_enabled

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)

# triton.jit decides at decoration time (module import) whether a kernel is interpreted, so the launchers
# remember what was true when the kernel modules were imported.
INTERPRETED = triton_interpreter_enabled()


def on_gpu() -> bool:
    """True when kernels compile for a real GPU (CUDA present and the interpreter off)."""
    return torch.cuda.is_available() and not INTERPRETED


def block_d(d: int) -> int:
    """Head-dim tile: the next power of two >= d, at least 16 (``tl.dot`` needs K >= 16)."""
    return max(16, triton.next_power_of_2(d))


def check_device(device: torch.device) -> None:
    if device.type == "cpu":
        if not INTERPRETED:
            raise ValueError(
                "Triton kernels on CPU tensors need the Triton interpreter: set TRITON_INTERPRET=1 before "
                "infllm_kernels.triton_ops is first imported"
            )
    elif device.type != "cuda":
        raise ValueError(f"Triton kernels run on cuda (or cpu through the interpreter), not {device.type!r}")


def check_tensor(
    name: str,
    t: torch.Tensor,
    shape: tuple[int | None, ...],
    dtypes: tuple[torch.dtype, ...],
    device: torch.device,
) -> None:
    """Validate rank/shape (``None`` = any size), dtype, device and a unit last-dim stride."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != len(shape) or any(want is not None and got != want for got, want in zip(t.shape, shape)):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name} has shape {list(t.shape)}, expected {want}")
    if t.dtype not in dtypes:
        raise ValueError(f"{name} has dtype {t.dtype}, expected one of {[str(d) for d in dtypes]}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device} (all inputs must share one device)")
    if t.numel() > 0 and t.dim() > 0 and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name} must have a unit stride in its last dimension, got strides {t.stride()}")


def check_out(
    name: str, t: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> None:
    """Validate a caller-provided output buffer (must be contiguous: the kernels write it densely)."""
    if t is None:
        return
    check_tensor(name, t, shape, (dtype,), device)
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous, got strides {t.stride()}")


def nonempty(t: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """An empty tensor may carry a null data pointer; hand the kernel a valid one it never reads."""
    return t if t.numel() > 0 else fallback


@dataclass(frozen=True)
class QueryWindow:
    """Shapes shared by the launchers that read a query chunk against a local window."""

    device: torch.device
    dtype: torch.dtype
    h: int  # query heads
    n_q: int  # queries in the chunk
    d: int  # head dim
    n_kv: int  # key/value heads
    n_l: int  # local-window keys


def check_query_window(q_local: torch.Tensor, k_local: torch.Tensor, scale: float) -> QueryWindow:
    """Validate ``q_local`` [H, L, D], ``k_local`` [Hkv, Nl, D] in q's dtype (H % Hkv == 0, Nl >= L) and ``scale``."""
    check_tensor("q_local", q_local, (None, None, None), FLOAT_DTYPES, q_local.device)
    device, dtype = q_local.device, q_local.dtype
    check_device(device)
    h, n_q, d = q_local.shape
    check_tensor("k_local", k_local, (None, None, d), (dtype,), device)
    n_kv, n_l, _ = k_local.shape
    if n_kv == 0 or h % n_kv != 0:
        raise ValueError(f"query heads ({h}) must be a positive multiple of key/value heads ({n_kv})")
    if n_l < n_q:
        raise ValueError(f"the local window ({n_l} keys) must hold the chunk's {n_q} queries")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return QueryWindow(device, dtype, h, n_q, d, n_kv, n_l)


def resolve_upcast(upcast: bool | None, dtype: torch.dtype) -> bool:
    """Compute on fp32 tiles by default under the interpreter (which gets bf16 arithmetic wrong) and for
    fp32 inputs; refuse an explicit ``upcast=False`` for bf16 under the interpreter."""
    upcast = (INTERPRETED or dtype == torch.float32) if upcast is None else upcast
    if not upcast and dtype == torch.bfloat16 and INTERPRETED:
        raise ValueError("upcast=False with bfloat16 under the Triton interpreter computes wrong results")
    return upcast
