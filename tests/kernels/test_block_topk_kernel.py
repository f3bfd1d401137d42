"""Block scoring + top-k selection against the reference.

Contract: ``score[kv, b] = max_i sum_{h in group kv} max_r q[h, i] . repr_keys[b, kv, r]``, per KV head
([Hkv, n]) or summed over KV heads ([1, n]); ``q`` is [H, Lq, D] or [H, D] (Lq = 1).

Scores: the kernel and :func:`block_scores_ref` both compute in fp32 from the same stored values (fp16 /
bf16 inputs are widened exactly), so they agree to fp32 rounding (rtol 1e-5, atol 1e-5 * max|score|).
Selection: identical indices, row by row, whenever the scores around the k-th of each row are separated by
more than that (asserted on the data before comparing).
"""

from __future__ import annotations

import pytest
import torch
from kernel_testing import DEVICES, MAIN_DEVICE

from infllm_kernels.block_topk import block_scores_fwd, topk_blocks_fwd
from infllm_kernels.reference import block_scores_ref, topk_blocks_ref
from infllm_kernels.triton_ops import block_scores, topk_blocks

DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# (H, Hkv, Lq, NB, n_blocks, R, D, k); Lq None: q is [H, D] (a chunk's mean query)
SHAPES = {
    "mha-d8-mean-query": (2, 2, None, 10, 10, 1, 8, 3),
    "gqa2-lq7-partial-store": (4, 2, 7, 40, 33, 4, 16, 5),
    "gqa4-lq97-257-blocks-d80": (8, 2, 97, 300, 257, 2, 80, 16),
    "gqa3-lq97-r1": (6, 2, 97, 40, 33, 1, 64, 4),  # a group size that is not a power of two
    "gqa8-lq1-d128": (8, 1, 1, 130, 97, 4, 128, 8),
    "gqa4-lq7-257-blocks-r4": (8, 2, 7, 260, 257, 4, 32, 23),
    "d96-single-block": (4, 4, 1, 5, 1, 2, 96, 4),
    "mqa-g16-lq3": (16, 1, 3, 20, 17, 2, 16, 4),  # one query per group row tile under the interpreter
    "bounds-d256-r1": (8, 2, 1, 40, 33, 1, 256, 6),  # key bounds of a head dim of 128: [max | min], R = 1
}


def make_inputs(shape, dtype, device, seed=0):
    h, n_kv, n_q, n_b, n, r, d, k = shape
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(h, d, generator=gen) if n_q is None else torch.randn(h, n_q, d, generator=gen)
    reps = torch.randn(n_b, n_kv, r, d, generator=gen).to(dtype)
    reps[n:] = 1e4  # rows past n_blocks would win every comparison if they were read
    return q.to(dtype=dtype, device=device), reps.to(device), n, k


def score_tol(ref: torch.Tensor) -> float:
    return 1e-5 * max(1.0, ref.abs().max().item())


def assert_separated_at_k(ref: torch.Tensor, k: int) -> None:
    """Any fp32 reordering of scores closer than the tolerance cannot change the selected set."""
    k = min(k, ref.shape[1])
    if 0 < k < ref.shape[1]:
        top = ref.sort(dim=1, descending=True).values
        gap = (top[:, k - 1] - top[:, k]).min().item()
        assert gap > 10 * score_tol(ref), "test data not separated enough at the k-th score"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("per_kv_head", [False, True], ids=["summed", "per-kv-head"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).removeprefix("torch."))
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_scores_and_selection_match_reference(shape, dtype, per_kv_head, device):
    q, reps, n, k = make_inputs(shape, dtype, device)
    n_kv = reps.shape[1]
    rows = n_kv if per_kv_head else 1
    scores = block_scores(q, reps, n, per_kv_head)
    ref = block_scores_ref(q, reps, n, per_kv_head)
    assert scores.shape == (rows, n) and scores.dtype == torch.float32 and scores.device == reps.device
    torch.testing.assert_close(scores, ref, rtol=1e-5, atol=score_tol(ref))

    got = topk_blocks(q, reps, n, k, per_kv_head)
    want = topk_blocks_ref(q, reps, n, k, per_kv_head)
    assert_separated_at_k(ref, k)
    assert got.shape == (rows, min(k, n)) and got.dtype == torch.long and got.device == reps.device
    assert torch.equal(got, want)
    assert torch.all(got[:, 1:] > got[:, :-1]), "indices must be ascending in each row"


