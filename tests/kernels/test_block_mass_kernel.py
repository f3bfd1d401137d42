"""Citations: the attention each retrieved block slot received, from the fused kernel's own partial sums,
against the fp32 reference (which materialises the probabilities).

Tolerance: block masses are probabilities in [0, 1]; for fp32 inputs the kernel must match the reference
within 1e-5 absolute (a few fp32 ulps of the accumulated sums, after exp of an lse difference); for
bf16 inputs (tiles upcast under the interpreter, the scores' inputs rounded) within 2e-2 absolute, the
error PyTorch itself makes on the same softmax in bf16 being of that order. The outputs ``out``/``lse``
of the citing kernel must equal those of the plain kernel (same math, other loop order) to 1e-5.
Shapes are ragged (97 queries, windows of 257 and 1025, block sizes 7 / 16 / 32), with shared and
per-KV-head selections holding -1 padding and repeated blocks.
"""

from __future__ import annotations

import pytest
import torch
from kernel_testing import DEVICES, max_err
from test_memory_attention_kernel import make_inputs

from infllm_kernels.reference import memory_attention_cite_ref, memory_attention_ref
from infllm_kernels.triton_ops import memory_attention, memory_attention_cite

# (H, Hkv, L, Nl, Ni, NB, bs, K, D)
SHAPES = {
    "ragged-97x257-gqa4": (8, 2, 97, 257, 7, 10, 16, 3, 16),
    "odd-block-size-gqa8": (8, 1, 97, 130, 4, 50, 7, 13, 32),
    "decode-1025": (4, 2, 1, 1025, 4, 9, 32, 5, 32),
    "no-blocks": (2, 1, 5, 9, 3, 0, 4, 0, 16),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("selection", ["shared", "per-head"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_block_mass_matches_reference(shape, selection, device):
    if selection == "per-head" and shape[7] == 0:
        pytest.skip("no slots to select per head")
    tensors, block_idx, scale = make_inputs(shape, torch.float32, device, seed=4, selection=selection)
    out, lse, bmass = memory_attention_cite(*tensors, block_idx, scale)
    ref_out, ref_lse, ref_mass, ref_bmass = memory_attention_cite_ref(*tensors, block_idx, scale)
    h, l, k = shape[0], shape[2], shape[7]
    assert bmass.shape == (h, l, k) and bmass.dtype == torch.float32
    assert max_err(bmass, ref_bmass) <= 1e-5
    plain_out, plain_lse = memory_attention(*tensors, block_idx, scale)
    assert max_err(out, plain_out) <= 1e-5 and max_err(lse, plain_lse) <= 1e-5
    if (block_idx == -1).any():  # empty slots receive nothing
        idx = block_idx if block_idx.dim() == 2 else block_idx[None]
        n_kv = shape[1]
        empty = (idx == -1).expand(n_kv, -1).repeat_interleave(h // n_kv, dim=0)  # [H, K]
        assert (bmass.permute(1, 0, 2)[:, empty] == 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_block_mass_bf16(device):
    tensors, block_idx, scale = make_inputs(SHAPES["ragged-97x257-gqa4"], torch.bfloat16, device, seed=5)
    _, _, bmass = memory_attention_cite(*tensors, block_idx, scale)
    _, _, _, ref = memory_attention_cite_ref(*[t.float() for t in tensors], block_idx, scale)
    assert max_err(bmass, ref) <= 2e-2


def test_reference_masses_add_up_to_one():
    """Per query row: window share + block shares + initial-token share = 1 (the reference's contract)."""
    shape = (4, 2, 9, 20, 3, 6, 4, 2, 16)
    tensors, block_idx, scale = make_inputs(shape, torch.float32, "cpu", seed=3)
    out, lse, mass, bmass = memory_attention_cite_ref(*tensors, block_idx, scale)
    ref_out, ref_lse = memory_attention_ref(*tensors, block_idx, scale)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)
    # the initial tokens' share, computed directly
    q_mem, k_ini = tensors[1], tensors[4]
    g = shape[0] // shape[1]
    s_init = torch.einsum("hld,hnd->hln", q_mem, k_ini.repeat_interleave(g, dim=0)) * scale
    init = torch.exp(s_init - lse[..., None]).sum(-1)  # [H, L]
    total = mass.sum() + bmass.sum() + init.sum()
    assert abs(total.item() - shape[0] * shape[2]) < 1e-4
