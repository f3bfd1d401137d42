"""infllm: read documents far longer than a model's context window with InfLLM context memory.

The library API the CLI wraps: :func:`load_model`, :class:`Runner` (feed tokens, snapshot/restore,
generate), the configuration dataclasses and presets, and :func:`infllm_cli.sources.open_source`.
"""

from .config import GenerationConfig, MemoryConfig, PRESETS, preset
from .models import LoadedModel, load_model
from .runner import Runner, RunStats

__version__ = "0.1.0"

__all__ = ["GenerationConfig", "LoadedModel", "MemoryConfig", "PRESETS", "Runner", "RunStats", "load_model", "preset"]
