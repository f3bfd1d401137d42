"""Encoding detection and incremental decoding of byte streams into lines.

Detection order (:func:`detect_encoding`), on the first bytes of a file (:data:`ENCODING_SAMPLE`):

1. a byte-order mark: UTF-8 (``utf-8-sig``), UTF-16 or UTF-32 (the mark is stripped);
2. UTF-16 without a mark, recognised by its NUL bytes in every other position;
3. a charset declared by the format (HTML ``<meta charset>``, XML prolog), when Python knows it as an
   ASCII-compatible text encoding (:func:`check_codec`; ``rot-13``, ``base64``, ``idna``, unknown names
   are ignored with a warning by the reader);
4. strict UTF-8;
5. otherwise Windows-1252 (a superset of the printable Latin-1), with the five bytes cp1252 leaves
   undefined decoded as Latin-1 -- unless the sample is mostly UTF-8 with a few broken sequences, or holds
   bytes that no Western 8-bit text contains, in which case it stays UTF-8.

Decoding never fails: bytes that are invalid in the chosen encoding become U+FFFD and are counted in a
:class:`DecodeStats`, so that the reader can warn ("invalid UTF-8 bytes replaced"). Text is read
incrementally (:func:`iter_line_pieces`), with universal newlines (``\\r\\n`` and ``\\r`` become ``\\n``),
and a line longer than the piece limit is delivered in several pieces, so that neither a 1 GB file nor a
1 GB line is ever held in memory at once.
"""

from __future__ import annotations

import codecs
import io
import re
import threading
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from .common import MAX_SPAN_CHARS
from .sniff import bom_encoding, utf16_without_bom

ENCODING_SAMPLE = 64 * 1024

_VALID_MULTIBYTE = re.compile(
    rb"[\xc2-\xdf][\x80-\xbf]|\xe0[\xa0-\xbf][\x80-\xbf]|[\xe1-\xef][\x80-\xbf]{2}"
    rb"|\xf0[\x90-\xbf][\x80-\xbf]{2}|[\xf1-\xf3][\x80-\xbf]{3}|\xf4[\x80-\x8f][\x80-\xbf]{2}"
)
# Bytes that cp1252 leaves undefined, plus 0xFF ("ÿ"), which no Western 8-bit text realistically holds
# in a sample that has no valid UTF-8 at all: seeing one means "broken UTF-8", not "legacy encoding".
_NOT_LEGACY = frozenset({0x81, 0x8D, 0x8F, 0x90, 0x9D, 0xFF})
_ALIASES = {"iso8859-1": "cp1252", "iso-8859-1": "cp1252", "latin-1": "cp1252", "ascii": "cp1252", "utf-8": "utf-8"}


@dataclass
class DecodeStats:
    """How many invalid byte sequences were replaced with U+FFFD while decoding one stream."""

    replaced: int = 0


_ACTIVE = threading.local()


def _replace_and_count(exc: UnicodeError) -> tuple[str, int]:
    stats = getattr(_ACTIVE, "stats", None)
    if stats is not None:
        stats.replaced += 1
    return "\ufffd", exc.end  # type: ignore[attr-defined]


def _latin1_fallback(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeDecodeError):  # pragma: no cover - only decoding uses it
        raise exc
    return exc.object[exc.start : exc.end].decode("latin-1"), exc.end


codecs.register_error("infllm.replace", _replace_and_count)
codecs.register_error("infllm.latin1", _latin1_fallback)


_PROBE = b"<meta charset=x> a+b-c \\u00e9 \\x41 ~{}\n"
"""ASCII text a declared charset must decode to itself (a declaration written in ASCII can only name an
ASCII-compatible encoding): rejects UTF-7 (``+``), ``unicode_escape`` (backslashes), punycode..."""
_NOT_DOCUMENT_CODECS = frozenset({"idna", "punycode", "undefined", "unicode-escape", "raw-unicode-escape", "utf-7"})


