"""Test setup: offline Hugging Face, the Triton interpreter on CPU, tiny random models built in code.

The environment variables must be set before transformers (which imports triton indirectly) is imported.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
try:  # the interpreter must be chosen before triton is first imported
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover
    pass

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.tiny_models import FAMILIES, make_tiny_model  # noqa: E402

SHARED_MODELS = Path(__file__).resolve().parent.parent.parent / "shared" / "models"
STORIES = SHARED_MODELS / "stories260k"

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny random checkpoint per supported family, saved with ``save_pretrained``."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {family: make_tiny_model(root / family, family) for family in FAMILIES}


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_model_dirs: dict[str, Path]) -> Path:
    return tiny_model_dirs["llama"]


@pytest.fixture(scope="session")
def tiny_chat_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama whose tokenizer has a chat template."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-chat") / "llama-chat", "llama", chat_template=True)


@pytest.fixture(scope="session")
def stories_dir() -> Path:
    if not (STORIES / "model.safetensors").exists():
        pytest.skip(f"real checkpoint not available: {STORIES} is absent (it lives in ../shared/models beside the checkout)")
    return STORIES


@pytest.fixture(autouse=True)
def _isolated_memory_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test (and the CLI processes it starts) gets its own empty memory cache, never ~/.cache/infllm."""
    root = tmp_path_factory.mktemp("memory-cache")
    monkeypatch.setenv("INFLLM_CACHE_DIR", str(root))
    monkeypatch.delenv("INFLLM_MAX_CACHE_SIZE", raising=False)
    return root
