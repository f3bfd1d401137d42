"""Hostile inputs to the document readers, through a real ``infllm`` process (``count`` reads without a model).

Each test builds its input on the fly (big inputs are generated in the test, never committed) and checks
a clean outcome within a time limit well under the harness timeout: exit 0 with a warning naming what was
cut or skipped, or one documented ``error:`` line -- and nothing created or changed outside the input.
"""

from __future__ import annotations

import io
import json
import os
import socket
import stat
import zipfile
import zlib
from pathlib import Path

import pytest

from tests.hostile.harness import assert_clean_failure, assert_clean_success, run_cli, snapshot
from tests.sources.factories import (
    CONTAINER, deflated_repeat, handwritten_pdf, make_epub, reportlab_pdf, text_stream, write_tree, xhtml,
)

FAST = 60.0  # every hostile input must finish well under the harness timeout


def count(*args, **kwargs):
    return run_cli("count", *args, "--json", **kwargs)


def counted(outcome) -> dict:
    assert_clean_success(outcome)
    assert outcome.seconds < FAST, outcome.seconds
    return json.loads(outcome.out)


def no_invalid_utf8(outcome) -> None:
    outcome.stdout.decode("utf-8")
    outcome.stderr.decode("utf-8")


# -- 1. symbolic links ---------------------------------------------------------------------------------
def test_link_leaving_the_directory_is_skipped_and_counted(tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("TOP SECRET " * 100)
    root = write_tree(tmp_path / "docs", {"a.txt": "hello\n", "sub/b.txt": "world\n"})
    os.symlink(outside, root / "leak.txt")
    os.symlink("/etc/passwd", root / "sub" / "passwd")
    os.symlink(root / "a.txt", root / "sub" / "again.txt")  # inside: read once, as a.txt
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    before = snapshot(tmp_path)
    result = count(root)
    data = counted(result)
    assert data["units"] == 2, data  # a.txt, sub/b.txt
    assert data["skipped"] == 5, data  # leak.txt, sub/passwd, sub/again.txt, loop1, loop2
    assert data["characters"] < 100, data  # neither the secret nor /etc/passwd was read
    assert "leak.txt" in result.err and "outside the directory" in result.err
    assert snapshot(tmp_path) == before


# -- 2. charsets ---------------------------------------------------------------------------------------
# (every codec is covered in-process by tests/sources/test_sources_hostile_units.py)
def test_html_with_a_non_text_charset_falls_back_to_detection(tmp_path):
    page = tmp_path / "p.html"
    page.write_bytes('<html><head><meta charset="rot-13"></head><body><p>caf\u00e9 ok</p></body></html>'.encode())
    result = count(page)
    assert counted(result)["characters"] > 0
    assert "ignoring the declared charset" in result.err


def test_stdin_html_and_xml_declaration_with_bad_charset(tmp_path):
    html = b'<?xml version="1.0" encoding="rot-13"?><!DOCTYPE html><html><body><p>piped</p></body></html>'
    result = count("-", stdin=html)
    assert counted(result)["characters"] > 0 and "ignoring the declared charset" in result.err


def test_epub_with_bad_encodings_in_container_package_and_chapters(tmp_path, charset="rot-13"):
    book = tmp_path / "b.epub"
    decl = f'<?xml version="1.0" encoding="{charset}"?>'
    opf = (f'{decl}<package xmlns="http://www.idpf.org/2007/opf" version="2.0"><manifest>'
           '<item id="c" href="c.xhtml" media-type="application/xhtml+xml"/></manifest><spine><itemref idref="c"/></spine></package>')
    with zipfile.ZipFile(book, "w") as zf:
        zf.writestr("mimetype", "application/epub+zip")
        zf.writestr("META-INF/container.xml", CONTAINER.replace('<?xml version="1.0"?>', decl))
        zf.writestr("OEBPS/content.opf", opf)
        zf.writestr("OEBPS/c.xhtml", xhtml("T", "<p>chapter text</p>").replace('encoding="utf-8"', f'encoding="{charset}"'))
    assert counted(count(book))["characters"] > 0


# -- 3. file names that are not UTF-8 ------------------------------------------------------------------
def test_non_utf8_file_name_as_argument_and_in_a_directory(tmp_path):
    name = b"n\xe9\xff.txt"
    path = os.path.join(os.fsencode(tmp_path), name)
    with open(path, "wb") as fh:
        fh.write(b"some text\n")
    result = run_cli("count", path)
    assert_clean_success(result)
    no_invalid_utf8(result)
    assert "n\\xe9\\xff.txt" in result.out
    result = run_cli("count", os.fsencode(tmp_path), "--json", "-v")
    assert counted(result)["units"] == 1
    no_invalid_utf8(result)
    missing = os.path.join(os.fsencode(tmp_path), b"gone\xff.txt")
    result = run_cli("count", missing)
    assert_clean_failure(result, 3, "gone\\xff.txt")
    no_invalid_utf8(result)


# -- 4./6. encrypted PDFs --------------------------------------------------------------------------------
def _aes_pdf(algorithm: str) -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    writer.append(PdfReader(io.BytesIO(reportlab_pdf([["aes protected text"]]))))
    writer.encrypt(user_password="right", owner_password="owner", algorithm=algorithm)
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


@pytest.mark.parametrize("algorithm", ["AES-128", "AES-256"])
def test_aes_pdf_opens_with_the_right_password(tmp_path, algorithm):
    pdf = tmp_path / "aes.pdf"
    pdf.write_bytes(_aes_pdf(algorithm))
    assert counted(count(pdf, "--password", "right"))["characters"] > 0
    assert_clean_failure(count(pdf), 4, "--password")


def test_wrong_password_names_where_it_came_from(tmp_path):
    pdf = tmp_path / "aes.pdf"
    pdf.write_bytes(_aes_pdf("AES-128"))
    line = assert_clean_failure(count(pdf, env={"INFLLM_PDF_PASSWORD": "wrong"}), 4, "wrong password")
    assert "INFLLM_PDF_PASSWORD" in line and "--password" not in line
    line = assert_clean_failure(count(pdf, "--password", "wrong"), 4, "wrong password")
    assert "--password" in line
    assert counted(count(pdf, env={"INFLLM_PDF_PASSWORD": "right"}))["characters"] > 0


# -- 5. directory counts ---------------------------------------------------------------------------------
def test_directory_counts_add_up(tmp_path):
    root = write_tree(tmp_path / "six", {
        "a.txt": "alpha\n", "b.md": "# beta\n", "c.png": b"\x89PNG\r\n\x1a\n", "d.dat": b"x\x00y",
        "e.pdf": b"%PDF-1.4\ngarbage", "f.pdf": b"%PDF-1.7\nmore garbage",
    })
    before = snapshot(tmp_path)
    data = counted(count(root))
    assert (data["units"], data["skipped"]) == (2, 4), data
    assert snapshot(tmp_path) == before
    result = run_cli("count", root)
    assert "2 files" in result.out and "skipped 4 files" in result.out, result.out


# -- 8. resource bounds ----------------------------------------------------------------------------------
def test_pdf_stream_inflating_to_gigabytes_finishes_with_a_warning(tmp_path):
    pdf = tmp_path / "bomb.pdf"
    pages = [zlib.compress(text_stream("first page")),
             deflated_repeat(b"0", 1 << 30),  # 1 GiB of zeros in about 1 MB
             deflated_repeat(b"(Hello world) Tj\n", 256 << 20, head=b"BT /F1 12 Tf 72 720 Td\n", tail=b"ET\n"),
             zlib.compress(text_stream("last page"))]
    pdf.write_bytes(handwritten_pdf(pages, flate=True))
    assert pdf.stat().st_size < 4 << 20
    before = snapshot(tmp_path)
    result = count(pdf)
    assert snapshot(tmp_path) == before
    data = counted(result)
    assert data["characters"] >= len("first page\nlast page\n")
    assert "pages (2, 3)" in result.err or ("page 2" in result.err and "page 3" in result.err), result.err


def test_special_files_as_ignore_files_do_not_hang(tmp_path):
    root = write_tree(tmp_path / "r", {"a.txt": "kept\n", "f/b.txt": "also\n", "s/c.txt": "also\n", "d/e.txt": "also\n"})
    os.mkfifo(root / "f" / ".gitignore")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "s" / ".infllmignore"))
    os.symlink("/dev/zero", root / "d" / ".gitignore")
    os.mkfifo(root / "pipe.txt")  # a FIFO as a document is skipped too
    result = count(root, timeout=FAST)
    data = counted(result)
    assert (data["units"], data["skipped"]) == (4, 4), data  # the pipe and the three ignore files
    assert "not a regular file" in result.err


