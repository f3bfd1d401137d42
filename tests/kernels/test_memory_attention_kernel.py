"""Fused memory-attention kernel against the fp32 reference.

Tolerance rule: with ``ref`` = :func:`memory_attention_ref` on fp32 copies of the inputs, and ``lowp`` the
same math run with every torch op in the inputs' dtype (``kernel_testing.memory_attention_in``), the kernel
must satisfy, for ``out`` and for ``lse`` separately,

    max|kernel - ref| <= 2 * max|lowp - ref| + 1e-6 * max(1, max|ref|)

For fp32 inputs ``lowp`` *is* the fp32 math (error ~0), so the floor (about 8 fp32 ulps of the largest
value) is the whole tolerance; for fp16 / bf16 the kernel may lose at most twice what PyTorch itself loses
computing in that dtype.
"""

from __future__ import annotations

import math

import pytest
import torch
from kernel_testing import DEVICES, MAIN_DEVICE, max_err, memory_attention_in

from infllm_kernels.memory_attention import memory_attention_fwd
from infllm_kernels.reference import memory_attention_ref
from infllm_kernels.triton_ops import memory_attention

DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# (H, Hkv, L, Nl, Ni, NB, bs, K, D)
SHAPES = {
    "single-query-no-memory": (2, 2, 1, 1, 0, 0, 4, 0, 8),
    "tiny-gqa2": (4, 2, 5, 9, 3, 6, 4, 2, 8),
    "ragged-97x257-gqa4": (8, 2, 97, 257, 7, 10, 16, 3, 16),
    "odd-block-size-gqa8": (8, 1, 97, 130, 4, 50, 7, 13, 64),
    "long-1025-no-memory": (2, 1, 1025, 1025, 0, 0, 16, 0, 16),
    "chunk-257-window-1025": (1, 1, 257, 1025, 128, 40, 32, 5, 16),
    "d80-mha": (4, 4, 33, 97, 5, 8, 16, 2, 80),
    "d96-init-only": (4, 2, 17, 40, 2, 6, 8, 0, 96),
    "d128-blocks-only": (8, 2, 64, 128, 0, 8, 16, 4, 128),
    "decode-like": (4, 1, 1, 257, 4, 9, 32, 3, 32),
}


def make_inputs(shape, dtype, device, seed=0):
    h, n_kv, n_q, n_l, n_i, n_b, bs, k, d = shape
    gen = torch.Generator().manual_seed(seed)

    def rnd(*s):
        return torch.randn(*s, generator=gen).to(dtype=dtype, device=device)

    tensors = [rnd(h, n_q, d), rnd(h, n_q, d), rnd(n_kv, n_l, d), rnd(n_kv, n_l, d), rnd(n_kv, n_i, d),
               rnd(n_kv, n_i, d), rnd(n_b, n_kv, bs, d), rnd(n_b, n_kv, bs, d)]  # fmt: skip
    block_idx = torch.randperm(n_b, generator=gen)[:k].to(device)  # unsorted, like a caller may pass
    return tensors, block_idx, d**-0.5


def check_against_reference(out, lse, tensors, block_idx, scale):
    fp32 = [t.float() for t in tensors]
    ref_out, ref_lse = memory_attention_ref(*fp32, block_idx, scale)
    lp_out, lp_lse = memory_attention_in(tensors[0].dtype, *fp32, block_idx, scale)
    assert out.shape == ref_out.shape and out.dtype == tensors[0].dtype
    assert lse.shape == ref_lse.shape and lse.dtype == torch.float32
    for name, got, ref, lp in (("out", out, ref_out, lp_out), ("lse", lse, ref_lse, lp_lse)):
        floor = 1e-6 * max(1.0, ref.abs().max().item())
        err, lp_err = max_err(got, ref), max_err(lp, ref)
        assert err <= 2 * lp_err + floor, f"{name}: kernel error {err:.3g} > 2 * {lp_err:.3g} + {floor:.1g}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).removeprefix("torch."))
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_matches_reference(shape, dtype, device):
    tensors, block_idx, scale = make_inputs(shape, dtype, device)
    out, lse = memory_attention(*tensors, block_idx, scale)
    check_against_reference(out, lse, tensors, block_idx, scale)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", ["tiny-gqa2", "odd-block-size-gqa8", "d80-mha"])
def test_fp16_tiles_fed_to_dot_directly(shape, device):
    """The GPU path (fp16 tiles into tl.dot, p rounded to fp16), exercised under the interpreter too."""
    tensors, block_idx, scale = make_inputs(SHAPES[shape], torch.float16, device, seed=1)
    out, lse = memory_attention_fwd(*tensors, block_idx, scale, upcast=False)
    check_against_reference(out, lse, tensors, block_idx, scale)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).removeprefix("torch."))
