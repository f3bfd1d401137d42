"""Shared helpers of the kernel tests: the devices to run on, and the memory-path math computed in a
chosen dtype, to measure what a low-precision PyTorch run loses.

``reference.py`` always computes in float32. The tolerance rule of the kernel tests compares the kernel's
error with the error of *these* functions run in the kernel's input dtype (every torch op in fp16 / bf16),
both measured against the fp32 reference on fp32 copies of the same inputs.
"""

from __future__ import annotations

import torch

from infllm_kernels.backend import triton_interpreter_enabled
from infllm_kernels.reference import gather_memory, local_causal_mask

# CPU tensors run through the Triton interpreter (set by conftest.py when there is no GPU); on a GPU box
# without it, only the CUDA parametrizations run.
DEVICES = (["cpu"] if triton_interpreter_enabled() else []) + (["cuda"] if torch.cuda.is_available() else [])
# where single-device tests (input validation, determinism) run: CPU tensors need the interpreter on a GPU box
MAIN_DEVICE = DEVICES[-1]


def _rep(t: torch.Tensor, g: int) -> torch.Tensor:
    return t.repeat_interleave(g, dim=0)


def memory_attention_in(dtype: torch.dtype, q_local, q_mem, k_local, v_local, k_init, v_init, k_blocks, v_blocks,
                        block_idx, scale):  # fmt: skip
    """(out [H, L, D], lse [H, L]), every op in ``dtype``."""
    c = lambda t: t.to(dtype)  # noqa: E731
    h, l, _ = q_local.shape
    n_kv, n_l, _ = k_local.shape
    g = h // n_kv
    k_mem, v_mem, valid = gather_memory(c(k_init), c(v_init), c(k_blocks), c(v_blocks), block_idx)
    s_loc = torch.matmul(c(q_local), _rep(c(k_local), g).transpose(1, 2)) * scale
    s_loc = s_loc.masked_fill(~local_causal_mask(l, n_l, q_local.device), float("-inf"))
    s_mem = torch.matmul(c(q_mem), _rep(k_mem, g).transpose(1, 2)) * scale
    s_mem = s_mem.masked_fill(~_rep(valid, g)[:, None, :], float("-inf"))  # empty slots (index -1)
    s = torch.cat([s_mem, s_loc], dim=-1)
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse[..., None])
    out = torch.matmul(p, torch.cat([_rep(v_mem, g), _rep(c(v_local), g)], dim=1))
    return out, lse


def attention_mass_in(dtype: torch.dtype, q_local, k_local, lse, scale):
    """mass [Nl], every op in ``dtype``."""
    c = lambda t: t.to(dtype)  # noqa: E731
    h, l, _ = q_local.shape
    n_kv, n_l, _ = k_local.shape
    s = torch.matmul(c(q_local), _rep(c(k_local), h // n_kv).transpose(1, 2)) * scale - c(lse)[..., None]
    p = torch.exp(s).masked_fill(~local_causal_mask(l, n_l, q_local.device), 0.0)
    return p.sum(dim=(0, 1))


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
