"""Unit tests of model resolution, option packing, the count/estimate helpers and tiktoken's offline path."""

from __future__ import annotations

import base64
import hashlib
import time
from pathlib import Path

import pytest

from infllm_cli import estimate
from infllm_cli.cli.options import Options, auto_preset
from infllm_cli.config import PRESETS, ConfigError
from infllm_cli.errors import UsageError
from infllm_cli.settings import DEFAULT_MODEL, resolve_model

CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


# -- settings ----------------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv("INFLLM_MODEL", raising=False)
    monkeypatch.delenv("INFLLM_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    return tmp_path


def test_model_resolution_order(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_model(None).name == DEFAULT_MODEL
    cfg = clean_env / "infllm" / "config.toml"
    cfg.parent.mkdir()
    cfg.write_text('model = "from-config"\n')
    assert resolve_model(None).name == "from-config"
    monkeypatch.setenv("INFLLM_MODEL", "from-env")
    assert resolve_model(None).name == "from-env"
    assert resolve_model("from-option").name == "from-option"


def test_bad_config_file_is_a_usage_error(clean_env: Path) -> None:
    cfg = clean_env / "infllm" / "config.toml"
    cfg.parent.mkdir()
    cfg.write_text("model = [unclosed\n")
    with pytest.raises(UsageError, match="not valid TOML"):
        resolve_model(None)
    cfg.write_text("model = 3\n")
    with pytest.raises(UsageError, match="must be a non-empty string"):
        resolve_model(None)


# -- options -----------------------------------------------------------------------------------------


class _Cfg:
    def __init__(self, n: int | None) -> None:
        self.max_position_embeddings = n


def test_auto_preset_fits_the_trained_context() -> None:
    assert auto_preset(_Cfg(32768)) == "paper"
    assert auto_preset(_Cfg(4096)) == "small"
    assert auto_preset(_Cfg(512)) == "tiny"
    assert auto_preset(_Cfg(256)) == "micro"
    assert auto_preset(_Cfg(None)) == "paper"


def test_knobs_override_the_preset_and_are_validated() -> None:
    mem, name = Options(preset="small", n_local=1024, topk=2).memory_config()
    assert name == "small" and mem.n_local == 1024 and mem.topk == 2 and mem.block_size == PRESETS["small"].block_size
    mem, _ = Options(preset="tiny", exc_block_size=48).memory_config()  # chunk rounded to a multiple
    assert mem.chunk_size % 48 == 0
    with pytest.raises(ConfigError, match="exc_block_size"):
        Options(preset="tiny", n_local=32).memory_config()
    # the question's blocks and their neighbours: default selection, paper selection, explicit override
    mem, _ = Options(preset="small").memory_config()
    assert (mem.question_topk, mem.question_neighbors, mem.question_shared) == (4, 1, 4)
    mem, _ = Options(preset="small", selection="paper").memory_config()
    assert (mem.question_topk, mem.question_neighbors, mem.question_shared) == (0, 0, 0)
    mem, _ = Options(preset="small", question_neighbors=2, question_shared=0, question_neighbor_rank=0).memory_config()
    assert (mem.question_neighbors, mem.question_shared, mem.question_neighbor_rank) == (2, 0, 0)
    with pytest.raises(ConfigError, match="question_neighbor_rank"):
        Options(preset="small", question_neighbor_rank=-1).memory_config()
    with pytest.raises(ConfigError, match="question_neighbors"):
        Options(preset="small", question_neighbors=9).memory_config()
    with pytest.raises(ConfigError, match="question_shared"):
        Options(preset="small", question_shared=65).memory_config()


# -- estimates ---------------------------------------------------------------------------------------


def test_char_estimate() -> None:
    assert len(estimate.CharEstimator().encode("x" * 10)) == 3
    assert "characters / 4" in estimate.CharEstimator.description


def test_memory_estimate_formula() -> None:
    from transformers import LlamaConfig

    cfg = LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=64)
    shape = estimate.model_shape(cfg, dtype="bfloat16")
    assert shape.kv_bytes_per_token == 2 * 2 * 2 * 16 * 2
    mem = PRESETS["tiny"]
    est = estimate.estimate_memory(10_000, mem, "infllm", shape)
    assert est.blocks == -(-(10_000 - mem.n_init - mem.n_local) // mem.block_size)
    assert est.window_bytes == mem.max_window * shape.kv_bytes_per_token
    assert est.total_kv_bytes > est.block_store_bytes >= est.blocks * mem.block_size * shape.kv_bytes_per_token
    assert estimate.estimate_memory(10_000, mem, "streaming", shape).blocks == 0
    assert estimate.estimate_memory(10_000, mem, "dense", shape).window_bytes == 10_000 * shape.kv_bytes_per_token
    assert estimate.estimate_memory(10_000, mem, "infllm", None).total_kv_bytes is None


def _fake_bpe() -> bytes:
    ranks = [bytes([i]) for i in range(256)] + [b"th", b"the", b" the"]
    return b"".join(base64.b64encode(t) + b" " + str(r).encode() + b"\n" for r, t in enumerate(ranks))


def test_tiktoken_not_cached_gives_none_fast(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    t0 = time.perf_counter()
    assert estimate.cached_tiktoken("cl100k_base") is None
    assert time.perf_counter() - t0 < 2
    enc, _ = estimate.choose_encoder(None)
    assert isinstance(enc, estimate.CharEstimator)


def test_tiktoken_cached_file_is_used_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    data = _fake_bpe()
    (tmp_path / hashlib.sha1(CL100K_URL.encode()).hexdigest()).write_bytes(data)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    # the real file's hash is pinned by tiktoken; the stand-in file passes only with the check relaxed
    assert estimate.cached_tiktoken("cl100k_base") is None
    monkeypatch.setattr(estimate, "_sha256_ok", lambda data, expected: hashlib.sha256(data).hexdigest() == hashlib.sha256(_fake_bpe()).hexdigest())
    enc = estimate.cached_tiktoken("cl100k_base")
    assert enc is not None and enc.name == "cl100k_base"
    assert enc.decode(enc.encode_ordinary("the theme")) == "the theme"
    chosen, _ = estimate.choose_encoder(None)
    assert chosen.description == "tiktoken cl100k_base, estimate"
