"""infllm: read documents far longer than a model's context window with InfLLM context memory.

The library API the CLI wraps: :func:`load_model`, :class:`Runner` (feed tokens, snapshot/restore,
generate), the configuration dataclasses and presets, and :func:`infllm_cli.sources.open_source`.
Names are imported lazily so that the command line starts without loading torch for ``--help``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "GenerationConfig": "config",
    "MemoryConfig": "config",
    "PRESETS": "config",
    "preset": "config",
    "LoadedModel": "models",
    "LoadPolicy": "model_files",
    "check_model": "models",
    "load_model": "models",
    "Runner": "runner",
    "RunStats": "runner",
    "DocumentSession": "cli.session",
    "read_document": "cli.session",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
