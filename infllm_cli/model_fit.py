"""Check, before any weight is allocated, that a model's config matches its weights and fits in memory.

The model is first built on PyTorch's ``meta`` device (shapes only, no memory) from its config, after a
bound on the layer count (a config naming a million layers would take minutes just to build). Every tensor
the weights' headers describe must then have the shape the config gives it, the config must not describe
a model larger than its weights, and the parameters at the load dtype must fit in the memory available on
the device. Each fault is one :class:`ModelError` line.
"""

from __future__ import annotations

import logging
import os
import resource
from typing import Any

import torch

from .errors import ModelError
from .formatting import human_bytes
from .model_weights import Weights

log = logging.getLogger("infllm.models")

#: More decoder layers than any released model has (the largest have ~130): refused before building.
MAX_LAYERS = 4096


def check_fits(config: Any, weights: Weights, dtype: torch.dtype, device: torch.device, *, trust_remote_code: bool = False) -> int:
    """All the checks of this module, in order; returns the model's parameter count."""
    check_layer_count(config, weights)
    model = meta_model(config, trust_remote_code)
    numel = check_config_matches_weights(model, weights)
    check_memory(numel, dtype, device)
    return numel


def check_layer_count(config: Any, weights: Weights) -> None:
    """A plausible ``num_hidden_layers``, and no more layers than the weights have tensors."""
    layers = getattr(getattr(config, "text_config", None) or config, "num_hidden_layers", None)
    if not isinstance(layers, int) or isinstance(layers, bool) or not 0 < layers <= MAX_LAYERS:
        raise ModelError(f"config.json: num_hidden_layers {layers!r} is not a plausible layer count (1 to {MAX_LAYERS:,})")
    if weights.format == "safetensors" and layers > len(weights.tensors):
        raise ModelError(
            f"config.json does not match the weights: it names {layers:,} layers but the weights hold only "
            f"{len(weights.tensors):,} tensors"
        )


def meta_model(config: Any, trust_remote_code: bool = False) -> Any:
    """The model ``config`` describes, on the meta device (no memory, no weights)."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # any inconsistency of the config surfaces here, as any exception type
        raise ModelError(f"config.json describes a model that cannot be built ({type(exc).__name__}: {str(exc)[:120]})") from None


def check_config_matches_weights(model: Any, weights: Weights) -> int:
    """Shapes of the meta ``model`` against the weight headers; returns the model's parameter count."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    numel = sum(p.numel() for p in model.parameters())
    if weights.format != "safetensors":
        return numel
    prefix = getattr(model, "base_model_prefix", "model")
    for name, entry in weights.tensors.items():
        key = name if name in expected else f"{prefix}.{name}"
        want = expected.get(key)
        if want is not None and want != entry.shape:
            raise ModelError(
                f"config.json does not match the weights: {name[:80]} is {list(entry.shape)} in the weights but the "
                f"config makes it {list(want)}"
            )
    missing = _missing_parameters(model, weights, prefix)
    if missing:
        raise ModelError(
            f"config.json does not match the weights: the weights lack {len(missing):,} tensor(s) the config needs "
            f"(first: {missing[0]}); they would be left random"
        )
    if numel > 1.05 * weights.numel + 1024:
        raise ModelError(
            f"config.json does not match the weights: it describes {numel:,} parameters, the weights hold {weights.numel:,}"
        )
    return numel


def _missing_parameters(model: Any, weights: Weights, prefix: str) -> list[str]:
    """Parameters of ``model`` with no tensor in the weights (a tied parameter counts when its partner is there)."""

    def present(name: str) -> bool:
        return name in weights.tensors or name.removeprefix(prefix + ".") in weights.tensors

    tied = getattr(model, "all_tied_weights_keys", None) or getattr(model, "_tied_weights_keys", None) or {}
    partners: dict[str, set[str]] = {}
    if isinstance(tied, dict):
        for a, b in tied.items():
            partners.setdefault(str(a), set()).add(str(b))
            partners.setdefault(str(b), set()).add(str(a))
    return [
        name for name, _ in model.named_parameters()
        if not present(name) and not any(present(p) for p in partners.get(name, ()))
    ]


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on ``device`` (None when unknown)."""
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
            return int(free)
        except Exception:  # pragma: no cover - a driver that cannot tell
            return None
    free = _meminfo_available()
    limit = _address_space_left()
    known = [v for v in (free, limit) if v is not None]
    return min(known) if known else None


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _address_space_left() -> int | None:
    """Under an address-space limit (ulimit -v), what is left of it."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return max(0, soft - int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(numel: int, dtype: torch.dtype, device: torch.device) -> None:
    """Refuse a model whose parameters at ``dtype`` do not fit in what is free: host memory (transformers
    loads there first) and, for CUDA, the GPU."""
    need = numel * torch.empty((), dtype=dtype).element_size()
    for where in dict.fromkeys([torch.device("cpu"), device]):
        free = available_memory(where)
        log.debug("model needs %s for %s parameters as %s; %s available on %s", human_bytes(need), f"{numel:,}", dtype,
                  human_bytes(free) if free is not None else "unknown", where)
        if free is not None and need > free:
            raise ModelError(
                f"the model does not fit: {numel:,} parameters as {str(dtype).removeprefix('torch.')} need "
                f"{human_bytes(need)}, {human_bytes(free)} is available on {where}"
            )