@pytest.mark.parametrize("device", DEVICES)
def test_max_over_queries_and_representatives(device):
    """A block liked by a single query through a single representative key wins, for that KV head only."""
    gen = torch.Generator().manual_seed(5)
    h, n_kv, n_q, r, d, n = 4, 2, 97, 4, 32, 50
    q = 0.1 * torch.randn(h, n_q, d, generator=gen)
    reps = 0.1 * torch.randn(n, n_kv, r, d, generator=gen)
    q[2, 61] = torch.randn(d, generator=gen)  # head 2 -> KV head 1, query 61
    reps[17, 1, 3] = 4 * q[2, 61] / q[2, 61].norm()  # block 17, KV head 1, representative 3
    q, reps = q.to(device), reps.to(device)
    assert topk_blocks(q, reps, n, 1, per_kv_head=True)[1].tolist() == [17]
    assert topk_blocks(q, reps, n, 1, per_kv_head=True)[0].tolist() != [17]
    assert topk_blocks(q, reps, n, 1).tolist() == [[17]]
    assert torch.equal(topk_blocks(q, reps, n, 3, True), topk_blocks_ref(q, reps, n, 3, True))


@pytest.mark.parametrize("device", DEVICES)
def test_mean_query_single_representative_is_the_paper_score(device):
    """Lq = 1 and R = 1: the score is q_mean . repr summed over heads (a plain dot product)."""
    gen = torch.Generator().manual_seed(6)
    h, n_kv, d, n = 8, 2, 64, 40
    q_mean = torch.randn(h, d, generator=gen).to(device)
    reps = torch.randn(n, n_kv, 1, d, generator=gen).to(device)
    want = torch.einsum("khd,nkd->n", q_mean.view(n_kv, h // n_kv, d), reps[:, :, 0])
    torch.testing.assert_close(block_scores(q_mean, reps, n)[0], want, rtol=1e-5, atol=1e-5 * want.abs().max())
    torch.testing.assert_close(block_scores(q_mean[:, None], reps, n)[0], want, rtol=1e-5, atol=1e-5 * want.abs().max())


@pytest.mark.parametrize("device", DEVICES)
def test_strided_queries(device):
    """Queries in [Lq, H, D] layout viewed as [H, Lq, D], and a non-unit last stride via the public op."""
    q, reps, n, k = make_inputs(SHAPES["gqa2-lq7-partial-store"], torch.float32, device, seed=4)
    q_lhd = q.transpose(0, 1).contiguous().transpose(0, 1)
    q_dlh = q.permute(2, 1, 0).contiguous().permute(2, 1, 0)  # last-dim stride != 1
    ref = block_scores_ref(q, reps, n, True)
    for q_strided in (q_lhd, q_dlh):
        torch.testing.assert_close(block_scores(q_strided, reps, n, True), ref, rtol=1e-5, atol=score_tol(ref))
        assert torch.equal(topk_blocks(q_strided, reps, n, k, True), topk_blocks_ref(q, reps, n, k, True))


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
    assert needle in got[0].tolist()
    assert torch.equal(got, topk_blocks_ref(q_mean, reps, n, 4))
    assert topk_blocks(q_mean, reps, n, 1).tolist() == [[needle]]
    assert topk_blocks(q_mean, reps, n, 1, per_kv_head=True).tolist() == [[needle]] * n_kv


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("per_kv_head", [False, True], ids=["summed", "per-kv-head"])
@pytest.mark.parametrize("n_blocks, k, expected_len", [(0, 4, 0), (6, 0, 0), (3, 10, 3), (6, 6, 6)])
def test_k_and_n_blocks_edges(n_blocks, k, expected_len, per_kv_head, device):
    q, reps, _, _ = make_inputs((4, 2, 3, 6, 6, 2, 16, 1), torch.float32, device)
    got = topk_blocks(q, reps, n_blocks, k, per_kv_head)
    assert got.shape == (2 if per_kv_head else 1, expected_len) and got.dtype == torch.long
    assert torch.equal(got, topk_blocks_ref(q, reps, n_blocks, k, per_kv_head))
    scores = block_scores(q, reps, n_blocks, per_kv_head)
    assert scores.shape == (2 if per_kv_head else 1, n_blocks)
    torch.testing.assert_close(scores, block_scores_ref(q, reps, n_blocks, per_kv_head), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_no_representative_keys_scores_zero(device):
    q, reps, n, _ = make_inputs((4, 2, 3, 6, 6, 0, 16, 1), torch.float32, device)
    for per_kv_head in (False, True):
        assert torch.equal(block_scores(q, reps, n, per_kv_head), block_scores_ref(q, reps, n, per_kv_head))


@pytest.mark.parametrize("per_kv_head", [False, True], ids=["summed", "per-kv-head"])
def test_poisoned_scores_buffer_is_fully_written(per_kv_head):
    q, reps, n, _ = make_inputs(SHAPES["gqa4-lq7-257-blocks-r4"], torch.float32, MAIN_DEVICE)
    out = torch.full((2 if per_kv_head else 1, n), float("nan"), device=MAIN_DEVICE)
    assert block_scores_fwd(q, reps, n, per_kv_head, out=out) is out
    assert not out.isnan().any()
    torch.testing.assert_close(out, block_scores_ref(q, reps, n, per_kv_head), rtol=1e-5, atol=1e-4)


def test_deterministic():
    q, reps, n, _ = make_inputs(SHAPES["gqa4-lq7-257-blocks-r4"], torch.float32, MAIN_DEVICE, seed=3)
    assert torch.equal(block_scores(q, reps, n), block_scores(q, reps, n))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host synchronisation is only observable on CUDA")
@pytest.mark.parametrize("per_kv_head", [False, True], ids=["summed", "per-kv-head"])
def test_no_host_sync_on_cuda(per_kv_head):
    q, reps, n, k = make_inputs(SHAPES["gqa4-lq97-257-blocks-d80"], torch.float16, "cuda")
    topk_blocks_fwd(q, reps, n, k, per_kv_head)  # warm-up: compile / autotune outside the check
    torch.cuda.set_sync_debug_mode("error")
    try:
        topk_blocks_fwd(q, reps, n, k, per_kv_head)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_blocks": 11}, "n_blocks must lie in"),
        ({"repr_keys": torch.randn(10, 3, 2, 8)}, "multiple of key/value heads"),
        ({"repr_keys": torch.randn(10, 2, 2, 16)}, "repr_keys has shape"),
        ({"q": torch.randn(2, 8, dtype=torch.float64)}, "q has dtype"),
        ({"q": torch.randn(2, 3, 8, dtype=torch.float64)}, "q has dtype"),
        ({"q": torch.randn(2, 0, 8)}, "at least one query"),
        ({"q": torch.randn(2, 1, 3, 8)}, "q has shape"),
        ({"q": torch.randn(2, 16)[:, ::2]}, "unit stride"),
        ({"out": torch.empty(2, 10)}, "out has shape"),
        ({"per_kv_head": True, "out": torch.empty(1, 10)}, "out has shape"),
    ],
)
def test_launcher_rejects_bad_input(kwargs, match):
    q, reps, n, _ = make_inputs(SHAPES["mha-d8-mean-query"], torch.float32, MAIN_DEVICE)
    kwargs = {name: v.to(MAIN_DEVICE) if isinstance(v, torch.Tensor) else v for name, v in kwargs.items()}
    with pytest.raises(ValueError, match=match):
        block_scores_fwd(**({"q": q, "repr_keys": reps, "n_blocks": n} | kwargs))


def test_topk_rejects_negative_k():
    q, reps, n, _ = make_inputs(SHAPES["mha-d8-mean-query"], torch.float32, MAIN_DEVICE)
    with pytest.raises(ValueError, match="k must be >= 0"):
        topk_blocks_fwd(q, reps, n, -1)
