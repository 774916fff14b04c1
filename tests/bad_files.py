"""A corpus of bad inputs, each with the message fragment and exit code it must produce.

Each builder writes its file(s) under a folder and returns the path to hand to quantkit.
The fragments are exact substrings of the one-line message; every message also names the file.
"""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import struct
import sys
import warnings
import zipfile
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


def _save(folder: Path, obj: object, name: str = "model.pth") -> Path:
    torch.save(obj, folder / name)
    return folder / name


def _repacked(folder: Path, method: int = zipfile.ZIP_DEFLATED) -> Path:
    """A .pth re-packed by a zip tool: every member deflated."""
    src = _save(folder, _tensors(), "orig.pth")
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(folder / "model.pth", "w", method) as new:
        for info in old.infolist():
            new.writestr(info.filename, old.read(info.filename))
    src.unlink()
    return folder / "model.pth"


def _pickle_bomb(folder: Path) -> Path:
    """A small zip whose data.pkl inflates to 20 MB (one long string beside the weights)."""
    src = _save(folder, {"w": torch.ones(2), "pad": "x" * 20_000_000}, "orig.pth")
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(folder / "model.pth", "w") as new:
        for info in old.infolist():
            method = zipfile.ZIP_DEFLATED if info.filename.endswith("data.pkl") else zipfile.ZIP_STORED
            new.writestr(info.filename, old.read(info.filename), compress_type=method)
    src.unlink()
    return folder / "model.pth"


