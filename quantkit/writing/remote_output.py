"""An output folder in object storage (``-o s3://bucket/prefix``), written through s3fs.

A safetensors shard is written at offsets and finished by filling its own SHA-256 into its
header, so it cannot be streamed front to back: each shard is staged in a local temporary
folder (``TMPDIR``), uploaded as soon as it is finished (multipart, ``PART_BYTES`` parts,
``PART_CONCURRENCY`` at a time: memory stays bounded) and deleted locally. The local disk
holds the shard being uploaded, the one being written and what the pipeline wrote ahead
(``WriteOptions.ahead_bytes``): the writer waits for each upload before the shard after next.

Order of the uploads: the shards, then the copied config and tokenizer files, then the index,
then ``quantkit.json`` last. A prefix without ``quantkit.json`` (and, for several shards, the
index) is incomplete by definition, and ``quantkit verify`` says so. S3 has no rename, so a
replacement (``--force``) first deletes the old index and manifest (the prefix then reads
incomplete until the new output is complete), and deletes the old layout's other objects
once the new output is complete. An error or interrupt deletes what this run uploaded; a
process killed outright leaves shards without an index, which a rerun with ``--force``
replaces (a rerun with ``--force`` or ``--resume`` also aborts the multipart uploads under the
prefix that such a kill left unfinished).

A resumable run (``--executor ray``) is staged the same way, except that each Ray task
uploads its own shard (``upload_task_shard``) and a failure keeps what was uploaded, beside
the run's record (``layout.RUN_RECORD``): ``--resume`` finishes it.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import OutputError, UsageError
from ..layout import MANIFEST, RUN_RECORD, SELF_CHECKSUM_V2_KEY, ST_INDEX
from ..safetensors_format import read_header
from ..sources.remote import RemoteFile, RemoteLocation, RemoteOptions, RemoteStore, describe_failure
from ..sources.remote_safetensors import read_remote_header
from .shard import WrittenShard

PART_BYTES = 16 << 20  # multipart part size (S3's minimum is 5 MiB); a shard under 2 parts is one PUT
PART_CONCURRENCY = 4  # parts in flight per shard: at most PART_BYTES * PART_CONCURRENCY in memory
_S3 = re.compile(r"^s3:/+(.*)$", re.IGNORECASE)


def s3_output_url(output: object) -> str | None:
    """``s3://bucket/prefix`` for an S3 output, given as a string or as a ``Path`` (which folds
    ``s3://`` into ``s3:/``); None for anything else. A bucket without a prefix, or a prefix
    with empty, ``.`` or ``..`` parts, is a UsageError."""
    match = _S3.match(str(output)) if output is not None else None
    if match is None:
        return None
    parts = match.group(1).rstrip("/").split("/")
    if len(parts) < 2 or any(p in ("", ".", "..") for p in parts):
        raise UsageError(f"s3://{match.group(1)}: name an S3 prefix as s3://bucket/prefix (a folder under the bucket, no empty, '.' or '..' parts)")
    return "s3://" + "/".join(parts)


def check_remote_output(src: object, url: str, *, force: bool, resume: bool = False) -> RemoteLocation:
    """Refuse, before anything is read, an S3 output that overlaps an S3 input (UsageError) or
    already holds objects (OutputError, unless ``force``, or ``resume`` and the prefix holds an
    unfinished resumable run); the output's location."""
    _check_overlap(src, url)
    _check_existing(url, Uploader(url).existing(), force=force, resume=resume)
    return RemoteLocation(url)


@dataclass(frozen=True)
class RemoteStage:
    """Where a run writes: ``folder`` (local: staged beside the target, or temporary for S3);
    ``shard_done``: to be called with each shard once finished (for S3 it uploads, then deletes it)."""

    folder: Path
    shard_done: Callable[[WrittenShard], None] | None  # None: nothing to do (a local folder)
    uploader: "Uploader | None" = None  # S3: the prefix's objects (a resumable run's tasks upload their own shards)


