"""Format detection: which reader a file needs, from its first bytes and its name.

Content wins over the extension for the unambiguous signatures (``%PDF`` magic, a zip holding an EPUB);
the extension decides between the text flavours (Markdown, reStructuredText, source code, HTML), and
HTML without an HTML extension is recognised by a leading ``<!DOCTYPE html>`` / ``<html``. A file whose
first :data:`SNIFF_BYTES` contain NUL bytes (without a UTF-16/32 byte-order mark or UTF-16 shape) or many
control characters is binary.
"""

from __future__ import annotations

import io
import os
import re
import zipfile

SNIFF_BYTES = 8192

MARKDOWN_EXTENSIONS = frozenset({".md", ".markdown", ".mdown", ".mkd", ".mkdn", ".mdx"})
RST_EXTENSIONS = frozenset({".rst", ".rest"})
HTML_EXTENSIONS = frozenset({".html", ".htm", ".xhtml", ".shtml"})
CODE_EXTENSIONS = frozenset(
    (
        ".py .pyi .pyx .pxd .ipynb .c .h .cc .cpp .cxx .c++ .hpp .hh .hxx .inl .cu .cuh .m .mm .java .kt .kts "
        ".scala .sc .groovy .gradle .go .rs .swift .js .jsx .mjs .cjs .ts .tsx .mts .cts .vue .svelte .rb .php "
        ".pl .pm .lua .r .jl .sh .bash .zsh .fish .ps1 .psm1 .bat .cmd .sql .cs .fs .fsx .vb .dart .ex .exs "
        ".erl .hrl .hs .lhs .clj .cljs .cljc .el .lisp .scm .rkt .ml .mli .nim .zig .v .sv .svh .vhd .vhdl "
        ".asm .s .f .f90 .f95 .for .proto .thrift .graphql .gql .css .scss .sass .less .json .jsonc .json5 "
        ".yaml .yml .toml .ini .cfg .conf .properties .xml .xsd .xsl .svg .cmake .mk .mak .dockerfile .tf "
        ".hcl .nix .tex .sty .cls .bib .d .pas .ada .adb .ads .cob .tcl .awk .sed .vim .j2 .jinja .tmpl "
        ".mustache .hbs .ejs .erb .haml .pug .sol .move .cairo .wgsl .glsl .hlsl .metal .bzl .bazel .star "
        ".gn .gni .ninja .pbtxt .prototxt .csv .tsv"
    ).split()
)
CODE_FILENAMES = frozenset(
    "makefile gnumakefile dockerfile containerfile rakefile gemfile jenkinsfile vagrantfile procfile "
    "build workspace justfile cmakelists.txt meson.build sconstruct sconscript".split()
)
BINARY_EXTENSIONS = frozenset(
    (
        ".png .jpg .jpeg .gif .bmp .ico .icns .webp .tif .tiff .psd .xcf .heic .heif .avif .svgz .raw .cr2 "
        ".mp3 .mp4 .m4a .m4v .wav .flac .ogg .oga .opus .aac .avi .mov .mkv .webm .wmv .flv .mid .midi "
        ".zip .gz .tgz .bz2 .tbz2 .xz .txz .lz .lz4 .lzma .zst .7z .rar .tar .cab .jar .war .ear .apk .aar "
        ".ipa .deb .rpm .msi .dmg .iso .img .exe .dll .so .dylib .o .a .lib .obj .ko .elf .bin .class "
        ".dex .pyc .pyo .pyd .whl .egg .wasm .woff .woff2 .ttf .otf .eot .sqlite .sqlite3 .db .mdb .pt .pth "
        ".ckpt .safetensors .gguf .onnx .tflite .pb .npy .npz .pkl .pickle .joblib .h5 .hdf5 .parquet "
        ".arrow .feather .orc .avro .doc .docx .xls .xlsx .ppt .pptx .odt .ods .odp .key .numbers .pages "
        ".blend .fbx .glb .stl .3ds .swf .jks .keystore .p12 .pfx .der"
    ).split()
)

