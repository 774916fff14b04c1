"""The reader interface every checkpoint format implements."""

from __future__ import annotations

import re
import zipfile
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from ..specs import TensorSpec

# Names of an output head: when tied tensors share storage these are the names dropped,
# so the kept name is the input embedding, as transformers expects (GPT-2 keeps
# `transformer.wte.weight` and drops `lm_head.weight`).
_HEAD_NAME = re.compile(r"(^|\.)(lm_head|output|head|embed_out|cls)(\.|$)")


@dataclass
class SourceInfo:
    """What a reader learned of a checkpoint besides its tensors."""

    format: str
    files: list[Path]
    extras: dict[str, str] = field(default_factory=dict)  # non-tensor content, described
    # the non-tensor entries that are plain JSON (a vocabulary, the epoch, metrics), as they are:
    # a converter keeps them (quantkit.json); the others are only described in ``extras``
    extras_json: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # things the user should know (e.g. read whole)
    metadata: dict[str, str] = field(default_factory=dict)  # safetensors __metadata__ of the first file
    config_dir: Path | None = None  # the Hugging Face folder, when the source is one


class CheckpointSource(ABC):
    """A checkpoint opened for lazy reading.

    ``specs`` lists every distinct tensor (name, dtype, shape) before any data is read;
    ``get_tensor`` reads one on demand. ``aliases`` maps names dropped because they share
    storage with another tensor to the name that is kept.
    """

    concurrent_reads = False  # True where get_tensor may be called from several threads at once
    # True where reading copies bytes from disk (get_tensor allocates), so that reading into a
    # reused buffer (read_into) saves a fresh allocation per tensor; False where get_tensor maps.
    reads_into_buffer = False
    bytes_fetched: int | None = None  # bytes read over the network so far; None for a local checkpoint

    def __init__(self, path: Path, info: SourceInfo, specs: dict[str, TensorSpec], aliases: dict[str, str]):
        self.path = path
        self.info = info
        self.specs = specs
        self.aliases = aliases

    @abstractmethod
    def get_tensor(self, name: str) -> "torch.Tensor":  # noqa: F821
        """Read the named tensor (a kept name, not an alias) into CPU memory."""

    @abstractmethod
    def read_into(self, name: str, start: int, view: memoryview) -> None:
        """Fill ``view`` with tensor ``name``'s bytes (C order) from byte ``start`` on, into the
        caller's buffer: the chunked casts and copies read through this. Thread-safe."""

    def mapped(self, name: str, start: int, nbytes: int) -> "np.ndarray | None":  # noqa: F821
        """Bytes ``start .. start + nbytes`` of tensor ``name`` (C order) as a uint8 array over a
        mapping of the file (no copy; see ``sources.mapping``), or None where this source does
        not map them (then ``read_into``). Thread-safe."""
        return None

    def bytes_of(self, name: str, start: int, nbytes: int, buffer: "np.ndarray") -> "np.ndarray":  # noqa: F821
        """Bytes ``start .. start + nbytes`` of tensor ``name``: mapped where the source maps,
        else read into ``buffer`` (uint8, at least ``nbytes``) and returned as its first bytes."""
        data = self.mapped(name, start, nbytes)
        if data is None:
            data = buffer[:nbytes]
            if nbytes:
                self.read_into(name, start, memoryview(data))
        return data

    def close(self) -> None:
        """Release open files and mappings."""

    def model_files_dir(self) -> Path | None:
        """The folder of config and tokenizer files to copy into an output (a remote source
        fetches them here, on first use)."""
        return self.info.config_dir

    def __enter__(self) -> "CheckpointSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def total_bytes(self) -> int:
        return sum(s.nbytes for s in self.specs.values())


def choose_kept_name(names: list[str]) -> str:
    """Of names sharing one tensor, the one to keep: the first that is not an output head."""
    for name in names:
        if not _HEAD_NAME.search(name):
            return name
    return names[0]


_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"  # pickled 0x1950A86A20F9469CFC6C


def detect_torch_format(path: Path) -> str | None:
    """``"torch-zip"``, ``"torch-legacy"`` or None when the file is neither."""
    try:
        if zipfile.is_zipfile(path):
            return "torch-zip"
    except zipfile.BadZipFile:  # is_zipfile itself raises on some damaged end records
        return "torch-zip"
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_MAGIC))
    if head == _LEGACY_MAGIC:
        return "torch-legacy"
    if head.startswith(_ZIP_MAGIC):  # a zip cut short (no central directory): torch.load says what is wrong
        return "torch-zip"
    return None