@contextmanager
def staged_remote_output(target: RemoteLocation, *, force: bool, notes: list[str] | None = None,
                         resumable: bool = False, resume: bool = False) -> Iterator[RemoteStage]:
    """Yield a local temporary folder whose shards are uploaded to ``target`` as they finish;
    on success the folder's other files, then the index, then ``quantkit.json`` are uploaded,
    and (``force``) the previous output's other objects deleted. On any error or interrupt
    the objects this run uploaded are deleted (best effort) and no index is left.

    ``resumable``: the shards are uploaded by the caller (``shard_done`` is None; each name
    passed to ``uploader.register``) and kept when the run fails; ``resume`` accepts a prefix
    holding an unfinished resumable run without ``force``."""
    uploader = Uploader(target.url)
    existing = uploader.existing()  # again: another run may have written meanwhile
    _check_existing(target.url, existing, force=force, resume=resume)
    if force or resume:  # a rerun over a run killed mid-upload: its unfinished uploads go too
        aborted = uploader.abort_unfinished()
        if aborted and notes is not None:
            notes.append(f"aborted {aborted} unfinished multipart upload(s) left at {target.url}")
    local = Path(tempfile.mkdtemp(prefix="quantkit-upload-"))
    complete = False
    try:
        uploader.delete([n for n in existing if n in (ST_INDEX, MANIFEST)])  # the old output now reads incomplete
        yield RemoteStage(local, None if resumable else uploader.upload_shard, uploader)
        uploader.upload_rest(local)
        complete = True
        stale = sorted(set(existing) - uploader.uploaded() - {RUN_RECORD})  # the record: removed by its run
        uploader.delete(stale)
        if stale and notes is not None:
            notes.append(f"removed {len(stale)} object(s) of the previous output at {target.url}")
    except BaseException:
        if not complete and not resumable:
            uploader.delete(sorted(uploader.uploaded()), best_effort=True)
        raise
    finally:
        shutil.rmtree(local, ignore_errors=True)


def upload_task_shard(url: str, shard: WrittenShard) -> dict:
    """Upload a shard a Ray task wrote (then delete it locally), as ``staged_remote_output``
    uploads a local run's; what a resumed run checks it by without reading it (``object_state``)
    and the self-checksum its header holds."""
    self_checksum = read_header(shard.path).metadata.get(SELF_CHECKSUM_V2_KEY)
    uploader = Uploader(url)
    uploader.upload_shard(shard)
    return {**uploader.object_state(shard.path.name), "self_checksum": self_checksum}