def check_codec(name: str | None) -> tuple[str | None, str | None]:
    """Python's codec for a charset declared inside a document, or why it cannot be used.

    Returns ``(codec, None)`` for a usable text encoding (``"ISO-8859-1"`` -> ``"cp1252"`` as browsers
    do), ``(None, None)`` when nothing usable was declared and nothing is wrong (no declaration, or a
    UTF-16/32 name that an ASCII declaration cannot be right about), and ``(None, reason)`` for an unknown
    name or a codec that is not a text encoding of documents (``rot-13``, ``base64``, ``zlib``, ``hex``,
    ``idna``, ``utf-7``...): the caller warns and detects the encoding instead. Never raises.
    """
    if not name:
        return None, None
    name = name.strip().strip("'\"")[:64]
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError, TypeError):
        return None, f"{name!r} is unknown"
    codec = info.name
    if codec in ("utf-16", "utf-32", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"):
        return None, None  # a declaration read as ASCII cannot be right about a 16/32-bit encoding
    if not getattr(info, "_is_text_encoding", True) or codec in _NOT_DOCUMENT_CODECS:
        return None, f"{name!r} is not a text encoding"
    try:
        decoder = codecs.getincrementaldecoder(codec)(errors="infllm.replace")
        if decoder.decode(_PROBE, final=True) != _PROBE.decode("ascii"):
            return None, f"{name!r} is not ASCII-compatible"
        codecs.getincrementaldecoder(codec)(errors="infllm.replace").decode(bytes(range(256)), final=True)
    except Exception:  # a codec that cannot decode arbitrary bytes with a replacement handler
        return None, f"{name!r} cannot decode documents"
    return _ALIASES.get(codec, codec), None


def normalize_codec(name: str | None) -> str | None:
    """Python's name for a declared charset, or None when it is absent, unknown or unusable
    (see :func:`check_codec`, which also says why)."""
    return check_codec(name)[0]


def detect_encoding(sample: bytes, declared: str | None = None) -> str:
    """Choose the codec for a stream whose first bytes are ``sample`` (see the module docstring).

    Parameters
    ----------
    sample
        The first :data:`ENCODING_SAMPLE` bytes of the stream (fewer: the whole stream).
    declared
        A charset named inside the document (HTML/XML), tried after the byte-order marks.

    Returns
    -------
    str
        A Python codec name for :func:`iter_line_pieces`.
    """
    codec = bom_encoding(sample) or utf16_without_bom(sample[:8192])
    if codec:
        return codec
    codec = normalize_codec(declared)
    if codec and codec != "utf-8":
        return codec
    try:
        # a sample shorter than ENCODING_SAMPLE is the whole stream: it must not end inside a character
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=len(sample) < ENCODING_SAMPLE)
        return "utf-8"
    except UnicodeDecodeError:
        pass
    if codec == "utf-8":
        return codec
    valid = _VALID_MULTIBYTE.findall(sample)
    high = sum(1 for byte in sample if byte >= 0x80)
    invalid = high - sum(len(seq) for seq in valid)
    if valid and len(valid) >= invalid:
        return "utf-8"
    if any(byte in _NOT_LEGACY for byte in sample):
        return "utf-8"
    return "cp1252"


def describe(codec: str) -> str:
    """A short human name: ``"utf-8-sig"`` -> ``"UTF-8"``, ``"cp1252"`` -> ``"Windows-1252"``."""
    names = {"utf-8": "UTF-8", "utf-8-sig": "UTF-8", "cp1252": "Windows-1252"}
    return names.get(codec, codec.upper())


def iter_line_pieces(
    raw: BinaryIO, codec: str, stats: DecodeStats, max_chars: int = MAX_SPAN_CHARS
) -> Iterator[str]:
    """Decode ``raw`` incrementally and yield its lines.

    Parameters
    ----------
    raw
        A readable binary stream (a file opened ``"rb"``, a pipe); it is read in blocks, never whole,
        and is not closed.
    codec
        From :func:`detect_encoding`.
    stats
        Receives the count of invalid sequences replaced with U+FFFD.
    max_chars
        Longest piece; a longer line comes in several pieces.

    Yields
    ------
    str
        A complete line ending in ``"\\n"``, or a piece of a long line (no ``"\\n"``), or the last line
        of a stream that does not end with a newline.
    """
    errors = "infllm.latin1" if codec == "cp1252" else "infllm.replace"
    text = io.TextIOWrapper(raw, encoding=codec, errors=errors, newline=None)  # type: ignore[arg-type]
    try:
        while True:
            _ACTIVE.stats = stats
            try:
                piece = text.readline(max_chars)
            finally:
                _ACTIVE.stats = None
            if not piece:
                return
            yield piece
    finally:
        try:
            text.detach()  # leave ``raw`` open: its owner closes it
        except ValueError:  # pragma: no cover - already detached/closed
            pass
