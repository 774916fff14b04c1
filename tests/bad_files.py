"""A corpus of bad inputs, each with the message fragment and exit code it must produce.

Each builder writes its file(s) under a folder and returns the path to hand to quantkit.
The fragments are exact substrings of the one-line message; every message also names the file.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file


class RunsCode:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def marker_of(folder: Path) -> Path:
    return folder / "PWNED"


@dataclass(frozen=True)
class Bad:
    id: str
    build: Callable[[Path], Path]
    fragment: str
    exit_code: int
    names: str = ""  # the file the message names, relative to the folder ("" -> the path given)


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(4, 4, generator=gen), "b.bias": torch.randn(4, generator=gen), "c.idx": torch.arange(3)}


def _valid_st(folder: Path, name: str = "model.safetensors", seed: int = 0) -> Path:
    save_file(_tensors(seed), str(folder / name), metadata={"format": "pt"})
    return folder / name


def _cut(path: Path, keep: int) -> Path:
    path.write_bytes(path.read_bytes()[:keep])
    return path


def _st_header(folder: Path, header: dict | bytes, data: bytes, *, length: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path = folder / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def _f32(begin: int, end: int, n: int = 2) -> dict:
    return {"dtype": "F32", "shape": [n], "data_offsets": [begin, end]}


def _unsafe_zip(folder: Path) -> Path:
    torch.save({"w": torch.ones(2), "evil": RunsCode(marker_of(folder))}, folder / "model.pth")
    return folder / "model.pth"


def _unsafe_legacy(folder: Path) -> Path:
    torch.save({"w": torch.ones(2), "evil": RunsCode(marker_of(folder))}, folder / "model.pth", _use_new_zipfile_serialization=False)
    return folder / "model.pth"


def _plain_pickle(folder: Path) -> Path:
    (folder / "model.pkl").write_bytes(pickle.dumps({"w": [1.0], "evil": RunsCode(marker_of(folder))}))
    return folder / "model.pkl"


def _sharded(folder: Path, weight_map_edit: Callable[[dict], None] | None = None, *, duplicate: bool = False) -> Path:
    t = _tensors()
    save_file({"a.weight": t["a.weight"]}, str(folder / "model-00001-of-00002.safetensors"), metadata={"format": "pt"})
    second = {"b.bias": t["b.bias"], "c.idx": t["c.idx"]}
    if duplicate:
        second["a.weight"] = t["a.weight"].clone()
    save_file(second, str(folder / "model-00002-of-00002.safetensors"), metadata={"format": "pt"})
    weight_map = {"a.weight": "model-00001-of-00002.safetensors", "b.bias": "model-00002-of-00002.safetensors",
                  "c.idx": "model-00002-of-00002.safetensors"}
    if weight_map_edit:
        weight_map_edit(weight_map)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return folder / "model.safetensors.index.json"


def _missing_shard(folder: Path) -> Path:
    index = _sharded(folder)
    (folder / "model-00002-of-00002.safetensors").unlink()
    return index


def _bin_sharded(folder: Path, *, duplicate: bool = False, missing: bool = False) -> Path:
    t = _tensors()
    torch.save({"a.weight": t["a.weight"]}, folder / "pytorch_model-00001-of-00002.bin")
    second = {"b.bias": t["b.bias"], **({"a.weight": t["a.weight"]} if duplicate else {})}
    torch.save(second, folder / "pytorch_model-00002-of-00002.bin")
    weight_map = {"a.weight": "pytorch_model-00001-of-00002.bin", "b.bias": "pytorch_model-00002-of-00002.bin"}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    if missing:
        (folder / "pytorch_model-00002-of-00002.bin").unlink()
    return folder / "pytorch_model.bin.index.json"


def _write(folder: Path, name: str, data: bytes) -> Path:
    (folder / name).write_bytes(data)
    return folder / name


def _truncated_pth(folder: Path) -> Path:
    torch.save(_tensors(), folder / "model.pth")
    return _cut(folder / "model.pth", 700)


def _legacy_float8(folder: Path) -> Path:
    # torch writes this without complaint but cannot read it back
    torch.save({"w": torch.zeros(3, dtype=torch.float8_e4m3fn)}, folder / "model.pth", _use_new_zipfile_serialization=False)
    return folder / "model.pth"


def _not_a_dir(folder: Path) -> Path:
    (folder / "empty_dir").mkdir()
    (folder / "empty_dir" / "README.md").write_text("no weights here\n")
    return folder / "empty_dir"


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89" + b"\x00" * 40

BAD_INPUTS: list[Bad] = [
    # pickles that would run code: refused before anything in them runs
    Bad("unsafe-pickle-zip", _unsafe_zip, "refused: this pickle cannot be loaded as plain weights", 4),
    Bad("unsafe-pickle-legacy", _unsafe_legacy, "refused: this pickle cannot be loaded as plain weights", 4),
    Bad("plain-python-pickle", _plain_pickle, "a plain Python pickle, not a PyTorch checkpoint: not unpickled", 3),
    # damaged safetensors
    Bad("st-cut-in-header", lambda f: _cut(_valid_st(f), 40), "runs past the end of the file", 3),
    Bad("st-cut-in-data", lambda f: _cut(_valid_st(f), (f / "model.safetensors").stat().st_size - 5), "data truncated: the header needs 104 bytes of tensor data, the file holds 99", 3),
    Bad("st-header-length-beyond-file", lambda f: _st_header(f, {"a": _f32(0, 8)}, b"\0" * 8, length=2**40), "header length 1099511627776 runs past the end of the file", 3),
    Bad("st-header-not-json", lambda f: _st_header(f, b"{this is not json}", b""), "header is not valid JSON (JSONDecodeError)", 3),
    Bad("st-overlapping-offsets", lambda f: _st_header(f, {"a": _f32(0, 8), "b": _f32(4, 12)}, b"\0" * 12), "tensor 'b' overlaps the tensor before it", 3),
    Bad("st-hole-in-buffer", lambda f: _st_header(f, {"a": _f32(0, 8), "b": _f32(16, 24)}, b"\0" * 24), "hole in the data buffer before tensor 'b' (bytes 8..16 unused)", 3),
    Bad("st-offsets-beyond-buffer", lambda f: _st_header(f, {"a": _f32(0, 8), "b": _f32(8, 16)}, b"\0" * 8), "data truncated: the header needs 16 bytes of tensor data, the file holds 8", 3),
    Bad("st-unknown-dtype", lambda f: _st_header(f, {"a": {"dtype": "F7", "shape": [1], "data_offsets": [0, 1]}}, b"\0"), "tensor 'a' has unknown dtype 'F7'", 3),
    Bad("st-garbage-with-suffix", lambda f: _write(f, "model.safetensors", b"hello world, not tensors"), "header length", 3),
    # indexes and shards
    Bad("index-missing-shard", _missing_shard, "shard 'model-00002-of-00002.safetensors' named by the index is missing", 3, "model.safetensors.index.json"),
    Bad("index-maps-to-wrong-shard", lambda f: _sharded(f, lambda m: m.update({"b.bias": "model-00001-of-00002.safetensors"})),
        "the index maps tensor 'b.bias' to model-00001-of-00002.safetensors, which does not hold it", 3, "model.safetensors.index.json"),
    Bad("index-shard-outside-folder", lambda f: _sharded(f, lambda m: m.update({"b.bias": "../x.safetensors"})), "must be a file name beside the index", 3, "model.safetensors.index.json"),
    Bad("index-not-json", lambda f: _write(f, "model.safetensors.index.json", b"{nope"), "index is not valid JSON", 3),
    Bad("two-shards-same-name", lambda f: _sharded(f, duplicate=True),
        "tensor 'a.weight' is stored twice, in model-00001-of-00002.safetensors and model-00002-of-00002.safetensors", 3, "model.safetensors.index.json"),
    Bad("bin-index-missing-shard", lambda f: _bin_sharded(f, missing=True), "shard 'pytorch_model-00002-of-00002.bin' named by the index is missing", 3, "pytorch_model.bin.index.json"),
    Bad("bin-two-shards-same-name", lambda f: _bin_sharded(f, duplicate=True), "tensor 'a.weight' is stored in more than one shard", 3, "pytorch_model.bin.index.json"),
    # not checkpoints
    Bad("text-file", lambda f: _write(f, "notes.txt", b"just some text\n" * 10), "not a checkpoint quantkit can read", 3),
    Bad("image-file", lambda f: _write(f, "picture.png", PNG), "not a checkpoint quantkit can read", 3),
    Bad("empty-file", lambda f: _write(f, "model.pth", b""), "empty file, not a checkpoint", 3),
    Bad("missing-path", lambda f: f / "does-not-exist.pth", "no such file or folder", 3),
    Bad("folder-without-weights", _not_a_dir, "no checkpoint found to read (no weight files)", 3),
    Bad("truncated-pth", _truncated_pth, "cannot read this PyTorch checkpoint", 3),
    Bad("legacy-float8-unreadable", _legacy_float8, "cannot read this PyTorch checkpoint", 3),
    # nothing to convert
    Bad("zero-tensors-safetensors", lambda f: (save_file({}, str(f / "model.safetensors")), f / "model.safetensors")[1], "the checkpoint holds no tensors", 3),
    Bad("zero-tensors-pth", lambda f: (torch.save({"epoch": 3, "step": 10}, f / "model.pth"), f / "model.pth")[1], "the checkpoint holds no tensors (it holds: epoch, step)", 3),
]


def build(bad: Bad, folder: Path) -> tuple[Path, Path]:
    """(the path to pass, the file the message must name)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = bad.build(folder)
    return path, (folder / bad.names if bad.names else path)
