"""Hostile model folders, through the real CLI in a subprocess: each is refused with one ``error:`` line and
exit 5 (2 for an empty ``--model``), without a traceback, without running anything from the folder, without
prompting on stdin, without the network, and before allocating what the folder's files claim.

Folders are a tiny random Llama (``tests.tiny_models.make_tiny_model``) edited on the fly.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import torch

from tests.hostile.harness import assert_clean_failure, assert_clean_success, run_cli
from tests.tiny_models import make_tiny_model

TRUST_FLAG = "--trust-remote-code"

#: A module that proves it ran by leaving a marker file; loaded as custom config, model or tokenizer code.
CUSTOM_CODE = '''
import pathlib
pathlib.Path({marker!r}).write_text("the model folder's code ran")
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

class CustomConfig(LlamaConfig):
    model_type = "custom_llama"

class CustomModel(LlamaForCausalLM):
    config_class = CustomConfig

class CustomTokenizer(PreTrainedTokenizerFast):
    pass
'''


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("hostile-models") / "llama", "llama")


@pytest.fixture()
def model(base_model: Path, tmp_path: Path) -> Path:
    """A fresh, writable copy of the tiny model for one test to spoil."""
    return Path(shutil.copytree(base_model, tmp_path / "model"))


@pytest.fixture()
def doc(tmp_path: Path) -> Path:
    path = tmp_path / "doc.txt"
    path.write_text("The captain sailed the ship across the sea; the first mate betrayed him.\n")
    return path


def edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@contextmanager
def open_stdin(text: bytes) -> Iterator[int]:
    """A pipe holding ``text`` whose writing end stays open while the child runs: a process that waits for
    more input blocks (and the harness's timeout fails the test) instead of seeing the end of input."""
    read_end, write_end = os.pipe()
    os.write(write_end, text)
    try:
        yield read_end
    finally:
        os.close(read_end)
        os.close(write_end)


# -- 1. remote code ----------------------------------------------------------------------------------------


def add_custom_code(model: Path, marker: Path, where: str) -> None:
    (model / "custom.py").write_text(CUSTOM_CODE.format(marker=str(marker)))
    if where == "model_type":
        edit_json(model / "config.json", model_type="custom_llama",
                  auto_map={"AutoConfig": "custom.CustomConfig", "AutoModelForCausalLM": "custom.CustomModel"})
    elif where == "tokenizer":
        edit_json(model / "tokenizer_config.json", tokenizer_class="CustomTokenizer",
                  auto_map={"AutoTokenizer": ["custom.CustomTokenizer", "custom.CustomTokenizer"]})
    else:  # auto_map over a model_type transformers has: transformers' own classes are used
        edit_json(model / "config.json",
                  auto_map={"AutoConfig": "custom.CustomConfig", "AutoModelForCausalLM": "custom.CustomModel"})


@pytest.mark.parametrize(
    ("command", "where"),
    [("chat", "model_type"), ("chat", "tokenizer"), ("count", "tokenizer"), ("perplexity", "model_type")],
)
def test_remote_code_is_refused_without_a_prompt(model: Path, doc: Path, tmp_path: Path, command: str, where: str) -> None:
    marker = tmp_path / "MARKER"
    add_custom_code(model, marker, where)
    args = ["eval", "perplexity", doc] if command == "perplexity" else [command, doc]
    with open_stdin(b"y\n") as stdin:  # the answer transformers' "trust remote code? [y/N]" prompt would read
        outcome = run_cli(*args, "-m", model, stdin=stdin, timeout=90)
    line = assert_clean_failure(outcome, 5, TRUST_FLAG)
    assert "custom" in line.lower()
    assert "[y/N]" not in outcome.err
    assert not marker.exists(), "the model folder's code ran"


def test_auto_map_on_a_known_architecture_runs_no_code(model: Path, doc: Path, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    add_custom_code(model, marker, "known_type")
    outcome = run_cli("ask", doc, "Who?", "-m", model, "--max-new-tokens", "2", stdin=b"y\n", timeout=90)
    assert_clean_success(outcome)
    assert "auto_map" in outcome.err and "ignored" in outcome.err
    assert not marker.exists(), "the model folder's code ran"


# -- 2. pickle weights -------------------------------------------------------------------------------------


def to_pickle(model: Path, name: str, extra: object = None) -> None:
    from safetensors.torch import load_file

    state = load_file(model / "model.safetensors")
    if extra is not None:
        state["extra"] = extra
    (model / "model.safetensors").unlink()
    torch.save(state, model / name)


class _Payload:
    """Unpickling this runs code: it writes the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.write_text, (self.marker, "unpickled"))


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "last.ckpt"])
def test_pickle_weights_are_refused(model: Path, doc: Path, tmp_path: Path, name: str) -> None:
    marker = tmp_path / "MARKER"
    to_pickle(model, name, _Payload(marker))
    line = assert_clean_failure(run_cli("ask", doc, "Who?", "-m", model), 5, "--allow-pickle")
    assert "pickle" in line and name in line
    assert not marker.exists()


def test_allow_pickle_loads_plain_tensors_but_not_code(model: Path, doc: Path, tmp_path: Path) -> None:
    to_pickle(model, "pytorch_model.bin")
    assert_clean_success(run_cli("ask", doc, "Who?", "-m", model, "--allow-pickle", "--max-new-tokens", "2"))
    marker = tmp_path / "MARKER"
    to_pickle_again = model / "pytorch_model.bin"
    state = torch.load(to_pickle_again, weights_only=True)
    state["extra"] = _Payload(marker)
    torch.save(state, to_pickle_again)
    assert_clean_failure(run_cli("ask", doc, "Who?", "-m", model, "--allow-pickle"), 5, "weights_only")
    assert not marker.exists()


# -- 3. broken weights, configs that do not match them, models that cannot fit ------------------------------


def spoil_safetensors(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "random":
        path.write_bytes(bytes((i * 151 + 7) % 256 for i in range(4096)))
    elif how == "huge-header":
        path.write_bytes(struct.pack("<Q", 2**62) + b'{"a": 1}')
    elif how == "header-past-data":
        header = json.loads(data[8 : 8 + struct.unpack("<Q", data[:8])[0]])
        name = next(k for k in header if k != "__metadata__")
        header[name]["data_offsets"][1] += 10**12
        raw = json.dumps(header).encode()
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + struct.unpack("<Q", data[:8])[0] :])


@pytest.mark.parametrize("how", ["truncated", "random", "huge-header", "header-past-data"])
def test_broken_safetensors(model: Path, doc: Path, how: str) -> None:
    spoil_safetensors(model / "model.safetensors", how)
    outcome = run_cli("ask", doc, "Who?", "-m", model, timeout=60)
    assert_clean_failure(outcome, 5, "not a valid safetensors file")


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"intermediate_size": 128}, "does not match the weights"),
        ({"hidden_size": 10**7, "head_dim": None}, "does not match the weights"),
        ({"num_hidden_layers": 10**6}, "layer"),
        ({"num_hidden_layers": 3}, "does not match the weights"),
    ],
)
def test_config_that_does_not_match_the_weights(model: Path, doc: Path, changes: dict, says: str) -> None:
    edit_json(model / "config.json", **changes)
    start = time.monotonic()
    outcome = run_cli("ask", doc, "Who?", "-m", model, timeout=60)
    assert_clean_failure(outcome, 5, says)
    assert time.monotonic() - start < 60
    assert "LOAD REPORT" not in outcome.err and "MISMATCH" not in outcome.err


def test_model_too_big_for_memory_is_refused_before_loading(model: Path, doc: Path) -> None:
    """Consistent config and (sparse) weights of 4.3 billion parameters: 17 GiB as float32, over the
    child's 8 GiB address space; refused from the headers, nothing allocated."""
    import transformers

    edit_json(model / "config.json", vocab_size=2**20, hidden_size=4096, intermediate_size=64, num_hidden_layers=1,
              num_attention_heads=4, num_key_value_heads=4, head_dim=16, tie_word_embeddings=True)
    config = transformers.AutoConfig.from_pretrained(model)
    with torch.device("meta"):
        meta = transformers.AutoModelForCausalLM.from_config(config)
    header, offset = {}, 0
    for name, tensor in meta.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied to the embedding
        size = tensor.numel() * 2
        header[name] = {"dtype": "BF16", "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path = model / "model.safetensors"
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        fh.truncate(8 + len(raw) + offset)  # sparse: a few KiB on disk
    outcome = run_cli("ask", doc, "Who?", "-m", model, "--dtype", "float32", "--device", "cpu", timeout=60)
    assert_clean_failure(outcome, 5, "does not fit")


def test_extra_and_missing_tensors(model: Path, doc: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(model / "model.safetensors")
    save_file({**state, "model.unused.weight": torch.zeros(3)}, model / "model.safetensors", metadata={"format": "pt"})
    outcome = run_cli("ask", doc, "Who?", "-m", model, "--max-new-tokens", "2")
    assert_clean_success(outcome)
    assert "LOAD REPORT" not in outcome.err and "UNEXPECTED" not in outcome.err  # transformers' report stays off stderr
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, model / "model.safetensors", metadata={"format": "pt"})
    assert_clean_failure(run_cli("ask", doc, "Who?", "-m", model), 5, "lack")


# -- 4. the model name and config.json --------------------------------------------------------------------


def test_empty_model_option_is_a_usage_error(doc: Path) -> None:
    assert_clean_failure(run_cli("ask", doc, "Who?", "--model", ""), 2, "--model is empty")


@pytest.mark.parametrize(
    ("content", "says"),
    [("{not json", "not valid JSON"), ('{"hidden_size": 64}', "no model_type"), ("[1, 2]", "not a JSON object")],
)
def test_broken_config_json_says_what_is_wrong(model: Path, doc: Path, content: str, says: str) -> None:
    (model / "config.json").write_text(content)
    line = assert_clean_failure(run_cli("ask", doc, "Who?", "-m", model), 5, says)
    assert "config.json" in line and "neither" not in line


# -- 5. no network -------------------------------------------------------------------------------------------


def test_uncached_hub_id_fails_at_once_without_the_network(doc: Path, tmp_path: Path) -> None:
    home = tmp_path / "hf-home"
    home.mkdir()
    start = time.monotonic()
    outcome = run_cli("ask", doc, "Who?", "-m", "nobody/nothing", "--quiet", env={"HF_HOME": str(home)},
                      unset=("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"), timeout=60)
    elapsed = time.monotonic() - start
    assert_clean_failure(outcome, 5, "local Hugging Face cache")
    assert "Retry" not in outcome.err and "huggingface.co" not in outcome.err
    assert elapsed < 10, f"took {elapsed:.1f} s"
    assert not any(home.rglob("*")), "nothing may be written to the cache"