def test_poisoned_output_buffers_are_fully_written(dtype, device):
    tensors, block_idx, scale = make_inputs(SHAPES["ragged-97x257-gqa4"], dtype, device, seed=2)
    h, n_q, d = tensors[0].shape
    out = torch.full((h, n_q, d), float("nan"), dtype=dtype, device=device)
    lse = torch.full((h, n_q), float("nan"), dtype=torch.float32, device=device)
    got_out, got_lse = memory_attention_fwd(*tensors, block_idx, scale, out=out, lse=lse)
    assert got_out is out and got_lse is lse
    assert not out.isnan().any() and not lse.isnan().any()
    check_against_reference(out, lse, tensors, block_idx, scale)


@pytest.mark.parametrize("device", DEVICES)
def test_lse_merges_partial_attentions_exactly(device):
    """lse is the natural-log normaliser: attention over memory only and over the window only, merged
    with their lse weights, equals the fused result."""
    tensors, block_idx, scale = make_inputs((4, 2, 9, 20, 3, 6, 4, 2, 16), torch.float32, device, seed=3)
    q_loc, q_mem, k_loc, v_loc, k_ini, v_ini, k_blk, v_blk = tensors
    out, lse = memory_attention(*tensors, block_idx, scale)
    # window only: empty memory
    empty = k_ini[:, :0]
    o_loc, l_loc = memory_attention(q_loc, q_mem, k_loc, v_loc, empty, empty, k_blk, v_blk, block_idx[:0], scale)
    # memory only, computed directly
    from infllm_kernels.reference import gather_memory

    k_mem, v_mem = gather_memory(k_ini, v_ini, k_blk, v_blk, block_idx)
    s = torch.matmul(q_mem, k_mem.repeat_interleave(2, 0).transpose(1, 2)) * scale
    l_mem = torch.logsumexp(s, -1)
    o_mem = torch.softmax(s, -1) @ v_mem.repeat_interleave(2, 0)
    merged_lse = torch.logaddexp(l_loc, l_mem)
    merged = o_loc * (l_loc - merged_lse).exp()[..., None] + o_mem * (l_mem - merged_lse).exp()[..., None]
    torch.testing.assert_close(lse, merged_lse, rtol=0, atol=2e-6)
    torch.testing.assert_close(out, merged, rtol=0, atol=2e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_strided_inputs(device):
    """Queries/keys in [L, H, D] layout viewed as [H, L, D], and a non-unit last stride via the public op."""
    tensors, block_idx, scale = make_inputs(SHAPES["tiny-gqa2"], torch.float32, device, seed=4)
    q_loc = tensors[0].transpose(0, 1).contiguous().transpose(0, 1)
    k_loc = tensors[2].transpose(1, 2).contiguous().transpose(1, 2)  # last-dim stride != 1
    strided = [q_loc, tensors[1], k_loc, *tensors[3:]]
    out, lse = memory_attention(*strided, block_idx, scale)
    check_against_reference(out, lse, tensors, block_idx, scale)


@pytest.mark.parametrize("device", DEVICES)
def test_int32_indices_and_repeated_blocks(device):
    tensors, _, scale = make_inputs(SHAPES["tiny-gqa2"], torch.float32, device, seed=5)
    block_idx = torch.tensor([5, 0, 5], dtype=torch.int32, device=device)
    out, lse = memory_attention(*tensors, block_idx, scale)
    check_against_reference(out, lse, tensors, block_idx.long(), scale)


def _kwargs(tensors, idx, overrides):
    names = ["q_local", "q_mem", "k_local", "v_local", "k_init", "v_init", "k_blocks", "v_blocks"]
    return dict(zip(names, tensors)) | {"block_idx": idx, "scale": 0.5} | overrides


@pytest.mark.parametrize(
    "case, match",
    [
        ("dtype", "k_local has dtype"),
        ("heads", "multiple of key/value heads"),
        ("window", "must hold the chunk"),
        ("index-range", "block_idx must lie in"),
        ("index-dtype", "block_idx has dtype"),
        ("stride", "unit stride"),
        ("out-shape", "out has shape"),
        ("lse-dtype", "lse has dtype"),
        ("scale", "scale must be finite"),
    ],
)
def test_launcher_rejects_bad_input(case, match):
    if case == "index-range" and MAIN_DEVICE != "cpu":
        pytest.skip("block indices are range-checked on CPU only (a CUDA check would synchronise)")
    dev = MAIN_DEVICE
    tensors, block_idx, _ = make_inputs(SHAPES["tiny-gqa2"], torch.float32, dev)
    q, _, k, v, *_ = tensors
    kw = {
        "dtype": {"k_local": k.half()},
        "heads": {"k_local": k[:1].repeat(3, 1, 1), "v_local": v[:1].repeat(3, 1, 1)},
        "window": {"k_local": k[:, :4], "v_local": v[:, :4]},
        "index-range": {"block_idx": torch.tensor([6], device=dev)},
        "index-dtype": {"block_idx": block_idx.float()},
        "stride": {"k_local": k.transpose(1, 2).contiguous().transpose(1, 2)},
        "out-shape": {"out": torch.empty(4, 5, 9, device=dev)},
        "lse-dtype": {"lse": torch.empty(4, 5, dtype=torch.float16, device=dev)},
        "scale": {"scale": math.inf},
    }[case]
    with pytest.raises(ValueError, match=match):
        memory_attention_fwd(**_kwargs(tensors, block_idx, kw))
