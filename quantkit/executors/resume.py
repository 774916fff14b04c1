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
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import jsonio
from ..errors import OutputError, UsageError
from ..planner import ShardPlan
from ..safetensors_format import read_header
from ..specs import OutSpec
from ..version import __version__
from ..writing.shard import WrittenShard, os_reason, sha256_of

PLAN_FILE = "quantkit-plan.json"
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


@dataclass
class RunRecord:
    """The plan file's content: the plan digest and the finished shards (name -> size, SHA-256)."""

    folder: Path
    digest: str
    done: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def start(cls, folder: Path, digest: str, *, resume: bool) -> tuple["RunRecord", dict[str, WrittenShard]]:
        """The record for this run, and the shards a resumed run keeps (checked on disk).

        With ``resume``, a record made for another plan is a UsageError (the partial folder
        belongs to a different command); without it, any earlier record is ignored."""
        previous = _load(folder / PLAN_FILE) if resume else None
        if previous is not None and previous.get("digest") != digest:
            raise UsageError(
                f"{folder}: the partial output there was made by a different command (other source, options or "
                "quantkit version); rerun without --resume to start over"
            )
        record = cls(folder, digest)
        kept: dict[str, WrittenShard] = {}
        done_before = (previous or {}).get("done")
        for name, done in (done_before.items() if isinstance(done_before, dict) else ()):
            if not isinstance(name, str) or name != Path(name).name or name in (".", ".."):  # a shard's file name only
                continue
            shard = _still_valid(folder / name, done)
            if shard is not None:
                kept[name] = shard
                record.done[name] = done
        record.save()
        return record, kept

    def finished(self, shard: WrittenShard, counts: dict | None = None) -> None:
        """Record a shard as written; ``counts``: what its conversion counted (non-finite
        values by kind and tensor), given back by ``counts`` when a resumed run keeps it."""
        self.done[shard.path.name] = {"bytes": shard.file_bytes, "sha256": shard.sha256, **({"counts": counts} if counts else {})}
        self.save()

    def counts(self, name: str) -> dict:
        found = self.done.get(name, {}).get("counts", {})
        return found if isinstance(found, dict) else {}

    def save(self) -> None:
        path = self.folder / PLAN_FILE
        temporary = path.with_name(path.name + ".new")
        try:
            temporary.write_text(json.dumps({"format": RECORD_FORMAT, "digest": self.digest, "done": self.done}, indent=1) + "\n")
            os.replace(temporary, path)
        except OSError as exc:
            raise OutputError(f"{path}: write failed: {os_reason(exc)}") from None

    def remove(self) -> None:
        (self.folder / PLAN_FILE).unlink(missing_ok=True)


def _load(path: Path) -> dict | None:
    try:
        record = jsonio.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, jsonio.BadJson):  # unreadable or damaged: nothing in it is trusted
        return None
    return record if isinstance(record, dict) and record.get("format") == RECORD_FORMAT else None


def _still_valid(path: Path, done: object) -> WrittenShard | None:
    """The shard at ``path`` as written, if it still has the recorded size and SHA-256."""
    if not isinstance(done, dict) or not path.is_file() or path.is_symlink():
        return None
    try:
        if path.stat().st_size != done.get("bytes") or sha256_of(path) != done.get("sha256"):
            return None
        header = read_header(path)
    except Exception:  # noqa: BLE001 (damaged or unreadable: converted again)
        return None
    entries = list(header.entries.values())
    file_bytes = done["bytes"]
    return WrittenShard(path, file_bytes, file_bytes - header.data_start, done["sha256"],
                        tuple(e.spec.name for e in entries), tuple(e.spec for e in entries))