def test_catastrophic_ignore_patterns_are_dropped_with_a_warning(tmp_path):
    long_names = {("a" * 200 + f"{i}.txt"): "text\n" for i in range(20)}
    root = write_tree(tmp_path / "r", {**long_names, "deep/" + "a" * 200 + "/" + "a" * 200 + ".md": "deep\n",
                                       ".gitignore": "a*a*a*a*a*a*a*a*a*a*a*a*b\n" + "x" * 5000 + "\n*.log\n" + "c*\n" * 20000})
    result = count(root)
    data = counted(result)
    assert data["units"] == 22, data  # 20 long names, the deep file, .gitignore itself
    assert "runs of '*'" in result.err and "20,003 lines; only the first 5,000" in result.err


def test_many_big_ignore_files_are_bounded_in_total(tmp_path):
    rules = "".join(f"c{i}*x\n" for i in range(5000))
    root = write_tree(tmp_path / "r", {f"d{i}/.gitignore": rules for i in range(40)} | {f"d{i}/a.txt": "a\n" for i in range(40)})
    result = count(root)
    assert counted(result)["units"] == 80 and "ignore rules in the whole tree" in result.err


def test_huge_ignore_file_is_read_up_to_its_limit(tmp_path):
    root = write_tree(tmp_path / "r", {"a.txt": "kept\n"})
    with open(root / ".infllmignore", "wb") as fh:
        fh.truncate(64 << 20)  # sparse: 64 MiB of NULs
    result = count(root)
    assert counted(result)["units"] >= 1 and "only its first" in result.err


