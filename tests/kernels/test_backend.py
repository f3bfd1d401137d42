"""Backend selection: explicit, logged, and never a silent fallback."""

from __future__ import annotations

import logging

import pytest
import torch
from kernel_testing import DEVICES

from infllm_kernels import backend as backend_mod
from infllm_kernels import reference
from infllm_kernels.backend import BackendError, select_backend


def test_auto_on_cpu_is_torch_and_logged(caplog):
    with caplog.at_level(logging.INFO, logger="infllm.backend"):
        chosen = select_backend("auto", "cpu")
    assert chosen.name == "torch"
    assert chosen.memory_attention is reference.memory_attention_ref
    assert "attention backend: torch (auto on cpu)" in caplog.text


def test_auto_on_cuda_is_triton_and_logged(caplog):
    with caplog.at_level(logging.INFO, logger="infllm.backend"):
        chosen = select_backend("auto", "cuda")
    assert chosen.name == "triton"
    assert "attention backend: triton (auto on cuda)" in caplog.text


def test_triton_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not backend_mod.triton_interpreter_enabled()
    monkeypatch.setattr(backend_mod, "triton_interpreter_enabled", lambda: False)
    with pytest.raises(BackendError, match="TRITON_INTERPRET=1"):
        select_backend("triton", "cpu")


def test_triton_on_cpu_with_interpreter_works(monkeypatch, caplog):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backend_mod.triton_interpreter_enabled()
    with caplog.at_level(logging.INFO, logger="infllm.backend"):
        chosen = select_backend("triton", "cpu")
    assert chosen.name == "triton"
    assert "attention backend: triton (requested, interpreter)" in caplog.text


@pytest.mark.parametrize("name", ["cuda", "flash", "", "Torch"])
def test_unknown_name_raises(name):
    with pytest.raises(BackendError, match="unknown backend"):
        select_backend(name, "cpu")


def test_triton_on_other_device_raises():
    with pytest.raises(BackendError, match="cannot run on device 'meta'"):
        select_backend("triton", "meta")


@pytest.mark.parametrize("device", DEVICES)
def test_triton_backend_agrees_with_torch_backend(device):
    """The ops through the Backend objects, end to end on one small problem, with a shared selection (from
    the chunk's mean query) and a per-KV-head one (from every query of the chunk)."""
    gen = torch.Generator().manual_seed(0)
    h, n_kv, n_q, n_l, n_i, n_b, bs, d = 4, 2, 6, 11, 2, 8, 4, 16

    def rnd(*s):
        return torch.randn(*s, generator=gen).to(device)

    q, k_l, v_l = rnd(h, n_q, d), rnd(n_kv, n_l, d), rnd(n_kv, n_l, d)
    k_i, v_i, k_b, v_b = rnd(n_kv, n_i, d), rnd(n_kv, n_i, d), rnd(n_b, n_kv, bs, d), rnd(n_b, n_kv, bs, d)
    fast, ref = select_backend("triton", device), select_backend("torch", device)
    for q_sel, per_kv_head in ((q.mean(1), False), (q, True)):
        scores = fast.block_scores(q_sel, k_b[:, :, :2], n_b, per_kv_head)
        ref_scores = ref.block_scores(q_sel, k_b[:, :, :2], n_b, per_kv_head)
        torch.testing.assert_close(scores, ref_scores, rtol=1e-5, atol=1e-5)
        idx = fast.topk_blocks(q_sel, k_b[:, :, :2], n_b, 3, per_kv_head)
        assert torch.equal(idx, ref.topk_blocks(q_sel, k_b[:, :, :2], n_b, 3, per_kv_head))
        idx = idx if per_kv_head else idx[0]  # a shared selection is passed as [K]
        out, lse = fast.memory_attention(q, q, k_l, v_l, k_i, v_i, k_b, v_b, idx, d**-0.5)
        ref_out, ref_lse = ref.memory_attention(q, q, k_l, v_l, k_i, v_i, k_b, v_b, idx, d**-0.5)
        torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(lse, ref_lse, rtol=1e-5, atol=1e-5)
        mass = fast.attention_mass(q, k_l, lse, d**-0.5)
        torch.testing.assert_close(mass, ref.attention_mass(q, k_l, ref_lse, d**-0.5), rtol=1e-5, atol=1e-5)
