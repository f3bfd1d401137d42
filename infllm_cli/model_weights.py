"""Which weight files transformers would load from a model folder, checked before it maps any of them.

transformers loads ``model.safetensors``, or the shards listed in ``model.safetensors.index.json``; failing
those, the pickle checkpoint ``pytorch_model.bin`` (or its index). Unpickling can run arbitrary code, so a
folder that has only pickle weights (``*.bin``, ``*.pt``, ``*.pth``, ``*.ckpt``, ``*.pkl``) is refused unless
the :class:`~infllm_cli.model_files.LoadPolicy` allows pickle; transformers then reads it with
``torch.load(weights_only=True)``. Every safetensors file's header is checked against the file
(:mod:`.safetensors_header`), and index files may name only plain files inside the folder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ModelError, UnsafeModelError
from .model_files import LoadPolicy, read_json_file
from .safetensors_header import TensorEntry, read_header

log = logging.getLogger("infllm.models")

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PICKLE_WEIGHTS = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

PICKLE_HINT = "convert it to safetensors, or pass --allow-pickle if you trust this file (unsafe: unpickling can run code)"


@dataclass
class Weights:
    """The weight files of a model folder. ``tensors`` (name -> header entry) is empty for pickle weights."""

    format: str  # "safetensors" or "pickle"
    files: list[Path]
    tensors: dict[str, TensorEntry] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    @property
    def numel(self) -> int:
        return sum(t.numel for t in self.tensors.values())


def find_weights(folder: Path, policy: LoadPolicy) -> Weights:
    """The checked weight files transformers would load from ``folder``; :class:`ModelError` otherwise."""
    if (folder / SAFE_WEIGHTS).is_file():
        path = folder / SAFE_WEIGHTS
        return Weights("safetensors", [path], read_header(path))
    if (folder / SAFE_INDEX).is_file():
        shards = _index_shards(folder / SAFE_INDEX)
        tensors: dict[str, TensorEntry] = {}
        for shard, names in shards.items():
            header = read_header(shard)
            missing = [n for n in names if n not in header]
            if missing:
                raise ModelError(f"{folder / SAFE_INDEX}: tensor {missing[0][:80]!r} is not in {shard.name}")
            tensors.update(header)
        return Weights("safetensors", list(shards), tensors)
    pickles = sorted(p.name for p in folder.iterdir() if p.name.endswith(PICKLE_SUFFIXES) and p.is_file())
    loadable = [n for n in (PICKLE_WEIGHTS, PICKLE_INDEX) if n in pickles or (folder / n).is_file()]
    if pickles or loadable:
        shown = ", ".join((pickles or loadable)[:3]) + (", ..." if len(pickles) > 3 else "")
        if not policy.allow_pickle:
            raise UnsafeModelError(f"{folder}: the weights are a pickle checkpoint ({shown}), refused: {PICKLE_HINT}")
        if (folder / PICKLE_WEIGHTS).is_file():
            return Weights("pickle", [folder / PICKLE_WEIGHTS])
        if (folder / PICKLE_INDEX).is_file():
            return Weights("pickle", list(_index_shards(folder / PICKLE_INDEX)))
        raise ModelError(
            f"{folder}: no weights transformers can load: found {shown}, but pickle weights are read only as "
            f"{PICKLE_WEIGHTS} or the shards of {PICKLE_INDEX}"
        )
    others = sorted(p.name for p in folder.glob("*.safetensors"))
    if others:
        raise ModelError(
            f"{folder}: no model weights transformers can load ({', '.join(others[:3])} present, but neither "
            f"{SAFE_WEIGHTS} nor {SAFE_INDEX})"
        )
    raise ModelError(f"{folder}: no model weights ({SAFE_WEIGHTS} or {SAFE_INDEX}) in this directory")


def _index_shards(index: Path) -> dict[Path, list[str]]:
    """Shard file -> tensor names, from a ``*.index.json``; shard names must be plain files in the folder."""
    data = read_json_file(index, index.name)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelError(f"{index}: no weight_map object naming the shard of each tensor")
    shards: dict[Path, list[str]] = {}
    for tensor, shard in weight_map.items():
        if not isinstance(shard, str) or not _plain_name(shard):
            raise ModelError(f"{index}: shard name {str(shard)[:80]!r} is not a plain file name in the model folder")
        path = index.parent / shard
        if not path.is_file():
            raise ModelError(f"{index}: shard {shard} is missing")
        shards.setdefault(path, []).append(tensor)
    return shards


def _plain_name(name: str) -> bool:
    return bool(name) and "/" not in name and "\\" not in name and "\0" not in name and name not in (".", "..")
