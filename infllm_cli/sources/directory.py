"""Directories and code repositories: every readable file, in a stable order, each under a header.

Walking (done when the directory is opened, without reading whole files):

* ``.gitignore`` rules are honoured with git's semantics through ``pathspec.GitIgnoreSpec``: each
  ``.gitignore`` applies to its own directory and below, with patterns relative to that directory; deeper
  files take precedence, and within a file the last matching pattern wins, so negations (``!keep.log``)
  re-include files -- but, as in git, nothing inside an ignored directory (ignored directories are not
  entered). ``.infllmignore`` files work the same way (after ``.gitignore`` in the same directory, so
  they can override it), and ``.git/info/exclude`` applies at the root. ``.git``, ``.hg`` and ``.svn``
  are always skipped.
* Symbolic links to directories are not followed (no loops); links to files are read when their target
  is inside the directory, and a file reached twice (a link and its target, hard links) is read once, under
  its real name when it has one. A link whose target is outside the directory (``-> /etc/passwd``) is
  skipped with a warning: a directory source never reads anything outside itself.
* Only regular files are opened: named pipes, sockets and devices are skipped, also as ignore files.
* Binary files are skipped and listed (bare relative paths) in ``report.skipped``, with the reason in
  :attr:`DirectoryDocument.skip_reasons`: known binary extensions, NUL bytes or many control characters
  in the first 8 KiB, zip archives. PDF and EPUB files are read with their own readers; HTML files are
  read as source text (in repositories they are templates and pages whose markup matters).
* Ignore rules are bounded (see :data:`MAX_IGNORE_BYTES`, :data:`MAX_IGNORE_RULES`,
  :data:`MAX_TOTAL_IGNORE_RULES`, :data:`MAX_PATTERN_CHARS`, :data:`MAX_PATTERN_WILDCARDS`): a pattern
  over a limit is ignored with a warning (``a*a*a*a*a*a*b`` would take hours to match a long name).
* Names that are not valid UTF-8 are read (the original bytes are kept to open them) and shown with
  ``\\xNN`` escapes (:func:`~.common.display_path`).
* Counts: ``report.units`` is the number of files read, ``report.skipped`` the files skipped (at walking
  or when they turned out unreadable), each file in exactly one of the two; ignored files are in neither.
* Size limits: text files over ``max_file_bytes`` (default 5 MiB) are skipped with a warning; when the
  files to read add up to more than ``max_bytes`` (default 200 MiB), opening raises
  :class:`~infllm_cli.errors.InputError` naming ``--max-bytes``.

Order: files are read sorted by their relative POSIX path compared byte-wise (UTF-8), the order of
``git ls-files`` -- e.g. ``a-b.txt``, ``a/x.py``, ``a0.txt``, ``b.py``. Each file starts with a header span
whose text is ``"==> path/to/file.py <==\\n"`` (as ``head`` prints several files) and whose ``path`` and
``section`` are the relative path; the file's own spans follow with the same ``path`` (EPUB chapters:
``book.epub#chapter.xhtml``), and ``section`` is the file's own section (Markdown heading, PDF outline
entry) or else the relative path. Every file's text ends with a newline.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from dataclasses import dataclass
from typing import Iterator

import pathspec

from ..errors import InputError
from .base import ReadReport, Span
from ..formatting import human_bytes, one_line
from .common import LOG, display_path, warn
from .epub import EpubDocument
from .pdf import PdfDocument
from .sniff import SNIFF_BYTES, binary_reason, has_binary_extension, is_pdf, is_zip, text_kind, zip_is_epub
from .text import TextDocument

DEFAULT_MAX_BYTES = 200 * 1024 * 1024
DEFAULT_MAX_FILE_BYTES = 5 * 1024 * 1024
ALWAYS_SKIPPED = frozenset({".git", ".hg", ".svn"})
IGNORE_FILES = (".gitignore", ".infllmignore")
MAX_IGNORE_BYTES = 1024 * 1024
"""Only the first MiB of each ignore file is read."""
MAX_IGNORE_RULES = 5_000
"""Rules after the first 5,000 lines of one ignore file are dropped with a warning."""
MAX_TOTAL_IGNORE_RULES = 10_000
"""Ignore rules after the first 10,000 of the whole tree are dropped with a warning (every file is
checked against the rules of all its parent directories; compiling 10,000 rules takes about a second)."""
MAX_PATTERN_CHARS = 1024
"""A longer ignore pattern is dropped with a warning."""
MAX_PATTERN_WILDCARDS = 3
"""An ignore pattern with more runs of ``*`` than this is dropped with a warning: glob matching is
backtracking regular-expression matching whose cost grows as (name length) ** (runs of ``*``)."""
_STARS = re.compile(r"(?<!\\)\*+")


@dataclass(frozen=True)
class FileEntry:
    """A file the directory reader will read: relative POSIX path as displayed (:func:`display_path`),
    the path to open (undecodable bytes kept), size, reader kind."""

    rel: str
    path: str
    size: int
    kind: str  # "text", "markdown", "rst", "code", "pdf" or "epub"
    link: bool = False  # reached through a symbolic link


def header(rel: str) -> str:
    """The text of the span that introduces file ``rel``."""
    return f"==> {rel} <==\n"


class DirectoryDocument:
    """A directory opened for reading (see the module docstring).

    Parameters
    ----------
    root
        The directory.
    name
        Display name for messages (defaults to ``root``).
    max_bytes
        Limit on the total size of the files to read (default :data:`DEFAULT_MAX_BYTES`).
    max_file_bytes
        Text files larger than this are skipped with a warning.
    password
        Passed to encrypted PDFs found in the tree.
    """

    kind = "directory"

    def __init__(self, root: str | os.PathLike[str], *, name: str | None = None, max_bytes: int | None = None,
                 max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, password: str | None = None,
                 password_origin: str = "--password") -> None:
        self.root = os.fspath(root)
        self.name = name or self.root
        self.max_bytes = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
        self.max_file_bytes = max_file_bytes
        self.password = password
        self.password_origin = password_origin
        self.report = ReadReport()
        self.files: list[FileEntry] = []
        self.ignored: list[str] = []
        self.skip_reasons: dict[str, str] = {}
        self._too_large: list[str] = []
        self._real_root = os.path.realpath(self.root)
        self._seen: dict[tuple[int, int], int] = {}  # (device, inode) -> index in self.files
        self._rule_count = 0
        self._scan()
        self._open_warnings = list(self.report.warnings)
        self._open_skipped = list(self.report.skipped)
        total = sum(entry.size for entry in self.files)
        if total > self.max_bytes:
            raise InputError(
                f"{self.name}: the files to read total {human_bytes(total)}, over the limit of {human_bytes(self.max_bytes)}; "
                "raise it with --max-bytes or exclude files with .gitignore/.infllmignore"
            )
        if not any(entry.size for entry in self.files):
            raise self._nothing_readable()
        self.report.units = len(self.files)

    def _nothing_readable(self) -> InputError:
        skipped, ignored = len(self.report.skipped), len(self.ignored)
        return InputError(f"{self.name}: no readable text files ({skipped + ignored} skipped: "
                          f"{skipped} binary/unreadable, {ignored} ignored)")

    # -- walking -------------------------------------------------------------------------------------
    def _skip(self, rel: str, reason: str, warning: bool = False) -> None:
        rel = display_path(rel)
        self.report.skipped.append(rel)
        self.skip_reasons[rel] = reason
        if warning:
            warn(self.report, f"{self.name}: skipped {rel}: {reason}")
        else:
            LOG.info("%s: skipped %s: %s", self.name, rel, reason)

    def _inside(self, path: str) -> bool:
        """Whether ``path``, links resolved, is inside the directory being read."""
        real = os.path.realpath(path)
        return real == self._real_root or real.startswith(self._real_root.rstrip(os.sep) + os.sep)

    def _read_ignore_file(self, path: str, shown: str) -> list[str]:
        if not os.path.lexists(path):
            return []
        if not self._inside(path):
            warn(self.report, f"{self.name}: {shown} links outside the directory; its ignore rules are not read")
            return []
        try:
            # non-blocking open, then check what was opened: a FIFO would block forever, a device never end
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
        except OSError as exc:
            warn(self.report, f"{self.name}: {shown} unreadable ({one_line(exc.strerror or exc)}); its ignore rules are not read")
            return []
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                warn(self.report, f"{self.name}: {shown} is not a regular file; its ignore rules are not read")
                return []
            try:
                data = fh.read(MAX_IGNORE_BYTES + 1)
            except OSError as exc:
                warn(self.report, f"{self.name}: {shown} unreadable ({one_line(exc.strerror or exc)}); its ignore rules are not read")
                return []
        if len(data) > MAX_IGNORE_BYTES:
            warn(self.report, f"{self.name}: {shown} is over {human_bytes(MAX_IGNORE_BYTES)}; only its first {human_bytes(MAX_IGNORE_BYTES)} is used")
            data = data[:MAX_IGNORE_BYTES]
        lines = data.decode("utf-8", "surrogateescape").splitlines()
        if len(lines) > MAX_IGNORE_RULES:
            warn(self.report, f"{self.name}: {shown} has {len(lines):,} lines; only the first {MAX_IGNORE_RULES:,} are used")
            lines = lines[:MAX_IGNORE_RULES]
        room = MAX_TOTAL_IGNORE_RULES - self._rule_count
        if len(lines) > room:
            warn(self.report, f"{self.name}: {shown}: over {MAX_TOTAL_IGNORE_RULES:,} ignore rules in the whole tree; "
                              f"{len(lines) - max(room, 0):,} of its lines are not used")
            lines = lines[:max(room, 0)]
        self._rule_count += len(lines)
        kept, dropped = [], []
        for line in lines:
            if len(line) > MAX_PATTERN_CHARS or len(_STARS.findall(line)) > MAX_PATTERN_WILDCARDS:
                dropped.append(line)
            else:
                kept.append(line)
        if dropped:
            warn(self.report, f"{self.name}: {shown}: ignoring {len(dropped)} pattern(s) over the limits of "
                              f"{MAX_PATTERN_CHARS} characters and {MAX_PATTERN_WILDCARDS} runs of '*' "
                              f"(first: {display_path(dropped[0][:80])!r})")
        return kept

    def _load_rules(self, abs_dir: str, rel_dir: str) -> pathspec.GitIgnoreSpec | None:
        lines: list[str] = []
        sources = [(os.path.join(abs_dir, ".git", "info", "exclude"), ".git/info/exclude")] if not rel_dir else []
        sources += [(os.path.join(abs_dir, name), f"{rel_dir}/{name}" if rel_dir else name) for name in IGNORE_FILES]
        for source, shown in sources:
            lines += self._read_ignore_file(source, display_path(shown))
        if not lines:
            return None
        try:
            return pathspec.GitIgnoreSpec.from_lines(lines)
        except Exception:  # a malformed pattern: keep the others
            good = []
            for line in lines:
                try:
                    pathspec.GitIgnoreSpec.from_lines([line])
                    good.append(line)
                except Exception:
                    warn(self.report, f"{self.name}: ignoring invalid pattern {display_path(line)!r} in {display_path(rel_dir or '.')}/.gitignore")
            return pathspec.GitIgnoreSpec.from_lines(good)

    @staticmethod
    def _is_ignored(rel: str, is_dir: bool, rules: list[tuple[str, pathspec.GitIgnoreSpec]]) -> bool:
        for base, spec in reversed(rules):
            sub = rel[len(base) + 1 :] if base else rel
            result = spec.check_file(sub + "/" if is_dir else sub)
            if result.include is not None:
                return bool(result.include)
        return False

    def _scan(self) -> None:
        pending: list[Iterator[tuple[str, str, bool, bool, list]]] = [self._entries("", self.root, [])]
        while pending:
            try:
                rel, path, is_dir, is_link, rules = next(pending[-1])
            except StopIteration:
                pending.pop()
                continue
            if self._is_ignored(rel, is_dir, rules):
                self.ignored.append(display_path(rel + "/" if is_dir else rel))
            elif is_dir:
                pending.append(self._entries(rel, path, rules))
            elif is_link and not self._inside(path):
                self._skip(rel, f"symbolic link to {display_path(os.readlink(path) if os.path.islink(path) else path)}, "
                                "outside the directory (not followed)", warning=True)
            elif is_link and os.path.isdir(path):
                self._skip(rel, "symbolic link to a directory (not followed)")
            else:
                self._classify(rel, path, is_link)

    def _entries(self, rel_dir: str, abs_dir: str, rules: list) -> Iterator[tuple[str, str, bool, bool, list]]:
        try:
            with os.scandir(abs_dir) as it:
                entries = list(it)
        except OSError as exc:
            if not rel_dir:
                raise InputError(f"cannot read directory {self.name}: {one_line(exc.strerror or exc)}") from None
            self._skip(rel_dir + "/", f"unreadable directory ({one_line(exc.strerror or exc)})", warning=True)
            return
        spec = self._load_rules(abs_dir, rel_dir)
        rules = rules + [(rel_dir, spec)] if spec is not None else rules
        keyed = []
        for entry in entries:
            if entry.name in ALWAYS_SKIPPED:
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
                is_link = entry.is_symlink()
            except OSError:
                is_dir = is_link = False
            keyed.append((os.fsencode(entry.name) + (b"/" if is_dir else b""), entry, is_dir, is_link))
        keyed.sort(key=lambda item: item[0])
        for key, entry, is_dir, is_link in keyed:
            name = os.fsdecode(key.rstrip(b"/"))  # undecodable bytes kept as surrogates; shown escaped
            rel = f"{rel_dir}/{name}" if rel_dir else name
            yield rel, entry.path, is_dir, is_link, rules

    def _classify(self, rel: str, path: str, is_link: bool = False) -> None:
        try:
            info = os.stat(path)
        except OSError as exc:
            self._skip(rel, f"unreadable ({one_line(exc.strerror or exc)})", warning=True)
            return
        if not stat.S_ISREG(info.st_mode):
            self._skip(rel, "not a regular file")
            return
        same = self._seen.get((info.st_dev, info.st_ino))
        if same is not None:
            first = self.files[same]
            if is_link or not first.link:
                self._skip(rel, f"the same file as {first.rel} (read once)")
                return
            # a link came first in the order: read the file under its real name instead
            self.files.pop(same)
            self._seen = {key: i - (i > same) for key, i in self._seen.items() if i != same}
            self._skip(first.rel, f"the same file as {display_path(rel)} (read once)")
        if has_binary_extension(rel):
            self._skip(rel, "binary (file extension)")
            return
        head = b""
        if info.st_size:
            try:
                with open(path, "rb") as fh:
                    head = fh.read(SNIFF_BYTES)
            except OSError as exc:
                self._skip(rel, f"unreadable ({one_line(exc.strerror or exc)})", warning=True)
                return
        if is_pdf(head):
            kind = "pdf"
        elif is_zip(head):
            if not (rel.lower().endswith(".epub") or zip_is_epub(path)):
                self._skip(rel, "binary (zip archive)")
                return
            kind = "epub"
        else:
            reason = binary_reason(head)
            if reason:
                self._skip(rel, f"binary ({reason})")
                return
            kind = text_kind(rel)
            kind = "code" if kind == "html" else kind
            if info.st_size > self.max_file_bytes:
                self._skip(rel, f"{human_bytes(info.st_size)}, over the {human_bytes(self.max_file_bytes)} limit for one file", warning=True)
                return
        self._seen[(info.st_dev, info.st_ino)] = len(self.files)
        self.files.append(FileEntry(display_path(rel), path, info.st_size, kind, is_link))

    # -- reading -------------------------------------------------------------------------------------
    def _open(self, entry: FileEntry) -> TextDocument | PdfDocument | EpubDocument:
        if entry.kind == "pdf":
            return PdfDocument(entry.path, name=entry.rel, span_path=entry.rel, password=self.password,
                               password_origin=self.password_origin)
        if entry.kind == "epub":
            return EpubDocument(entry.path, name=entry.rel, span_prefix=entry.rel)
        return TextDocument.open(entry.path, name=entry.rel, kind=entry.kind, span_path=entry.rel, allow_empty=True)

    def spans(self) -> Iterator[Span]:
        """Yield, for each file in order, its header span then its spans (see the module docstring)."""
        self.report.__init__(units=len(self.files), skipped=list(self._open_skipped),  # type: ignore[misc]
                             warnings=list(self._open_warnings))
        content = 0
        for entry in self.files:
            try:
                doc = self._open(entry)
            except (InputError, OSError) as exc:
                self._skip(entry.rel, one_line(exc), warning=True)
                self.report.units -= 1  # counted as skipped, not as read
                continue
            head = header(entry.rel)
            self.report.chars += len(head)
            yield Span(head, entry.rel, None, None, None, entry.rel)
            last: Span | None = None
            try:
                for span in doc.spans():
                    if last is not None:
                        yield last
                    last = dataclasses.replace(span, section=span.section or entry.rel)
                    self.report.chars += len(span.text)
                    content += len(span.text.strip())
            except (InputError, OSError) as exc:
                warn(self.report, f"{self.name}: {entry.rel}: {one_line(exc)}")
            if last is not None:
                yield last if last.text.endswith("\n") else dataclasses.replace(last, text=last.text + "\n")
            self.report.warnings.extend(doc.report.warnings)  # already logged by the file's reader
            if not doc.report.chars:
                self.report.units_without_text += 1
        if not content:
            raise self._nothing_readable()
