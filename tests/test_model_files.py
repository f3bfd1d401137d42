"""Unit tests of the model-folder checks: safetensors headers, weight files and index files, config.json,
custom code detection, model names; and a scan of the code base for unpickling."""

from __future__ import annotations

import ast
import json
import struct
from pathlib import Path

import pytest

from infllm_cli.errors import ModelError, UnsafeModelError, UsageError
from infllm_cli.model_files import LoadPolicy, inspect_config, locate_model, read_config_json
from infllm_cli.model_weights import find_weights
from infllm_cli.safetensors_header import MAX_HEADER_BYTES, read_header
from infllm_cli.settings import resolve_model

REPO = Path(__file__).resolve().parents[1]


def write_safetensors(path: Path, header: dict, data: bytes = b"", *, length: int | None = None) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def f32(shape: list[int], begin: int) -> dict:
    size = 4
    for d in shape:
        size *= d
    return {"dtype": "F32", "shape": shape, "data_offsets": [begin, begin + size]}


def test_a_valid_header(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "a.safetensors", {"__metadata__": {"format": "pt"}, "a": f32([2, 3], 0), "b": f32([4], 24)}, bytes(40))
    tensors = read_header(path)
    assert set(tensors) == {"a", "b"} and tensors["a"].shape == (2, 3) and tensors["b"].numel == 4


@pytest.mark.parametrize(
    ("header", "data", "length", "says"),
    [
        ({"a": f32([2], 0)}, bytes(8), 10**9, "exceeds the file"),
        ({"a": f32([2], 0)}, bytes(8), 2**64 - 1, "exceeds the file"),
        ([1, 2], b"", None, "not a JSON object"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(4), None, "outside"),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8), None, "does not match"),
        ({"a": {"dtype": "Q9", "shape": [2], "data_offsets": [0, 8]}}, bytes(8), None, "unknown dtype"),
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8), None, "invalid shape"),
        ({"a": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 8]}}, bytes(8), None, "invalid shape"),
        ({"a": f32([2], 0), "b": f32([2], 4)}, bytes(12), None, "overlap"),
        ({"a": f32([2], 0), "b": f32([2], 12)}, bytes(20), None, "a gap"),
        ({"a": f32([2], 0)}, bytes(16), None, "cover 8 of the 16"),
        ({"a": f32([10**6, 10**6], 0)}, bytes(8), None, "outside"),
        ({"__metadata__": {"x": 1}}, b"", None, "__metadata__"),
    ],
)
def test_bad_headers(tmp_path: Path, header: object, data: bytes, length: int | None, says: str) -> None:
    path = write_safetensors(tmp_path / "a.safetensors", header, data, length=length)  # type: ignore[arg-type]
    with pytest.raises(ModelError, match=says):
        read_header(path)


def test_short_random_and_oversized_headers(tmp_path: Path) -> None:
    (tmp_path / "short.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(ModelError, match="shorter than the 8-byte"):
        read_header(tmp_path / "short.safetensors")
    (tmp_path / "text.safetensors").write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{]")
    with pytest.raises(ModelError, match="not JSON"):
        read_header(tmp_path / "text.safetensors")
    big = tmp_path / "big.safetensors"
    with open(big, "wb") as fh:  # a header length within the (sparse) file but over the limit
        fh.write(struct.pack("<Q", MAX_HEADER_BYTES + 1))
        fh.truncate(MAX_HEADER_BYTES + 16)
    with pytest.raises(ModelError, match="over the"):
        read_header(big)


def folder_with_config(tmp_path: Path, **config: object) -> Path:
    folder = tmp_path / "m"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", **config}))
    return folder


def test_index_shards_must_be_plain_files_in_the_folder(tmp_path: Path) -> None:
    folder = folder_with_config(tmp_path)
    outside = write_safetensors(tmp_path / "outside.safetensors", {"a": f32([2], 0)}, bytes(8))
    for shard in ["../outside.safetensors", str(outside), "sub/x.safetensors", ".."]:
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": shard}}))
        with pytest.raises(ModelError, match="not a plain file name"):
            find_weights(folder, LoadPolicy())
    write_safetensors(folder / "s1.safetensors", {"a": f32([2], 0)}, bytes(8))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors"}}))
    with pytest.raises(ModelError, match="'b' is not in s1.safetensors"):
        find_weights(folder, LoadPolicy())
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "s1.safetensors"}}))
    assert set(find_weights(folder, LoadPolicy()).tensors) == {"a"}


