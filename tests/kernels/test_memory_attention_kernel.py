"""Fused memory-attention kernel against the fp32 reference.

Tolerance rule: with ``ref`` = :func:`memory_attention_ref` on fp32 copies of the inputs, and ``lowp`` the
same math run with every torch op in the inputs' dtype (``kernel_testing.memory_attention_in``), the kernel
must satisfy, for ``out`` and for ``lse`` separately,

    max|kernel - ref| <= 2 * max|lowp - ref| + 1e-6 * max(1, max|ref|)

For fp32 inputs ``lowp`` *is* the fp32 math (error ~0), so the floor (about 8 fp32 ulps of the largest
value) is the whole tolerance; for fp16 / bf16 the kernel may lose at most twice what PyTorch itself loses
computing in that dtype.

Selections: ``block_idx`` is [K] (shared by every KV head) or [Hkv, K] (one selection per KV head) with -1
padding (empty slots, masked out as if absent) and repeated indices (attended once per occurrence), and
with a KV head whose slots are all empty; the same tolerance rule applies to each.
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


SELECTIONS = ["shared", "per-head", "one-head-empty"]


def per_head_selection(n_b, n_kv, k, gen, empty_head=False):
    """[Hkv, K] int64: unsorted random blocks (repeats allowed; slot 1 repeats slot 0 when K >= 3), -1
    padding of a different length per head (head j: (j + 1) % K trailing empty slots), and a -1 in the
    middle of even heads when K >= 4; with ``empty_head`` the last KV head gets only empty slots."""
    idx = torch.randint(max(n_b, 1), (n_kv, k), generator=gen)
    if k >= 3:
        idx[:, 1] = idx[:, 0]  # repeated block: attended twice, as the reference does
    for j in range(n_kv):
        if k:
            idx[j, k - (j + 1) % k :] = -1
        if j % 2 == 0 and k >= 4:
            idx[j, k // 2] = -1
    if empty_head:
        idx[-1] = -1
    return idx


def make_inputs(shape, dtype, device, seed=0, selection="shared"):
    h, n_kv, n_q, n_l, n_i, n_b, bs, k, d = shape
    gen = torch.Generator().manual_seed(seed)

    def rnd(*s):
        return torch.randn(*s, generator=gen).to(dtype=dtype, device=device)

    tensors = [rnd(h, n_q, d), rnd(h, n_q, d), rnd(n_kv, n_l, d), rnd(n_kv, n_l, d), rnd(n_kv, n_i, d),
               rnd(n_kv, n_i, d), rnd(n_b, n_kv, bs, d), rnd(n_b, n_kv, bs, d)]  # fmt: skip
    if selection == "shared":
        block_idx = torch.randperm(n_b, generator=gen)[:k]  # unsorted, like a caller may pass
    else:
        block_idx = per_head_selection(n_b, n_kv, k, gen, empty_head=selection == "one-head-empty")
    return tensors, block_idx.to(device), d**-0.5


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


# shapes that retrieve blocks, for the per-KV-head selections (the others have K = 0 or NB = 0)
SELECTION_SHAPES = {name: s for name, s in SHAPES.items() if s[7] > 0}


# every dtype for the padded per-head selections; fp32 and bf16 (not fp16, for the interpreter's runtime)
# for the selection with an all-empty KV head
SELECTION_CASES = [(dt, "per-head") for dt in DTYPES]
SELECTION_CASES += [(dt, "one-head-empty") for dt in (torch.float32, torch.bfloat16)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "dtype, selection", SELECTION_CASES, ids=[f"{str(dt).removeprefix('torch.')}-{sel}" for dt, sel in SELECTION_CASES]
)
@pytest.mark.parametrize("shape", SELECTION_SHAPES.values(), ids=SELECTION_SHAPES.keys())
def test_per_kv_head_selection_matches_reference(shape, dtype, selection, device):
    tensors, block_idx, scale = make_inputs(shape, dtype, device, seed=6, selection=selection)
    n_kv, k = shape[1], shape[7]
    assert block_idx.shape == (n_kv, k) and (block_idx == -1).any()
    if selection == "one-head-empty":
        assert (block_idx[-1] == -1).all()
    out, lse = memory_attention(*tensors, block_idx, scale)
    check_against_reference(out, lse, tensors, block_idx, scale)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=["int32", "int64"])
def test_empty_slots_are_exactly_absent(index_dtype, device):
    """Padding a selection with -1 (anywhere, any amount) gives the result of the unpadded selection,
    and a KV head with only empty slots gets the result of no retrieved blocks at all."""
    shape = (8, 2, 33, 97, 5, 12, 7, 4, 16)
    tensors, _, scale = make_inputs(shape, torch.float32, device, seed=7)
    k_ini, v_ini = tensors[4], tensors[5]
    shared = torch.tensor([9, 2, 2, 11], dtype=index_dtype, device=device)
    padded = torch.tensor([[-1, 9, 2, -1, 2, 11, -1], [-1] * 7], dtype=index_dtype, device=device)
    out, lse = memory_attention(*tensors, padded, scale)
    check_against_reference(out, lse, tensors, padded, scale)
    # KV head 0 (query heads 0-3): the unpadded shared selection
    o_sh, l_sh = memory_attention(*tensors, shared, scale)
    torch.testing.assert_close(out[:4], o_sh[:4], rtol=0, atol=2e-6)
    torch.testing.assert_close(lse[:4], l_sh[:4], rtol=0, atol=2e-6)
    # KV head 1 (query heads 4-7): no retrieved blocks
    o_no, l_no = memory_attention(*tensors, shared[:0], scale)
    torch.testing.assert_close(out[4:], o_no[4:], rtol=0, atol=2e-6)
    torch.testing.assert_close(lse[4:], l_no[4:], rtol=0, atol=2e-6)
    # and with no initial tokens either: only the local window remains for that head
    bare = [*tensors[:4], k_ini[:, :0], v_ini[:, :0], *tensors[6:]]
    o_bare, l_bare = memory_attention(*bare, padded, scale)
    check_against_reference(o_bare, l_bare, bare, padded, scale)
    o_win, l_win = memory_attention(*bare, shared[:0], scale)
    torch.testing.assert_close(o_bare[4:], o_win[4:], rtol=0, atol=2e-6)
    torch.testing.assert_close(l_bare[4:], l_win[4:], rtol=0, atol=2e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_shared_selection_equals_its_per_head_copy(device):
    tensors, block_idx, scale = make_inputs(SHAPES["odd-block-size-gqa8"], torch.float32, device, seed=8)
    out, lse = memory_attention(*tensors, block_idx, scale)
    n_kv = tensors[2].shape[0]
    out2, lse2 = memory_attention(*tensors, block_idx[None].expand(n_kv, -1), scale)
    assert torch.equal(out, out2) and torch.equal(lse, lse2)


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

    k_mem, v_mem, valid = gather_memory(k_ini, v_ini, k_blk, v_blk, block_idx)
    assert valid.all()
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
@pytest.mark.parametrize("per_head", [False, True], ids=["shared", "per-head"])
def test_int32_indices_and_repeated_blocks(per_head, device):
    tensors, _, scale = make_inputs(SHAPES["tiny-gqa2"], torch.float32, device, seed=5)
    block_idx = torch.tensor([[5, 0, 5], [1, -1, 1]] if per_head else [5, 0, 5], dtype=torch.int32, device=device)
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
        ("index-below-empty", "block_idx must lie in"),
        ("per-head-index-range", "block_idx must lie in"),
        ("index-dtype", "block_idx has dtype"),
        ("index-heads", "block_idx has shape"),
        ("index-rank", "block_idx has shape"),
        ("index-stride", "unit stride"),
        ("stride", "unit stride"),
        ("out-shape", "out has shape"),
        ("lse-dtype", "lse has dtype"),
        ("scale", "scale must be finite"),
    ],
)
def test_launcher_rejects_bad_input(case, match):
    if case in ("index-range", "index-below-empty", "per-head-index-range") and MAIN_DEVICE != "cpu":
        pytest.skip("block indices are range-checked on CPU only (a CUDA check would synchronise)")
    dev = MAIN_DEVICE
    tensors, block_idx, _ = make_inputs(SHAPES["tiny-gqa2"], torch.float32, dev)
    q, _, k, v, *_ = tensors
    kw = {
        "dtype": {"k_local": k.half()},
        "heads": {"k_local": k[:1].repeat(3, 1, 1), "v_local": v[:1].repeat(3, 1, 1)},
        "window": {"k_local": k[:, :4], "v_local": v[:, :4]},
        "index-range": {"block_idx": torch.tensor([6], device=dev)},
        "index-below-empty": {"block_idx": torch.tensor([0, -2], device=dev)},
        "per-head-index-range": {"block_idx": torch.tensor([[0, -1], [6, 1]], device=dev)},
        "index-dtype": {"block_idx": block_idx.float()},
        "index-heads": {"block_idx": block_idx[None].repeat(3, 1)},
        "index-rank": {"block_idx": block_idx[None, None]},
        "index-stride": {"block_idx": torch.arange(4, device=dev)[::2]},
        "stride": {"k_local": k.transpose(1, 2).contiguous().transpose(1, 2)},
        "out-shape": {"out": torch.empty(4, 5, 9, device=dev)},
        "lse-dtype": {"lse": torch.empty(4, 5, dtype=torch.float16, device=dev)},
        "scale": {"scale": math.inf},
    }[case]
    with pytest.raises(ValueError, match=match):
        memory_attention_fwd(**_kwargs(tensors, block_idx, kw))
