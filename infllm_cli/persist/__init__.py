"""Saved memories: read a document once, answer from its memory in later runs (see docs/cache.md).

* :mod:`.files`: the on-disk entry (safetensors + checksummed JSON manifest, atomic writes, mmap reads);
* :mod:`.fingerprint`: model and token-stream fingerprints;
* :mod:`.memory_state`: a ``ContextMemory`` and its checkpoints as tensors, the document's provenance;
* :mod:`.store`: the cache directory (locks, LRU eviction, listing, verification);
* :mod:`.reading`: a read through the cache (load, extend a saved prefix, or build and save).
"""

from .files import EntryError
from .reading import CachedRead, ReadOutcome
from .store import MemoryCache, cache_root, parse_size

__all__ = ["CachedRead", "EntryError", "MemoryCache", "ReadOutcome", "cache_root", "parse_size"]
