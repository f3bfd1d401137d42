"""The models committed under tests/models carry a model card (README.md) whose file table gives each
file's sha256: the card must describe the weights that are actually committed (a retrained model with a
stale card would make every figure quoted from it unverifiable)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

MODELS = sorted(p.parent for p in (Path(__file__).resolve().parent / "models").glob("*/README.md"))
ROW = re.compile(r"^\| `([^`]+)` \| `([0-9a-f]{64})` \|$", re.MULTILINE)


@pytest.mark.parametrize("folder", MODELS, ids=[p.name for p in MODELS])
def test_the_card_lists_every_file_with_its_sha256(folder: Path):
    listed = dict(ROW.findall((folder / "README.md").read_text(encoding="utf-8")))
    present = {p.name for p in folder.iterdir() if p.is_file() and p.name != "README.md"}
    assert set(listed) == present, f"{folder.name}: card lists {sorted(listed)}, folder holds {sorted(present)}"
    for name, digest in listed.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, f"{folder.name}/{name}"


def test_there_are_cards_to_check():
    assert {"recall-byte256", "recall-lines256", "recall-keys256"} <= {p.name for p in MODELS}