_BOMS = (
    (b"\xef\xbb\xbf", "utf-8-sig"),
    (b"\xff\xfe\x00\x00", "utf-32"),
    (b"\x00\x00\xfe\xff", "utf-32"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
)
_HTML_START = re.compile(rb"^\s*(?:<\?xml[^>]*\?>\s*)?(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html[\s>]|head[\s>]|body[\s>])", re.I | re.S)
_CONTROL = frozenset(range(0, 9)) | frozenset(range(14, 27)) | frozenset(range(28, 32)) | {127}


def bom_encoding(head: bytes) -> str | None:
    """The codec named by a byte-order mark at the start of ``head`` (which strips the mark), or None."""
    for bom, codec in _BOMS:
        if head.startswith(bom):
            return codec
    return None


def utf16_without_bom(head: bytes) -> str | None:
    """``"utf-16-le"``/``"utf-16-be"`` when ``head`` looks like mostly-ASCII UTF-16 without a BOM, else None.

    Windows tools write such files; without this check their NUL bytes would make them look binary.
    """
    if len(head) < 8:
        return None
    even, odd = head[0::2], head[1::2]
    half = len(head) // 2
    codec = None
    if odd.count(0) >= 0.4 * half and even.count(0) == 0:
        codec = "utf-16-le"
    elif even.count(0) >= 0.4 * half and odd.count(0) == 0:
        codec = "utf-16-be"
    if codec is None:
        return None
    text = head[: len(head) & ~1].decode(codec, "replace")
    printable = sum(1 for ch in text if ch.isprintable() or ch in "\t\n\r\f")
    return codec if printable >= 0.95 * len(text) else None


def binary_reason(head: bytes) -> str | None:
    """Why ``head`` (a file's first bytes) is binary, or None when it can be text."""
    if bom_encoding(head) or utf16_without_bom(head):
        return None
    if b"\x00" in head:
        return "NUL bytes in the first 8 KiB"
    if head:
        controls = sum(1 for byte in head if byte in _CONTROL)
        if controls > 0.1 * len(head):
            return "control characters in the first 8 KiB"
    return None


def compression(head: bytes) -> str | None:
    """The compression format (``"gzip"``, ``"bzip2"``, ``"xz"``, ``"zstd"``) whose magic starts ``head``."""
    for magic, name in ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd")):
        if head.startswith(magic):
            return name
    return None


def is_pdf(head: bytes) -> bool:
    """``%PDF`` within the first KiB (the PDF specification tolerates junk before the header)."""
    return b"%PDF-" in head[:1024]


def is_zip(head: bytes) -> bool:
    """Local-file-header or empty-archive magic of a zip file."""
    return head[:4] in (b"PK\x03\x04", b"PK\x05\x06")


def is_html(head: bytes) -> bool:
    """A document that starts (after a BOM, blanks and comments) with a doctype or an html/head/body tag."""
    codec = bom_encoding(head)
    if codec:
        head = head.decode(codec, "ignore").encode("ascii", "ignore")
    return bool(_HTML_START.match(head[:2048]))


def zip_is_epub(source: str | os.PathLike[str] | io.IOBase) -> bool:
    """True when the zip ``source`` declares ``application/epub+zip`` or holds ``META-INF/container.xml``."""
    try:
        with zipfile.ZipFile(source) as archive:  # type: ignore[arg-type]
            names = set(archive.namelist())
            if "mimetype" in names:
                with archive.open("mimetype") as fh:
                    if fh.read(64).strip() == b"application/epub+zip":
                        return True
            return "META-INF/container.xml" in names
    except Exception:  # BadZipFile, NotImplementedError (exotic versions), OSError...
        return False


def text_kind(name: str) -> str:
    """The text flavour of a file name: ``"markdown"``, ``"rst"``, ``"html"``, ``"code"`` or ``"text"``."""
    base = os.path.basename(name).lower()
    ext = os.path.splitext(base)[1]
    if ext in MARKDOWN_EXTENSIONS:
        return "markdown"
    if ext in RST_EXTENSIONS:
        return "rst"
    if ext in HTML_EXTENSIONS:
        return "html"
    if ext in CODE_EXTENSIONS or base in CODE_FILENAMES or base.startswith("dockerfile"):
        return "code"
    return "text"


def has_binary_extension(name: str) -> bool:
    """The name ends in an extension of a known binary format (images, archives, objects, models...)."""
    return os.path.splitext(name.lower())[1] in BINARY_EXTENSIONS
