"""A resumable run's record: the plan it follows and the shards finished so far.

The record is one JSON file (``PLAN_FILE``) in the run's partial folder (``staging.partial_folder``).
It holds a digest of everything that decides the output's bytes (the source's files, every
tensor's scheme and output specs, the shard layout, the shards' metadata), and, for each
shard finished, its size and SHA-256 as its writer reported them. A rerun with ``--resume``
keeps a shard only when the digest is the same and the file on disk has the recorded size
and SHA-256 (it is read once to check); every other shard is converted again. The record is
replaced atomically (write, then rename), so a run killed at any moment leaves the previous
record or the new one, never half of one. It is removed once every shard is in place, before
the index and manifest are written (the manifest lists every file of the folder).

For an S3 output (``remote_shards.RemoteShards``) the record is an object beside the shards,
replaced by one PUT each time, and a kept shard is checked without reading it (its size and
ETag, and the self-checksum in its header; that module says why).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import jsonio
from ..errors import OutputError, UsageError
from ..layout import RUN_RECORD
from ..planner import ShardPlan
from ..safetensors_format import read_header
from ..specs import OutSpec
from ..version import __version__
from ..writing.shard import WrittenShard, os_reason, sha256_of

PLAN_FILE = RUN_RECORD
RECORD_FORMAT = 1


def plan_digest(*, source: str, source_files: list, plan: ShardPlan, names: list[str], outputs: dict[str, list[OutSpec]],
                schemes: dict[str, str], transpose: frozenset[str], settings: object, metadata: dict[str, str]) -> str:
    """SHA-256 of what decides the output's bytes: same digest, same shards."""
    document = {
        "format": RECORD_FORMAT,
        "quantkit_version": __version__,
        "source": source,
        "source_files": source_files,
        "settings": repr(settings),
        "metadata": metadata,
        "shards": {
            name: [[unit, schemes.get(unit), unit in transpose, [[o.name, str(o.dtype), list(o.shape), o.variable] for o in outputs[unit]]]
                   for unit in units]
            for name, units in zip(names, plan.shards)
        },
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def source_files(files: list) -> list:
    """Each input file with its size and modification time (local files), so that a source
    changed since the failed run gives another digest; a URL is listed as it is."""
    listed = []
    for f in files:
        try:
            info = os.stat(f)
            listed.append([os.path.abspath(f), info.st_size, info.st_mtime_ns])
        except (OSError, TypeError, ValueError):
            listed.append([str(f)])
    return listed


class LocalShards:
    """A resumable run's shards and record in its partial folder (a shared filesystem)."""

    restart_hint = "rerun without --resume to start over"

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.where = str(self.folder)

    def read_record(self) -> bytes | None:
        try:
            return (self.folder / PLAN_FILE).read_bytes()
        except OSError:  # missing or unreadable: nothing in it is trusted
            return None

    def write_record(self, data: bytes) -> None:
        path = self.folder / PLAN_FILE
        temporary = path.with_name(path.name + ".new")
        try:
            temporary.write_bytes(data)
            os.replace(temporary, path)
        except OSError as exc:
            raise OutputError(f"{path}: write failed: {os_reason(exc)}") from None

    def remove_record(self) -> None:
        (self.folder / PLAN_FILE).unlink(missing_ok=True)

    def still_valid(self, name: str, done: dict) -> WrittenShard | None:
        """The shard ``name`` as written, if it still has the recorded size and SHA-256 (read once)."""
        path = self.folder / name
        if not path.is_file() or path.is_symlink():
            return None
        try:
            if path.stat().st_size != done.get("bytes") or sha256_of(path) != done.get("sha256"):
                return None
            header = read_header(path)
        except Exception:  # noqa: BLE001 (damaged or unreadable: converted again)
            return None
        return written_shard(path, done, header)


def written_shard(path: Path, done: dict, header) -> WrittenShard:
    """A kept shard as its writer reported it: the recorded size and SHA-256, the header's tensors."""
    entries = list(header.entries.values())
    file_bytes = done["bytes"]
    return WrittenShard(path, file_bytes, file_bytes - header.data_start, done["sha256"],
                        tuple(e.spec.name for e in entries), tuple(e.spec for e in entries))


@dataclass
class RunRecord:
    """The plan file's content: the plan digest and the finished shards (name -> size, SHA-256,
    and for an S3 output the object's ETag and the header's self-checksum).

    ``store``: where the shards and the record are (``LocalShards``, or ``remote_shards.RemoteShards``
    for an S3 output)."""

    store: object
    digest: str
    done: dict[str, dict] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return self.store.where

    @classmethod
    def start(cls, store, digest: str, *, resume: bool) -> tuple["RunRecord", dict[str, WrittenShard]]:
        """The record for this run, and the shards a resumed run keeps (each checked).

        ``store`` is a shard store, or a folder (``LocalShards``). With ``resume``, a record made
        for another plan is a UsageError (the partial output belongs to a different command);
        without it, any earlier record is ignored."""
        store = LocalShards(store) if isinstance(store, (str, Path)) else store
        previous = _parse(store.read_record()) if resume else None
        if previous is not None and previous.get("digest") != digest:
            raise UsageError(
                f"{store.where}: the partial output there was made by a different command (other source, options or "
                f"quantkit version); {store.restart_hint}"
            )
        record = cls(store, digest)
        kept: dict[str, WrittenShard] = {}
        done_before = (previous or {}).get("done")
        for name, done in (done_before.items() if isinstance(done_before, dict) else ()):
            if not isinstance(name, str) or name != Path(name).name or name in (".", ".."):  # a shard's file name only
                continue
            shard = store.still_valid(name, done) if isinstance(done, dict) else None
            if shard is not None:
                kept[name] = shard
                record.done[name] = done
        record.save()
        return record, kept

    def finished(self, shard: WrittenShard, counts: dict | None = None, *, state: dict | None = None) -> None:
        """Record a shard as written; ``counts``: what its conversion counted (non-finite
        values by kind and tensor), given back by ``counts`` when a resumed run keeps it;
        ``state``: what else the store checks it by (an S3 object's ETag and self-checksum)."""
        self.done[shard.path.name] = {"bytes": shard.file_bytes, "sha256": shard.sha256, **(state or {}),
                                      **({"counts": counts} if counts else {})}
        self.save()

    def counts(self, name: str) -> dict:
        found = self.done.get(name, {}).get("counts", {})
        return found if isinstance(found, dict) else {}

    def save(self) -> None:
        self.store.write_record((json.dumps({"format": RECORD_FORMAT, "digest": self.digest, "done": self.done}, indent=1) + "\n").encode())

    def remove(self) -> None:
        self.store.remove_record()


def _parse(raw: bytes | None) -> dict | None:
    if raw is None:
        return None
    try:
        record = jsonio.loads(raw)
    except jsonio.BadJson:  # damaged: nothing in it is trusted
        return None
    return record if isinstance(record, dict) and record.get("format") == RECORD_FORMAT else None
