"""Directories and repositories: ignore rules, order, headers, binary files, limits."""

from __future__ import annotations

import os

import pytest

from infllm_cli.errors import InputError
from infllm_cli.sources import DirectoryDocument, open_source

from .factories import make_epub, read_all, reportlab_pdf, write_tree, xhtml

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01" + b"\x00" * 64

REPO = {
    ".gitignore": "build/\n*.log\n!keep.log\n/secret.txt\n",
    ".git/HEAD": "ref: refs/heads/main\n",
    ".git/config": "[core]\n",
    "README.md": "# Project\n\nAuth is handled in src/auth.py.\n",
    "secret.txt": "ignored at the root only\n",
    "a-b.txt": "dash sorts before slash\n",
    "a/x.py": "x = 1\n",
    "a0.txt": "digit zero\n",
    "build/out.txt": "ignored directory\n",
    "logs/debug.log": "ignored by *.log\n",
    "logs/keep.log": "kept by negation\n",
    "docs/secret.txt": "not anchored here, so kept\n",
    "src/.gitignore": "*.tmp\n!important.tmp\ngenerated/\n",
    "src/auth.py": "def login(user):\n    return check(user)\n",
    "src/cache.tmp": "ignored by the nested .gitignore\n",
    "src/important.tmp": "re-included by the nested negation\n",
    "src/generated/big.py": "ignored nested directory\n",
    "src/deep/.gitignore": "!*.log\n",
    "src/deep/trace.log": "re-included deeper down\n",
    "src/legacy.txt": "caf\xe9 na\xefve\n".encode("latin-1"),
    "assets/logo.png": PNG,
    "assets/blob.bin2": b"\x00\x01\x02\x03binary",
    "empty.py": "",
}

EXPECTED = [
    ".gitignore", "README.md", "a-b.txt", "a/x.py", "a0.txt", "docs/secret.txt", "empty.py", "logs/keep.log",
    "src/.gitignore", "src/auth.py", "src/deep/.gitignore", "src/deep/trace.log", "src/important.tmp", "src/legacy.txt",
]


def _files(spans):
    return [s.path for s in spans if s.text.startswith("==> ") and s.line_start is None]


def test_repository_walk_order_ignores_binary_and_headers(tmp_path):
    root = write_tree(tmp_path / "repo", REPO)
    doc = open_source(str(root))
    assert isinstance(doc, DirectoryDocument) and doc.kind == "directory"
    spans = read_all(doc)
    assert _files(spans) == EXPECTED
    assert [f.rel for f in doc.files] == EXPECTED
    assert sorted(EXPECTED, key=lambda p: p.encode()) == EXPECTED
    assert sorted(doc.report.skipped) == ["assets/blob.bin2", "assets/logo.png"]
    assert "binary" in doc.skip_reasons["assets/logo.png"]
    assert set(doc.ignored) >= {"build/", "logs/debug.log", "secret.txt", "src/cache.tmp", "src/generated/"}
    assert not any(s.path.startswith(".git/") for s in spans)
    by_path = {}
    for span in spans:
        by_path.setdefault(span.path, []).append(span)
    header, body = by_path["src/auth.py"]
    assert header.text == "==> src/auth.py <==\n" and header.section == "src/auth.py"
    assert (body.text, body.line_start, body.line_end, body.section) == (
        "def login(user):\n    return check(user)\n", 1, 2, "src/auth.py")
    assert by_path["src/legacy.txt"][1].text == "café naïve\n"
    assert by_path["README.md"][1].section == "Project"
    assert [s.text for s in by_path["empty.py"]] == ["==> empty.py <==\n"]
    assert doc.report.units == len(EXPECTED) and doc.report.units_without_text == 1
    assert doc.report.warnings == []


def test_every_file_text_ends_with_newline(tmp_path):
    root = write_tree(tmp_path / "r", {"a.txt": "no newline", "b.txt": "next\n"})
    spans = read_all(open_source(str(root)))
    assert "".join(s.text for s in spans) == "==> a.txt <==\nno newline\n==> b.txt <==\nnext\n"


