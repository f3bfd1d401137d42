"""Load a causal LM and its tokenizer from a local directory or the local Hugging Face cache.

Nothing is downloaded: a hub id is resolved to its cached snapshot folder by looking at the cache only
(:mod:`.model_files`), and every transformers call gets ``local_files_only=True``. Nothing from the model
folder is run: ``trust_remote_code`` is False unless the :class:`LoadPolicy` says otherwise, and pickle
checkpoints are refused unless it allows them (:mod:`.model_weights`). Before any weight is allocated the
weight headers, the config's shapes and the memory the parameters need are checked (:mod:`.model_fit`),
so a broken or hostile model folder gives one :class:`ModelError` line. Only architectures whose attention
the memory has been validated on are accepted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import DeviceError, ModelError
from .formatting import one_line
from .model_files import SAFE, SUPPORTED_FAMILIES, LoadPolicy, inspect_config, transformers_quiet
from .model_fit import check_fits
from .model_weights import Weights, find_weights

log = logging.getLogger("infllm.models")

__all__ = ["LoadPolicy", "LoadedModel", "CheckedModel", "SUPPORTED_FAMILIES", "check_model", "load_model", "read_model_config"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
            values = value if isinstance(value, (list, tuple)) else [value]
            ids.update(v for v in values if isinstance(v, int) and not isinstance(v, bool) and v >= 0)
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


def read_model_config(name_or_path: str, policy: LoadPolicy = SAFE) -> Any:
    """The model's config only (no weights), checked against the supported families."""
    folder, raw = inspect_config(name_or_path, policy)
    return _auto_config(folder, raw, policy)


def _auto_config(folder: Path, raw: dict[str, Any], policy: LoadPolicy) -> Any:
    from transformers import AutoConfig

    try:
        with transformers_quiet():
            return AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=policy.trust_remote_code)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # transformers' config validation raises many types
        raise ModelError(f"{folder / 'config.json'}: not a valid {raw['model_type']} config: {one_line(exc)}") from None


@dataclass
class CheckedModel:
    """A model folder whose config, weight files and size were checked and can be loaded."""

    name: str
    folder: Path
    config: Any
    weights: Weights
    parameters: int


def check_model(name_or_path: str, device: str = "auto", dtype: str = "auto", policy: LoadPolicy = SAFE) -> CheckedModel:
    """Everything :func:`load_model` checks before it allocates a weight (cheap: reads headers only)."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    folder, raw = inspect_config(name_or_path, policy)
    weights = find_weights(folder, policy)
    config = _auto_config(folder, raw, policy)
    try:
        with transformers_quiet():
            parameters = check_fits(config, weights, dt, dev, trust_remote_code=policy.trust_remote_code)
    except ModelError as exc:
        raise ModelError(f"{folder}: {exc}") from None
    log.debug("%s: %s weights in %d file(s), %s parameters", folder, weights.format, len(weights.files), f"{parameters:,}")
    return CheckedModel(name_or_path, folder, config, weights, parameters)


def load_model(
    name_or_path: str, device: str = "auto", dtype: str = "auto", tokenizer: Any = None, policy: LoadPolicy = SAFE
) -> LoadedModel:
    """Load model and tokenizer (unless one is passed, e.g. already used to read the document), in eval
    mode on ``device``.

    Raises :class:`ModelError` for an unknown model, a directory without (loadable, safe, consistent)
    weights, code it would have to run, or an unsupported architecture, and :class:`DeviceError` for a
    device or dtype that cannot be used.
    """
    from transformers import AutoModelForCausalLM

    from .tokens import load_tokenizer

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    checked = check_model(name_or_path, device=str(dev), dtype=str(dt).removeprefix("torch."), policy=policy)
    if tokenizer is None:
        tokenizer = load_tokenizer(name_or_path, policy=policy)
    try:
        with transformers_quiet():
            model, info = AutoModelForCausalLM.from_pretrained(
                str(checked.folder),
                config=checked.config,
                dtype=dt,
                attn_implementation="sdpa",
                local_files_only=True,
                trust_remote_code=policy.trust_remote_code,
                use_safetensors=checked.weights.format == "safetensors",
                output_loading_info=True,
            )
    except KeyboardInterrupt:
        raise
    except torch.OutOfMemoryError:
        raise ModelError(f"out of memory while loading {name_or_path!r} on {dev} as {dt}") from None
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as exc:
        raise ModelError(f"cannot load model {name_or_path!r}: {one_line(exc)}") from None
    except Exception as exc:
        if checked.weights.format != "pickle" or type(exc).__name__ != "UnpicklingError":
            raise
        raise ModelError(
            f"{checked.weights.files[0]}: the pickle holds more than plain tensors, refused by torch.load(weights_only=True) "
            f"({one_line(exc)[:100]})"
        ) from None
    _check_loading_info(checked.folder, info)
    model.to(dev).eval()
    log.info("loaded %s (%s) on %s as %s", name_or_path, model.config.model_type, dev, dt)
    return LoadedModel(model=model, tokenizer=tokenizer, device=dev, dtype=dt, name=name_or_path)


def _check_loading_info(folder: Path, info: dict[str, Any]) -> None:
    """Weights that would be left random or were reshaped are errors, not warnings."""
    mismatched = sorted(info.get("mismatched_keys") or ())
    if mismatched:
        key, ckpt, want = (list(mismatched[0]) + [None, None])[:3]
        raise ModelError(f"{folder}: config.json does not match the weights: {key} is {ckpt} in the weights, the config makes it {want}")
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise ModelError(
            f"{folder}: the weights lack {len(missing)} tensor(s) the model needs (first: {missing[0]}); they would be left random"
        )
    errors = info.get("error_msgs") or []
    if errors:
        raise ModelError(f"{folder}: cannot load the weights: {one_line(errors[0])}")
    unexpected = sorted(info.get("unexpected_keys") or ())
    if unexpected:
        log.debug("%s: %d tensor(s) in the weights are not used by the model (first: %s)", folder, len(unexpected), unexpected[0])
