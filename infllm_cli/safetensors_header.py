"""Read and check a ``.safetensors`` file's header without trusting it and without reading the tensors.

Layout: an 8-byte little-endian length ``N``, then ``N`` bytes of JSON (an object: tensor name ->
``{"dtype", "shape", "data_offsets": [begin, end]}``, plus an optional ``"__metadata__"`` object of strings),
then the data buffer. Checked here, before any loader maps the file: ``N`` fits in the file (and under
:data:`MAX_HEADER_BYTES`), the JSON parses to an object, every entry has a known dtype, a shape of
non-negative integers and offsets whose span is exactly the tensor's size, and the tensors tile the data
buffer from its start to the end of the file with no gap and no overlap. A truncated, random or hostile
file therefore fails with one line naming the file and the fault, and nothing is allocated from what the
header claims.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError

#: The safetensors library refuses larger headers too.
MAX_HEADER_BYTES = 100_000_000

#: Bits per element of each dtype the format defines.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as the header describes it (offsets relative to the data buffer)."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def tensor_bytes(dtype: str, shape: tuple[int, ...]) -> int | None:
    """Bytes a tensor of ``shape`` takes, or None when its bit count is not a whole number of bytes."""
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    return bits // 8 if bits % 8 == 0 else None


def read_header(path: Path) -> dict[str, TensorEntry]:
    """The tensors of the safetensors file ``path``, checked against the file's size.

    Raises :class:`ModelError` (one line, naming the file) for anything that a loader would trip over.
    """

    def bad(why: str) -> ModelError:
        return ModelError(f"{path}: not a valid safetensors file ({why})")

    try:
        size = os.stat(path).st_size
        with open(path, "rb") as fh:
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise bad(f"{size} bytes, shorter than the 8-byte header length")
            n = int.from_bytes(prefix, "little")
            if n > size - 8:
                raise bad(f"header length {n:,} exceeds the file's {size - 8:,} bytes after it: truncated or not safetensors")
            if n > MAX_HEADER_BYTES:
                raise bad(f"header length {n:,} bytes is over the {MAX_HEADER_BYTES:,}-byte limit")
            raw = fh.read(n)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(raw) != n:
        raise bad("the file changed while it was read")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad(f"the header is not JSON: {type(exc).__name__}") from None
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    data_bytes = size - 8 - n
    tensors: dict[str, TensorEntry] = {}
    for name, spec in header.items():
        if name == "__metadata__":
            if not isinstance(spec, dict) or not all(isinstance(v, str) for v in spec.values()):
                raise bad("__metadata__ must be an object of strings")
            continue
        tensors[name] = _entry(name, spec, data_bytes, bad)
    _check_tiling(tensors, data_bytes, bad)
    return tensors


def _entry(name: str, spec: object, data_bytes: int, bad) -> TensorEntry:  # noqa: ANN001
    shown = name if len(name) <= 80 else name[:77] + "..."
    if not isinstance(spec, dict):
        raise bad(f"tensor {shown!r} is not described by an object")
    dtype, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise bad(f"tensor {shown!r} has unknown dtype {str(dtype)[:20]!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise bad(f"tensor {shown!r} has an invalid shape")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= data_bytes
    ):
        raise bad(f"tensor {shown!r} has data offsets outside the file's {data_bytes:,} data bytes")
    nbytes = tensor_bytes(dtype, tuple(shape))
    if nbytes is None or nbytes != offsets[1] - offsets[0]:
        raise bad(f"tensor {shown!r}: {dtype} {list(shape)} does not match its {offsets[1] - offsets[0]:,} bytes of data")
    return TensorEntry(dtype, tuple(shape), offsets[0], offsets[1])


def _check_tiling(tensors: dict[str, TensorEntry], data_bytes: int, bad) -> None:  # noqa: ANN001
    position = 0
    for entry in sorted(tensors.values(), key=lambda e: (e.begin, e.end)):
        if entry.begin != position:
            what = "overlap" if entry.begin < position else "a gap"
            raise bad(f"tensor data has {what} at byte {min(entry.begin, position):,} of the data buffer")
        position = entry.end
    if position != data_bytes:
        raise bad(f"tensors cover {position:,} of the {data_bytes:,} data bytes")