def test_infllmignore_and_git_info_exclude(tmp_path):
    root = write_tree(tmp_path / "r", {
        ".gitignore": "*.md\n", ".infllmignore": "!notes.md\ndata/\n", ".git/info/exclude": "local.txt\n",
        "notes.md": "kept\n", "other.md": "ignored\n", "data/x.txt": "ignored\n", "local.txt": "excluded\n", "main.c": "int x;\n"})
    assert _files(read_all(open_source(str(root)))) == [".gitignore", ".infllmignore", "main.c", "notes.md"]


def test_symlinked_directory_is_not_followed(tmp_path):
    root = write_tree(tmp_path / "r", {"real/a.txt": "a\n"})
    os.symlink(root / "real", root / "loop")
    os.symlink(root, root / "real" / "up")
    os.symlink(root / "real" / "a.txt", root / "link.txt")
    doc = open_source(str(root))
    assert _files(read_all(doc)) == ["real/a.txt"]  # the link to it is not read a second time
    assert sorted(doc.report.skipped) == ["link.txt", "loop", "real/up"]
    assert "same file as real/a.txt" in doc.skip_reasons["link.txt"]


def test_pdf_and_epub_inside_a_directory(tmp_path):
    root = write_tree(tmp_path / "papers", {"paper.pdf": reportlab_pdf([["page one"], ["page two"]]), "z.txt": "z\n"})
    make_epub(root / "novel.epub", {"c.xhtml": xhtml("t", "<h1>Chap</h1><p>Story.</p>")}, spine=["c.xhtml"])
    spans = read_all(open_source(str(root)))
    assert [(s.path, s.page, s.text) for s in spans] == [
        ("novel.epub", None, "==> novel.epub <==\n"), ("novel.epub#c.xhtml", None, "Chap\n\nStory.\n"),
        ("paper.pdf", None, "==> paper.pdf <==\n"), ("paper.pdf", 1, "page one\n"), ("paper.pdf", 2, "page two\n"),
        ("z.txt", None, "==> z.txt <==\n"), ("z.txt", None, "z\n")]


def test_directory_with_nothing_readable(tmp_path):
    root = write_tree(tmp_path / "r", {".git/info/exclude": "a.txt\n", "a.txt": "ignored\n", "i.png": PNG, "b.txt": ""})
    with pytest.raises(InputError) as err:
        open_source(str(root))
    msg = str(err.value)
    assert msg.endswith("no readable text files (2 skipped: 1 binary/unreadable, 1 ignored)") and "\n" not in msg
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(InputError, match="no readable text files"):
        open_source(str(empty))


def test_all_ignored_counts_ignored(tmp_path):
    root = write_tree(tmp_path / "r", {".gitignore": "*\n", "a.txt": "x\n"})
    with pytest.raises(InputError, match=r"2 skipped: 0 binary/unreadable, 2 ignored"):
        open_source(str(root))


def test_total_size_limit(tmp_path):
    root = write_tree(tmp_path / "r", {"a.txt": "x" * 600 + "\n", "b.txt": "y" * 600 + "\n"})
    with pytest.raises(InputError) as err:
        open_source(str(root), max_bytes=1000)
    msg = str(err.value)
    assert "--max-bytes" in msg and "1,000 B" in msg and "\n" not in msg
    assert len(read_all(open_source(str(root), max_bytes=2000))) == 4


def test_per_file_limit_skips_with_warning(tmp_path):
    root = write_tree(tmp_path / "r", {"big.txt": "b" * 2000 + "\n", "small.txt": "s\n"})
    doc = DirectoryDocument(root, max_file_bytes=1000)
    assert _files(read_all(doc)) == ["small.txt"]
    assert doc.report.skipped == ["big.txt"]
    assert len(doc.report.warnings) == 1 and "big.txt" in doc.report.warnings[0]


def test_unreadable_pdf_in_directory_is_skipped_with_warning(tmp_path):
    root = write_tree(tmp_path / "r", {"broken.pdf": b"%PDF-1.4\ngarbage", "ok.md": "fine\n"})
    doc = open_source(str(root))
    assert _files(read_all(doc)) == ["ok.md"]
    assert doc.report.skipped == ["broken.pdf"] and "broken.pdf" in doc.report.warnings[0]


def test_undecodable_file_name_is_shown_escaped(tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    (root / os.fsdecode(b"caf\xe9.txt")).write_text("latin-1 name\n")
    spans = read_all(open_source(str(root)))
    assert spans[0].text == "==> caf\\xe9.txt <==\n"
    assert spans[1].text == "latin-1 name\n"