def _short_record(folder: Path) -> Path:
    """A zip rebuilt with a tensor's record cut to half the bytes its pickle claims (CRCs all valid)."""
    src = _save(folder, {"w": torch.ones(4)}, "orig.pth")
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(folder / "model.pth", "w") as new:
        for info in old.infolist():
            data = old.read(info.filename)
            new.writestr(info.filename, data[: len(data) // 2] if info.filename.endswith("/data/0") else data)
    src.unlink()
    return folder / "model.pth"


def flip_data_byte(path: Path) -> Path:
    """Flip one byte inside the largest tensor record of a .pth (its CRC-32 then fails)."""
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    raw[info.header_offset + 30 + name_len + extra_len + info.file_size // 2] ^= 0x10
    path.write_bytes(bytes(raw))
    return path


def _deep(folder: Path, depth: int = 5000) -> Path:
    root = node = {}
    for _ in range(depth):
        node["x"] = {}
        node = node["x"]
    node["w"] = torch.ones(2)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(depth * 4 + 1000)
    try:
        return _save(folder, root)
    finally:
        sys.setrecursionlimit(limit)


def _self_referencing(folder: Path) -> Path:
    sd: dict = {"w": torch.ones(2)}
    sd["again"] = sd
    return _save(folder, sd)


def _dag(folder: Path, levels: int = 40) -> Path:
    node: dict = {"w": torch.ones(1)}
    for _ in range(levels):
        node = {"a": node, "b": node}
    return _save(folder, node)


def _quantized(folder: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torch.quantize_per_tensor(torch.ones(4), 0.1, 0, torch.qint8)
    return _save(folder, {"w": torch.ones(2), "q": q})


def _lightning_with_path(folder: Path) -> Path:
    return _save(folder, {"state_dict": {"w": torch.ones(2)}, "hyper_parameters": {"data_dir": pathlib.PosixPath("/data")}}, "model.ckpt")


def _hf_folder(folder: Path, config: bytes) -> Path:
    _valid_st(folder)
    (folder / "config.json").write_bytes(config)
    return folder


def _st_with_aliases(folder: Path, aliases: dict) -> Path:
    save_file(_tensors(), str(folder / "model.safetensors"), metadata={"format": "pt", "quantkit.aliases": json.dumps(aliases)})
    return folder / "model.safetensors"


BIG_INT = "1" * 5001


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
    # issue 11: pickles and zips that used to give wrong data, a traceback or a hang
    Bad("pth-deflated-records", _repacked, "zip member 'orig/data.pkl' is compressed (method 8)", 3),
    Bad("pth-data-pkl-inflate-bomb", _pickle_bomb, "zip member 'orig/data.pkl' is compressed (method 8)", 3),
    Bad("pth-int-and-str-key-one-name", lambda f: _save(f, {1: torch.ones(2), "1": torch.zeros(2)}),
        "entries [1] and ['1'] both give the tensor name '1'", 3),
    Bad("pth-nested-and-dotted-one-name", lambda f: _save(f, {"a": {"b": torch.ones(2)}, "a.b": torch.zeros(2)}),
        "entries ['a']['b'] and ['a.b'] both give the tensor name 'a.b'", 3),
    Bad("pth-5000-deep", _deep, "is nested more than 100 levels deep", 3),
    Bad("pth-self-referencing-dict", _self_referencing, "entry ['again'] contains itself (a reference cycle)", 3),
    Bad("pth-dag-2-to-the-40-paths", _dag, "entries to walk (shared sub-dicts?): refused", 3),
    Bad("pth-complex-tensor", lambda f: _save(f, {"w": torch.ones(2, dtype=torch.complex64)}),
        "tensor 'w' has dtype torch.complex64, which safetensors cannot hold", 3),
    Bad("pth-sparse-tensor", lambda f: _save(f, {"w": torch.ones(2, 2).to_sparse()}), "tensor 'w' is torch.sparse_coo, which quantkit does not convert", 3),
    Bad("pth-quantized-tensor", _quantized, "holds quantized tensors (torch.qint8 / quint8 / qint32)", 3),
    Bad("pth-float8-e4m3fnuz", lambda f: _save(f, {"w": torch.zeros(2, dtype=torch.float8_e4m3fnuz)}),
        "tensor 'w' has dtype torch.float8_e4m3fnuz, which safetensors cannot hold", 3),
    Bad("pth-stride-0-64-gib", lambda f: _save(f, {"w": torch.ones(1).expand(2**34)}), "tensor 'w' expands 4 stored bytes to", 3),
    Bad("pth-record-shorter-than-claimed", _short_record, "tensor 'w' claims a storage of 16 bytes but its record 'orig/data/0' holds 8", 3),
    Bad("pth-tensor-named-metadata", lambda f: _save(f, {"__metadata__": torch.ones(2), "w": torch.ones(2)}),
        "a tensor is named '__metadata__', which is the name of safetensors' metadata block", 3),
    Bad("lightning-pathlib-hparams", _lightning_with_path,
        "pass allow_globals=('pathlib.PosixPath',) (CLI: --allow-global pathlib.PosixPath)", 4),
    # issue 11: JSON anywhere, absurd shapes, dangling tied names
    Bad("st-5001-digit-integer", lambda f: _st_header(f, b'{"a": {"dtype": "F32", "shape": [' + BIG_INT.encode() + b'], "data_offsets": [0, 4]}}', b"\0" * 4),
        "header is not valid JSON (ValueError: a number with too many digits)", 3),
    Bad("index-5001-digit-integer", lambda f: _write(f, "model.safetensors.index.json", b'{"metadata": {"total_size": ' + BIG_INT.encode() + b'}, "weight_map": {}}'),
        "index is not valid JSON (ValueError: a number with too many digits)", 3),
    Bad("st-shape-0-by-2-to-the-70", lambda f: _st_header(f, {"a": {"dtype": "F32", "shape": [0, 2**70], "data_offsets": [0, 0]}}, b""),
        "tensor 'a' has an impossible shape [0, 1180591620717411303424]", 3),
    Bad("config-not-json", lambda f: _hf_folder(f, b"{not json"), "config.json is not valid JSON (JSONDecodeError)", 3, "config.json"),
    Bad("config-is-a-list", lambda f: _hf_folder(f, b"[1, 2]"), "config.json must be a JSON object, not a list", 3, "config.json"),
    Bad("config-5001-digit-integer", lambda f: _hf_folder(f, b'{"vocab_size": ' + BIG_INT.encode() + b"}"),
        "config.json is not valid JSON (ValueError: a number with too many digits)", 3, "config.json"),
    Bad("config-hidden-size-a-list", lambda f: _hf_folder(f, b'{"hidden_size": [1]}'), "hidden_size must be a non-negative integer, not '[1]'", 3, "config.json"),
    Bad("st-aliases-to-missing-name", lambda f: _st_with_aliases(f, {"lm_head.weight": "nope.weight"}),
        "ties 'lm_head.weight' to 'nope.weight', which no file holds", 3),
    Bad("zero-tensors-pth", lambda f: (torch.save({"epoch": 3, "step": 10}, f / "model.pth"), f / "model.pth")[1], "the checkpoint holds no tensors (it holds: epoch, step)", 3),
]


# Damage found only as the data is read (convert, reshard, verify), not by `inspect`.
BAD_DATA: list[Bad] = [
    Bad("pth-flipped-data-byte", lambda f: flip_data_byte(_save(f, _tensors())), "fails its CRC-32 check: the file is damaged", 3),
]


def _pair(folder: Path, original: dict, converted: dict) -> Path:
    """ORIGINAL as ``original.pth`` (returned), CONVERTED as ``converted.pth`` beside it."""
    torch.save(converted, folder / "converted.pth")
    return _save(folder, original, "original.pth")


_NET = "import torch\ndef build():\n    return torch.nn.Linear(2, 2)\ndef inputs():\n    return torch.ones(1, 2)\n"


def _ddp_against_a_model(folder: Path) -> Path:
    (folder / "net.py").write_text(_NET)
    sd = {"module.weight": torch.ones(2, 2), "module.bias": torch.zeros(2)}
    return _pair(folder, sd, sd)


# `quantkit compare ORIGINAL converted.pth [extra args]`: two checkpoints that cannot be compared.
# The extra arguments may name files in the folder as {folder}.
BAD_COMPARES: list[tuple[Bad, tuple[str, ...]]] = [
    (Bad("compare-no-shared-names", lambda f: _pair(f, {"module.w": torch.ones(2)}, {"w": torch.ones(2)}),
         "share no tensor name (first: 'module.w' and 'w'): nothing to compare; the original's names start with 'module.': pass --strip-prefix module.", 3), ()),
    (Bad("compare-model-names-prefixed", _ddp_against_a_model,
         "the checkpoint's names start with 'module.': strip it with strip_prefix='module.' (CLI: --strip-prefix module.)", 3),
     ("--model", "{folder}/net.py:build", "--inputs", "{folder}/net.py:inputs")),
]


def build(bad: Bad, folder: Path) -> tuple[Path, Path]:
    """(the path to pass, the file the message must name)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = bad.build(folder)
    return path, (folder / bad.names if bad.names else path)


# --- issue 11, items 6 and 12: output paths refused before anything is read -------------------


@dataclass(frozen=True)
class BadOutput:
    """An output path (or report path) quantkit must refuse before reading the input.

    ``build(folder)`` returns (input path, output path, extra arguments); the message is
    ``quantkit: error: <named>: <fragment>...`` with ``named`` from ``names(folder)``
    (default: the output path)."""

    id: str
    build: Callable[[Path], tuple[Path, Path, list[str]]]
    fragment: str
    exit_code: int
    commands: tuple[str, ...] = ("convert", "reshard")
    names: Callable[[Path], Path] | None = None


def _hf_model(folder: Path) -> Path:
    model = folder / "model"
    model.mkdir(parents=True)
    _valid_st(model)
    (model / "config.json").write_text('{"model_type": "tiny"}\n')
    return model


def _linked_to_model(folder: Path) -> tuple[Path, Path, list[str]]:
    model = _hf_model(folder)
    (folder / "link").symlink_to(model, target_is_directory=True)
    return model, folder / "link", ["--force"]


def _sharded_model(folder: Path) -> Path:
    (folder / "sharded").mkdir()
    return _sharded(folder / "sharded")


BAD_OUTPUTS: list[BadOutput] = [
    BadOutput("output-is-the-input-file", lambda f: (_valid_st(f), f / "model.safetensors", ["--force"]),
              "the output is the input", 2),
    BadOutput("output-is-the-input-folder", lambda f: (_hf_model(f), f / "model", ["--force"]), "the output is the input", 2),
    BadOutput("output-inside-the-input-folder", lambda f: (_hf_model(f), f / "model" / "out", []), "the output lies inside the input folder", 2),
    BadOutput("output-dot-dot-inside-the-input", lambda f: (_hf_model(f), f / "model" / "sub" / "..", ["--force"]),
              "the output must be a new folder's name", 2),
    BadOutput("output-holds-the-input", lambda f: (_hf_model(f) / "model.safetensors", f / "model", ["--force"]),
              "the output holds the input", 2),
    BadOutput("output-holds-the-input-folder", lambda f: (_hf_model(f), f, ["--force"]), "the output holds the input", 2),
    BadOutput("output-link-to-the-input", _linked_to_model, "the output is the input", 2),
    BadOutput("output-is-dot", lambda f: (_valid_st(f), Path("."), ["--force"]), "the output must be a new folder's name", 2),
    BadOutput("output-is-a-shard-of-the-input", lambda f: (_sharded_model(f), f / "sharded" / "model-00001-of-00002.safetensors", ["--force"]),
              "the output is a weight file beside the input index", 2),
    BadOutput("output-parent-missing", lambda f: (_valid_st(f), f / "no" / "such" / "out", []),
              "cannot create out there", 5, names=lambda f: f / "no" / "such"),
    BadOutput("output-exists-without-force", lambda f: (_valid_st(f), (f / "out").mkdir() or f / "out", []),
              "already exists; choose another output or pass --force to replace it", 5),
    BadOutput("report-unknown-suffix", lambda f: (_valid_st(f), f / "out", ["--report", str(f / "out.txt")]),
              "cannot tell the report format from the suffix; use .json, .md or .html", 2, ("convert",), names=lambda f: f / "out.txt"),
    BadOutput("report-parent-missing", lambda f: (_valid_st(f), f / "out", ["--report", str(f / "nope" / "r.md")]),
              "cannot write the report r.md there", 5, ("convert",), names=lambda f: f / "nope"),
]


# --- issue 11, item 9: hostile extras in a model folder: never copied, each listed -----------------


@dataclass(frozen=True)
class HostileExtra:
    """``build(model_folder, outside_folder)`` adds one hostile entry named ``name``; the
    output must not hold it, and the summary and quantkit.json list it with ``why``."""

    id: str
    build: Callable[[Path, Path], None]
    name: str
    why: str


def _fifo(model: Path, outside: Path) -> None:
    os.mkfifo(model / "pipe")


def _secret_link(model: Path, outside: Path) -> None:
    (outside / "secret.txt").write_text("API_KEY=hunter2\n")
    (model / "notes.txt").symlink_to(outside / "secret.txt")


def _folder_link(model: Path, outside: Path) -> None:
    (outside / ".ssh").mkdir()
    (outside / ".ssh" / "id_rsa").write_text("PRIVATE KEY\n")
    (model / "keys").symlink_to(outside / ".ssh", target_is_directory=True)


def _loop(model: Path, outside: Path) -> None:
    (model / "sub").mkdir()
    (model / "sub" / "loop").symlink_to(model, target_is_directory=True)


def _big(model: Path, outside: Path) -> None:
    with open(model / "big.onnx", "wb") as f:
        f.truncate(100 * 10**6 + 1)  # sparse: one byte over the per-file cap


HOSTILE_EXTRAS: list[HostileExtra] = [
    HostileExtra("link-to-dev-zero", lambda m, o: (m / "tokenizer.model").symlink_to("/dev/zero"), "tokenizer.model",
                 "a symbolic link (quantkit does not follow links)"),
    HostileExtra("link-to-a-secret-outside", _secret_link, "notes.txt", "a symbolic link (quantkit does not follow links)"),
    HostileExtra("link-to-a-folder-outside", _folder_link, "keys", "a symbolic link (quantkit does not follow links)"),
    HostileExtra("symlink-loop", _loop, "sub/loop", "a symbolic link (quantkit does not follow links)"),
    HostileExtra("fifo", _fifo, "pipe", "not a regular file (a FIFO, device or socket)"),
    HostileExtra("file-over-the-cap", _big, "big.onnx", "100000001 bytes, more than the 100 MB quantkit copies per file"),
]
