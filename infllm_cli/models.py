"""Load a causal LM and its tokenizer from a local directory or the local Hugging Face cache.

Nothing is downloaded implicitly when ``HF_HUB_OFFLINE`` is set; a hub id that is not cached gets one clear
error. Only architectures whose attention the memory has been validated on are accepted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import DeviceError, ModelError
from .formatting import one_line

log = logging.getLogger("infllm.models")

SUPPORTED_FAMILIES: tuple[str, ...] = ("llama", "mistral", "qwen2", "qwen3", "phi3")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")


@dataclass
class LoadedModel:
    """A model ready for the runner."""

    model: Any  # transformers PreTrainedModel
    tokenizer: Any  # transformers tokenizer
    device: torch.device
    dtype: torch.dtype
    name: str

    @property
    def eos_token_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (getattr(self.model, "generation_config", None), self.model.config, self.tokenizer):
            value = getattr(source, "eos_token_id", None) if source is not None else None
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return ids


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; validates explicit choices."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise DeviceError(f"unknown device {device!r}; use auto, cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} requested but no CUDA GPU is available; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise DeviceError(f"device {device!r} is not supported; use auto, cpu or cuda[:N]")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` -> bfloat16 on CUDA (float16 where bf16 is unsupported), float32 on CPU."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return DTYPES[dtype]
    except KeyError:
        raise DeviceError(f"unknown dtype {dtype!r}; use auto, {', '.join(DTYPES)}") from None


def _check_local_dir(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise ModelError(f"{path}: not a model directory (no config.json)")
    if not any(next(path.glob(p), None) for p in WEIGHT_PATTERNS):
        raise ModelError(f"{path}: no model weights (*.safetensors or pytorch_model*.bin) in this directory")


def read_model_config(name_or_path: str) -> Any:
    """The model's config only (no weights), checked against the supported families."""
    from transformers import AutoConfig

    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path}: not a model directory (no config.json)")
    try:
        config = AutoConfig.from_pretrained(str(path) if path.exists() else name_or_path)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"model {name_or_path!r} is neither a local model directory nor in the local Hugging Face cache "
            f"({type(exc).__name__}); download it first or pass a directory"
        ) from None
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_FAMILIES:
        raise ModelError(
            f"unsupported architecture {model_type!r} for {name_or_path}; supported: {', '.join(SUPPORTED_FAMILIES)}"
        )
    return config


def load_model(name_or_path: str, device: str = "auto", dtype: str = "auto", tokenizer: Any = None) -> LoadedModel:
    """Load model and tokenizer (unless one is passed, e.g. already used to read the document), in eval
    mode on ``device``.

    Raises :class:`ModelError` for an unknown model, a directory without weights or an unsupported
    architecture, and :class:`DeviceError` for a device or dtype that cannot be used.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    path = Path(name_or_path).expanduser()
    if path.exists():
        _check_local_dir(path)
        source = str(path)
    else:
        source = name_or_path
    read_model_config(source)
    try:
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dt, attn_implementation="sdpa")
    except (OSError, ValueError, SafetensorError) as exc:  # SafetensorError: a damaged weights file
        raise ModelError(f"cannot load model {name_or_path!r}: {one_line(exc)}") from None
    model.to(dev).eval()
    log.info("loaded %s (%s) on %s as %s", name_or_path, model.config.model_type, dev, dt)
    return LoadedModel(model=model, tokenizer=tokenizer, device=dev, dtype=dt, name=name_or_path)
