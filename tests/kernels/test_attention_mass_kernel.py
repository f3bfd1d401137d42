"""Attention-mass kernel against the fp32 reference.

Tolerance rule (as for the attention kernel): with ``ref`` = :func:`attention_mass_ref` on fp32 copies of
the inputs (and the fp32 reference ``lse``), and ``lowp`` the same math with every torch op in the inputs'
dtype (``kernel_testing.attention_mass_in``),

    max|kernel - ref| <= 2 * max|lowp - ref| + 1e-6 * max(1, max|ref|)
"""

from __future__ import annotations

import pytest
import torch
from kernel_testing import DEVICES, MAIN_DEVICE, attention_mass_in, max_err

from infllm_kernels.attention_mass import attention_mass_fwd
from infllm_kernels.reference import attention_mass_ref, memory_attention_ref
from infllm_kernels.triton_ops import attention_mass, memory_attention

DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# (H, Hkv, L, Nl, D)
SHAPES = {
    "single": (1, 1, 1, 1, 8),
    "gqa2-ragged": (4, 2, 5, 9, 8),
    "gqa4-97x257": (8, 2, 97, 257, 16),
    "gqa8-d64": (8, 1, 97, 130, 64),
    "long-1025": (2, 1, 1025, 1025, 16),
    "chunk-257-window-1025": (2, 2, 257, 1025, 16),
    "d80": (4, 4, 33, 97, 80),
    "d96": (4, 2, 17, 40, 96),
    "d128": (8, 2, 64, 128, 128),
    "decode-like": (4, 1, 1, 257, 32),
}


def make_inputs(shape, dtype, device, seed=0):
    """q_local, k_local in ``dtype`` and the fp32 reference lse of a full attention pass over them."""
    h, n_kv, n_q, n_l, d = shape
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(*s, generator=gen).to(dtype) for s in ((h, n_q, d), (n_kv, n_l, d), (n_kv, n_l, d)))
    k_mem = torch.randn(n_kv, 3, d, generator=gen).to(dtype)  # a little memory, so the window's mass < 1
    store = torch.zeros(0, n_kv, 4, d, dtype=dtype)
    _, lse = memory_attention_ref(q.float(), q.float(), k.float(), v.float(), k_mem.float(), k_mem.float(),
                                  store.float(), store.float(), torch.zeros(0, dtype=torch.long), d**-0.5)  # fmt: skip
    return q.to(device), k.to(device), lse.to(device), d**-0.5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: str(t).removeprefix("torch."))
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_matches_reference(shape, dtype, device):
    q, k, lse, scale = make_inputs(shape, dtype, device)
    mass = attention_mass(q, k, lse, scale)
    ref = attention_mass_ref(q.float(), k.float(), lse, scale)
    lowp = attention_mass_in(dtype, q.float(), k.float(), lse, scale)
    assert mass.shape == ref.shape and mass.dtype == torch.float32
    floor = 1e-6 * max(1.0, ref.abs().max().item())
    err, lp_err = max_err(mass, ref), max_err(lowp, ref)
    assert err <= 2 * lp_err + floor, f"kernel error {err:.3g} > 2 * {lp_err:.3g} + {floor:.1g}"


@pytest.mark.parametrize("device", DEVICES)
def test_mass_with_kernel_lse_sums_to_window_share(device):
    """Chained with the attention kernel: the window's total mass is H*L minus what memory received."""
    gen = torch.Generator().manual_seed(1)
    h, n_kv, n_q, n_l, d = 4, 2, 7, 20, 16
    q, k, v = (torch.randn(*s, generator=gen).to(device) for s in ((h, n_q, d), (n_kv, n_l, d), (n_kv, n_l, d)))
    empty_init = torch.zeros(n_kv, 0, d, device=device)
    store = torch.zeros(0, n_kv, 4, d, device=device)
    idx = torch.zeros(0, dtype=torch.long, device=device)
    _, lse = memory_attention(q, q, k, v, empty_init, empty_init, store, store, idx, d**-0.5)
    mass = attention_mass(q, k, lse, d**-0.5)
    torch.testing.assert_close(mass.sum(), torch.tensor(float(h * n_q), device=device), rtol=1e-5, atol=0)
    # the last key is seen only by the last query of each head
    assert mass[-1] < h


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n_kv", [1, 2])  # one KV head writes `out` directly; several sum partial rows
def test_poisoned_output_buffer_is_fully_written(n_kv, device):
    q, k, lse, scale = make_inputs((4, n_kv, 97, 257, 16), torch.float32, device, seed=2)
    out = torch.full((257,), float("nan"), device=device)
    got = attention_mass_fwd(q, k, lse, scale, out=out)
    assert got is out and not out.isnan().any()
    torch.testing.assert_close(out, attention_mass_ref(q, k, lse, scale), rtol=1e-5, atol=1e-6)


def test_deterministic():
    q, k, lse, scale = make_inputs((8, 2, 97, 257, 16), torch.float32, MAIN_DEVICE, seed=3)
    assert torch.equal(attention_mass(q, k, lse, scale), attention_mass(q, k, lse, scale))


@pytest.mark.parametrize(
    "case, match",
    [
        ("k-dtype", "k_local has dtype"),
        ("lse-shape", "lse has shape"),
        ("heads", "multiple of key/value heads"),
        ("window", "must hold the chunk"),
        ("out-dtype", "out has dtype"),
    ],
)
def test_launcher_rejects_bad_input(case, match):
    q, k, lse, scale = make_inputs((4, 2, 5, 9, 8), torch.float32, MAIN_DEVICE)
    kw = {"q_local": q, "k_local": k, "lse": lse, "scale": scale} | {
        "k-dtype": {"k_local": k.half()},
        "lse-shape": {"lse": lse[:, :4]},
        "heads": {"k_local": torch.randn(3, 9, 8, device=MAIN_DEVICE)},
        "window": {"k_local": k[:, :4]},
        "out-dtype": {"out": torch.empty(9, dtype=torch.float16, device=MAIN_DEVICE)},
    }[case]
    with pytest.raises(ValueError, match=match):
        attention_mass_fwd(**kw)