@pytest.mark.parametrize("case", ["attribute", "comment", "nested", "open-tags", "script"])
def test_hostile_html_is_bounded(tmp_path, case):
    size = 32 << 20
    body = {
        "attribute": b'<a href="' + b"x" * size + b'">link</a><p>after</p>',
        "comment": b"<p>after</p><!-- " + b"x " * (size // 2),
        "nested": b"<p>after</p>" + b"<div>" * (size // 5),
        "open-tags": b"<p>after</p>" + b"<a " * (size // 3),
        "script": b"<p>after</p><script>" + b"var x = 1;\n" * (size // 11),
    }[case]
    page = tmp_path / "p.html"
    page.write_bytes(b"<html><body><p>before</p>" + body)
    result = count(page)
    data = counted(result)
    assert data["characters"] >= len("before"), data
    if case != "script":
        assert "warning:" in result.err, result.err


# -- 9. token ids ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("content, fragment", [
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b"[1, 2, " + str(10**30).encode() + b"]", "token id 2"),
    (b"[1, 2, " + b"9" * 5000 + b"]", "not a JSON array"),
    (b"[5, -1, 3]", "token id 1 is -1"),
    (b"\x00\xff\xfe binary", "not UTF-8"),
    (b'{"ids": [1, 2]}', "got a JSON dict"),
    (b"[1, true, 3]", "token id 1 is true"),
    (b"[1.5, 2]", "token id 0 is 1.5"),
])
def test_bad_token_id_files_are_input_errors(tmp_path, tiny_llama_dir, content, fragment):
    from typer.testing import CliRunner

    from infllm_cli.cli.eval_cmd import eval_app

    path = tmp_path / "ids.json"
    path.write_bytes(content)
    result = CliRunner().invoke(eval_app, ["perplexity", str(path), "--token-ids", "--model", str(tiny_llama_dir), "--device", "cpu"])
    assert result.exit_code == 3, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr


def test_deeply_nested_token_ids_in_a_process(tmp_path, tiny_llama_dir):
    path = tmp_path / "ids.json"
    path.write_bytes(b"[" * 200_000 + b"]" * 200_000)
    result = run_cli("eval", "perplexity", path, "--token-ids", "--model", tiny_llama_dir, "--device", "cpu")
    assert_clean_failure(result, 3, "nested too deeply")
    assert result.seconds < FAST


def test_out_of_vocabulary_token_ids_are_an_input_error(tmp_path, tiny_llama_dir):
    vocab = json.loads((tiny_llama_dir / "config.json").read_text())["vocab_size"]
    path = tmp_path / "ids.json"
    path.write_text(json.dumps([1, 2, 3, vocab + 5, 4]))
    result = run_cli("eval", "perplexity", path, "--token-ids", "--model", tiny_llama_dir, "--device", "cpu")
    assert_clean_failure(result, 3, f"token id 3 is {vocab + 5}, outside the model's vocabulary")


# -- more of the same class ------------------------------------------------------------------------------
def test_epub_zip_bomb_and_escaping_manifest_paths(tmp_path):
    book = tmp_path / "bomb.epub"
    opf = ('<?xml version="1.0"?><package xmlns="http://www.idpf.org/2007/opf" version="2.0"><manifest>'
           '<item id="a" href="../../../../etc/passwd" media-type="application/xhtml+xml"/>'
           '<item id="b" href="/etc/passwd" media-type="application/xhtml+xml"/>'
           '<item id="c" href="big.xhtml" media-type="application/xhtml+xml"/>'
           '<item id="d" href="ok.xhtml" media-type="application/xhtml+xml"/>'
           '</manifest><spine><itemref idref="a"/><itemref idref="b"/><itemref idref="c"/><itemref idref="d"/></spine></package>')
    with zipfile.ZipFile(book, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("mimetype", "application/epub+zip", compress_type=zipfile.ZIP_STORED)
        zf.writestr("META-INF/container.xml", CONTAINER)
        zf.writestr("OEBPS/content.opf", opf)
        zf.writestr("OEBPS/ok.xhtml", xhtml("ok", "<p>the real chapter</p>"))
        with zf.open("OEBPS/big.xhtml", "w", force_zip64=True) as fh:  # 1 GiB of spaces, a few MB zipped
            block = b" " * (1 << 20)
            for _ in range(1024):
                fh.write(block)
    assert book.stat().st_size < 8 << 20
    before = snapshot(tmp_path)
    result = count(book)
    assert snapshot(tmp_path) == before
    data = counted(result)
    assert 0 < data["characters"] < 1000, data
    assert "big.xhtml" in result.err


def test_devices_and_sockets_as_sources(tmp_path):
    assert_clean_failure(run_cli("count", "/dev/zero", timeout=FAST), 3, "binary")
    assert_clean_failure(run_cli("count", "/dev/urandom", timeout=FAST), 3)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "s"))
    assert_clean_failure(run_cli("count", tmp_path / "s", timeout=FAST), 3, "socket")
    assert_clean_failure(run_cli("count", "", timeout=FAST), 3, "empty path")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads chmod 000 files")
def test_unreadable_files_inside_a_directory_are_skipped(tmp_path):
    root = write_tree(tmp_path / "r", {"a.txt": "kept\n", "locked.txt": "secret\n", "closed/x.txt": "x\n"})
    (root / "locked.txt").chmod(0)
    (root / "closed").chmod(0)
    try:
        result = count(root)
        data = counted(result)
        assert (data["units"], data["skipped"]) == (1, 2)
    finally:
        (root / "closed").chmod(stat.S_IRWXU)
        (root / "locked.txt").chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_huge_sparse_text_file_in_a_directory_is_skipped(tmp_path):
    root = write_tree(tmp_path / "r", {"a.txt": "kept\n"})
    with open(root / "huge.txt", "wb") as fh:
        fh.write(b"text\n")
        fh.truncate(8 << 30)  # 8 GiB, sparse
    data = counted(count(root))
    assert (data["units"], data["skipped"]) == (1, 1)