def test_pickle_only_folders(tmp_path: Path) -> None:
    folder = folder_with_config(tmp_path)
    (folder / "pytorch_model.bin").write_bytes(b"not even read")
    with pytest.raises(UnsafeModelError, match="pickle checkpoint .*--allow-pickle"):
        find_weights(folder, LoadPolicy())
    assert find_weights(folder, LoadPolicy(allow_pickle=True)).format == "pickle"
    (folder / "pytorch_model.bin").unlink()
    (folder / "consolidated.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="neither model.safetensors"):
        find_weights(folder, LoadPolicy())


def test_config_json_faults(tmp_path: Path) -> None:
    folder = folder_with_config(tmp_path)
    for content, says in [("{", "not valid JSON"), ('"llama"', "not a JSON object"), ("{}", "no model_type"),
                          ('{"model_type": 3}', "model_type must be a non-empty string"), (b"\xff\xfe", "not UTF-8")]:
        path = folder / "config.json"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(ModelError, match=says):
            read_config_json(folder)


def test_custom_code_detection(tmp_path: Path) -> None:
    folder = folder_with_config(tmp_path, model_type="my_arch", auto_map={"AutoConfig": "x.C"})
    with pytest.raises(UnsafeModelError, match="--trust-remote-code"):
        inspect_config(str(folder))
    with pytest.raises(ModelError, match="unsupported architecture 'my_arch'"):  # trusted, but still not supported
        inspect_config(str(folder), LoadPolicy(trust_remote_code=True))
    folder = folder_with_config(tmp_path, auto_map={"AutoModelForCausalLM": "x.M"})
    assert inspect_config(str(folder))[1]["model_type"] == "llama"  # transformers' own llama; auto_map ignored
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "MyTok", "auto_map": {"AutoTokenizer": ["x.T", None]}}))
    with pytest.raises(UnsafeModelError, match="custom tokenizer class 'MyTok'"):
        inspect_config(str(folder))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "auto_map": {"AutoTokenizer": ["x.T", None]}}))
    inspect_config(str(folder))  # a transformers tokenizer class: the auto_map is not used


def test_model_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match="--model is empty"):
        resolve_model("")
    with pytest.raises(UsageError, match="--model is empty"):
        resolve_model("  ")
    with pytest.raises(ModelError, match="no such model directory"):
        locate_model(str(tmp_path / "missing"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelError, match="not a model directory"):
        locate_model(str(tmp_path / "file"))
    with pytest.raises(ModelError, match="nor a valid Hugging Face model id"):
        locate_model("bad id with spaces")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelError, match="nor in the local Hugging Face cache"):
        locate_model("nobody/nothing")


def test_load_policy_is_safe_by_default() -> None:
    assert LoadPolicy() == LoadPolicy(trust_remote_code=False, allow_pickle=False)
    with pytest.raises(TypeError):
        LoadPolicy(trust_remote_code="yes")  # type: ignore[arg-type]


UNPICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def test_nothing_in_the_code_base_unpickles() -> None:
    """Every torch.load passes weights_only=True; no module imports a pickle-based loader."""
    offenders: list[str] = []
    for root in ("infllm_cli", "kernels", "benchmarks", "tests"):
        for path in sorted((REPO / root).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}"
                if isinstance(node, ast.Import) and any(a.name.split(".")[0] in UNPICKLERS for a in node.names):
                    offenders.append(f"{where} imports an unpickler")
                elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNPICKLERS:
                    offenders.append(f"{where} imports an unpickler")
                elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
                    base = node.func.value
                    if isinstance(base, ast.Name) and base.id == "torch":
                        safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True for k in node.keywords)
                        if not safe:
                            offenders.append(f"{where} calls torch.load without weights_only=True")
                    if isinstance(base, ast.Name) and base.id in ("np", "numpy"):
                        if any(k.arg == "allow_pickle" for k in node.keywords):
                            offenders.append(f"{where} calls numpy.load with allow_pickle")
    assert not offenders, "\n".join(offenders)


def test_every_transformers_load_is_local_and_names_its_trust() -> None:
    """Each from_pretrained/from_config call in the library passes trust_remote_code explicitly (never the
    prompting default), and each from_pretrained passes local_files_only=True."""
    offenders: list[str] = []
    for path in sorted((REPO / "infllm_cli").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("from_pretrained", "from_config"):
                names = {k.arg: k.value for k in node.keywords}
                where = f"{path.relative_to(REPO)}:{node.lineno}"
                if "trust_remote_code" not in names:
                    offenders.append(f"{where}: no trust_remote_code")
                local = names.get("local_files_only")
                if node.func.attr == "from_pretrained" and not (isinstance(local, ast.Constant) and local.value is True):
                    offenders.append(f"{where}: no local_files_only=True")
    assert not offenders, "\n".join(offenders)