class Uploader:
    """The objects of one S3 prefix: listing, uploads (counted), deletions; thread-safe."""

    def __init__(self, url: str):
        self.url = url
        self._key = url.split("://", 1)[1]  # bucket/prefix, as s3fs names it
        self._store = RemoteStore(url, RemoteOptions.from_environment())
        self._names: set[str] = set()
        self._lock = threading.Lock()
        self.bytes_uploaded = 0

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except (OutputError, UsageError):
            raise
        except Exception as exc:  # noqa: BLE001 - whatever s3fs / botocore raised: one line, no credentials
            reason = describe_failure(exc).replace("cannot read it", "the request failed")  # the generic reason is worded for reads
            raise OutputError(f"{self.url}: {what} failed: {reason}; check the bucket and the AWS credentials") from None

    def existing(self) -> list[str]:
        """Names (relative to the prefix) of the objects under it."""
        with self._errors("listing"):
            found = self._store.fs.find(self._key + "/")
        start = len(self._key) + 1
        return sorted(k[start:] for k in found if k.startswith(self._key + "/"))

    def abort_unfinished(self, *, pages: int = 100) -> int:
        """Abort the multipart uploads under the prefix that a killed run left (S3 keeps their
        parts, unseen but billed, until then); how many. ``pages``: at most 1,000 each."""
        bucket, _, prefix = self._key.partition("/")
        under = f"{prefix}/" if prefix else ""
        marker: dict[str, str] = {}
        aborted = 0
        with self._errors("listing unfinished uploads"):
            for _ in range(pages):
                listed = self._store.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=under, **marker)
                for upload in listed.get("Uploads") or []:
                    if not str(upload["Key"]).startswith(under):  # a listing past its prefix: others' uploads are not ours to abort
                        continue
                    self._store.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                    aborted += 1
                if not listed.get("IsTruncated"):
                    break
                marker = {"KeyMarker": listed.get("NextKeyMarker", ""), "UploadIdMarker": listed.get("NextUploadIdMarker", "")}
        return aborted

    def upload_shard(self, shard: WrittenShard) -> None:
        self._upload(shard.path, shard.path.name)
        shard.path.unlink()

    def upload_rest(self, local: Path) -> None:
        """Every file left in ``local``, then the index, then the manifest."""
        files = sorted(p for p in local.rglob("*") if p.is_file() and not p.is_symlink())
        last = [local / ST_INDEX, local / MANIFEST]
        for path in [p for p in files if p not in last] + [p for p in last if p.is_file()]:
            self._upload(path, path.relative_to(local).as_posix())

    def _upload(self, path: Path, name: str) -> None:
        size = path.stat().st_size
        with self._lock:
            self._names.add(name)  # before the upload: an interrupted multipart upload is aborted, a finished one removed
        with self._errors(f"uploading {name}"):
            self._store.fs.put_file(str(path), f"{self._key}/{name}", chunksize=PART_BYTES, max_concurrency=PART_CONCURRENCY)
        with self._lock:
            self.bytes_uploaded += size

    def uploaded(self) -> set[str]:
        with self._lock:
            return set(self._names)

    def register(self, name: str) -> None:
        """Count ``name`` as part of this output (uploaded by another process, or kept)."""
        with self._lock:
            self._names.add(name)

    def object_state(self, name: str) -> dict:
        """``bytes`` and ``etag`` of an object (S3 gives a new ETag to any object written again);
        an empty dict when there is none."""
        with self._errors(f"looking up {name}"):
            try:
                info = self._store.fs.info(f"{self._key}/{name}", refresh=True)
            except FileNotFoundError:
                return {}
        return {"bytes": info.get("size"), "etag": info.get("ETag")}

    def read_small(self, name: str) -> bytes | None:
        """A small object's bytes (the run's record), None when it does not exist."""
        with self._errors(f"reading {name}"):
            try:
                return self._store.fs.cat_file(f"{self._key}/{name}")
            except FileNotFoundError:
                return None

    def write_small(self, name: str, data: bytes) -> None:
        """Replace a small object (one PUT: readers see the old bytes or the new, never half)."""
        with self._errors(f"writing {name}"):
            self._store.fs.pipe_file(f"{self._key}/{name}", data)

    def shard_header(self, name: str, size: int):
        """The checked header of the shard ``name`` (``size`` bytes), by ranged reads."""
        return read_remote_header(self._store, RemoteFile(f"{self._key}/{name}", f"{self.url}/{name}", size))

    def delete(self, names: list[str], *, best_effort: bool = False) -> None:
        if not names:
            return
        try:
            with self._errors("deleting old objects"):
                self._store.fs.rm([f"{self._key}/{n}" for n in names])
        except OutputError:
            if not best_effort:
                raise


def _check_existing(url: str, existing: list[str], *, force: bool, resume: bool) -> None:
    if existing and not force and not (resume and RUN_RECORD in existing and MANIFEST not in existing):
        raise OutputError(_exists_message(url, existing, resume=resume))


def _exists_message(url: str, existing: list[str], *, resume: bool = False) -> str:
    if MANIFEST in existing or ST_INDEX in existing:
        return f"{url}: already holds a checkpoint; choose another output or pass --force to replace it"
    if RUN_RECORD in existing:
        return (f"{url}: holds an unfinished --executor ray run ({len(existing) - 1} object(s) and its {RUN_RECORD}); "
                "rerun the same command with --resume to finish it, or pass --force to replace it")
    return (f"{url}: already holds {len(existing)} object(s) but no {MANIFEST} (an incomplete output?); "
            + ("nothing to resume there (no --executor ray run record); " if resume else "")
            + "choose another output or pass --force to replace it")


def _check_overlap(src: object, url: str) -> None:
    """An S3 output equal to, inside, or holding the S3 input would destroy it (--force
    deletes the old layout)."""
    match = _S3.match(str(src)) if src is not None else None
    if match is None:
        return
    source, output = match.group(1).rstrip("/"), url.split("://", 1)[1]
    if source == output or source.startswith(output + "/") or output.startswith(source + "/"):
        raise UsageError(f"{url}: the output overlaps the input ({src}); replacing it would delete the input: choose another prefix")
