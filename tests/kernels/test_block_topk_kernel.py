"""Block scoring + top-k selection against the reference.

Scores: the kernel and :func:`block_scores_ref` both compute in fp32 from the same stored values, so they
agree to fp32 rounding (rtol 1e-5, atol 1e-5 * max|score|). Selection: identical indices whenever the
scores around the k-th are separated by more than that (asserted on the data before comparing).
"""

from __future__ import annotations

import pytest
import torch
from kernel_testing import DEVICES, MAIN_DEVICE

from infllm_kernels.block_topk import block_scores_fwd, topk_blocks_fwd
from infllm_kernels.reference import block_scores_ref, topk_blocks_ref
from infllm_kernels.triton_ops import topk_blocks

DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# (H, Hkv, NB, n_blocks, R, D, k)
SHAPES = {
    "mha-d8": (2, 2, 10, 10, 1, 8, 3),
    "gqa2-partial-store": (4, 2, 40, 33, 4, 16, 5),
    "gqa4-d80": (8, 2, 300, 257, 3, 80, 16),
    "gqa8-d128": (8, 1, 130, 97, 2, 128, 8),
    "d96-single-block": (4, 4, 5, 1, 4, 96, 4),
}


def make_inputs(shape, dtype, device, seed=0):
    h, n_kv, n_b, n, r, d, k = shape
    gen = torch.Generator().manual_seed(seed)
    q_mean = torch.randn(h, d, generator=gen).to(dtype=dtype, device=device)
    reps = torch.randn(n_b, n_kv, r, d, generator=gen).to(dtype)
    reps[n:] = 1e4  # rows past n_blocks would win every comparison if they were read
    return q_mean, reps.to(device), n, k


def score_tol(ref: torch.Tensor) -> float:
    return 1e-5 * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).removeprefix("torch."))
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_scores_and_selection_match_reference(shape, dtype, device):
    q_mean, reps, n, k = make_inputs(shape, dtype, device)
    scores = block_scores_fwd(q_mean, reps, n)
    ref = block_scores_ref(q_mean, reps, n)
    torch.testing.assert_close(scores, ref, rtol=1e-5, atol=score_tol(ref))

    got = topk_blocks(q_mean, reps, n, k)
    want = topk_blocks_ref(q_mean, reps, n, k)
    kk = min(k, n)
    top = ref.sort(descending=True).values
    if kk < n:  # well separated at the cut, so any fp32 reordering cannot change the set
        assert top[kk - 1] - top[kk] > 10 * score_tol(ref), "test data not separated enough at the k-th score"
    assert got.dtype == torch.long and got.device == reps.device
    assert torch.equal(got, want)
    assert torch.all(got[1:] > got[:-1]), "indices must be ascending"


@pytest.mark.parametrize("device", DEVICES)
def test_needle_among_5000_blocks(device):
    gen = torch.Generator().manual_seed(7)
    h, n_kv, r, d, n = 8, 2, 4, 64, 5000
    q_mean = torch.randn(h, d, generator=gen)
    reps = 0.1 * torch.randn(n, n_kv, r, d, generator=gen)
    needle = 3917
    qg = q_mean.view(n_kv, h // n_kv, d).sum(1)
    reps[needle] = (qg / qg.norm(dim=-1, keepdim=True))[:, None, :]  # aligned with every group's query
    reps, q_mean = reps.to(torch.float16).to(device), q_mean.to(torch.float16).to(device)
    got = topk_blocks(q_mean, reps, n, 4)
    assert needle in got.tolist()
    assert torch.equal(got, topk_blocks_ref(q_mean, reps, n, 4))
    assert topk_blocks(q_mean, reps, n, 1).tolist() == [needle]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n_blocks, k, expected_len", [(0, 4, 0), (6, 0, 0), (3, 10, 3), (6, 6, 6)])
def test_k_and_n_blocks_edges(n_blocks, k, expected_len, device):
    q_mean, reps, _, _ = make_inputs((4, 2, 6, 6, 2, 16, 1), torch.float32, device)
    got = topk_blocks(q_mean, reps, n_blocks, k)
    assert got.shape == (expected_len,) and got.dtype == torch.long
    assert torch.equal(got, topk_blocks_ref(q_mean, reps, n_blocks, k))


def test_poisoned_scores_buffer_is_fully_written():
    q_mean, reps, n, _ = make_inputs(SHAPES["gqa4-d80"], torch.float32, MAIN_DEVICE)
    out = torch.full((n,), float("nan"), device=MAIN_DEVICE)
    assert block_scores_fwd(q_mean, reps, n, out=out) is out
    assert not out.isnan().any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host synchronisation is only observable on CUDA")
def test_no_host_sync_on_cuda():
    q_mean, reps, n, k = make_inputs(SHAPES["gqa4-d80"], torch.float16, "cuda")
    topk_blocks_fwd(q_mean, reps, n, k)  # warm-up: compile / autotune outside the check
    torch.cuda.set_sync_debug_mode("error")
    try:
        topk_blocks_fwd(q_mean, reps, n, k)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_blocks": 11}, "n_blocks must lie in"),
        ({"repr_keys": torch.randn(10, 3, 2, 8)}, "multiple of key/value heads"),
        ({"repr_keys": torch.randn(10, 2, 2, 16)}, "repr_keys has shape"),
        ({"q_mean": torch.randn(2, 8, dtype=torch.float64)}, "q_mean has dtype"),
    ],
)
def test_launcher_rejects_bad_input(kwargs, match):
    q_mean, reps, n, _ = make_inputs(SHAPES["mha-d8"], torch.float32, MAIN_DEVICE)
    kwargs = {name: v.to(MAIN_DEVICE) if isinstance(v, torch.Tensor) else v for name, v in kwargs.items()}
    with pytest.raises(ValueError, match=match):
        block_scores_fwd(**({"q_mean": q_mean, "repr_keys": reps, "n_blocks": n} | kwargs))
