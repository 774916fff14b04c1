"""A resumable run's shards and record in an S3 prefix (``-o s3://bucket/prefix --executor ray``).

Each task uploads its own shard (``remote_output.upload_task_shard``, the multipart upload of
a local run's S3 output) and reports its size, SHA-256, the object's ETag and the
self-checksum in its header. The driver keeps the run's record (``layout.RUN_RECORD``) as an
object beside the shards, replaced by one PUT per finished shard.

A resumed run keeps a recorded shard without downloading it: S3 has no SHA-256 of a whole
object to ask for (a multipart object's ETag is the MD5 of its parts' MD5s, and checksums
asked for at upload are per part as well), and reading 2 GB shards back would cost what
converting them again costs. What it checks instead, from one HEAD and one ranged read of
the header (a few KB): the size and ETag the task's upload left (an object written again
gets a new ETag; S3 makes an object visible only once its upload is complete, so a torn
shard cannot be there), and the header's self-checksum (``writing/selfsum.py``: a digest of
the header and of every tensor byte, computed as the shard was written) and tensor names.
The SHA-256 kept in ``quantkit.json`` is the one the task computed from the bytes it
uploaded; ``quantkit verify s3://...`` reads every byte again against it.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError, VerificationError
from ..layout import RUN_RECORD, SELF_CHECKSUM_V2_KEY
from ..writing.remote_output import Uploader
from ..writing.shard import WrittenShard
from .resume import written_shard


class RemoteShards:
    """The shard store of ``resume.RunRecord`` for an S3 prefix."""

    restart_hint = "rerun with --force instead of --resume to start over"  # a prefix holding objects needs --force

    def __init__(self, uploader: Uploader):
        self.uploader = uploader
        self.where = uploader.url

    def read_record(self) -> bytes | None:
        return self.uploader.read_small(RUN_RECORD)

    def write_record(self, data: bytes) -> None:
        self.uploader.write_small(RUN_RECORD, data)

    def remove_record(self) -> None:
        self.uploader.delete([RUN_RECORD])

    def still_valid(self, name: str, done: dict) -> WrittenShard | None:
        """The shard ``name`` as recorded, if its object still has the recorded size and ETag and
        its header the recorded self-checksum; read: the header only."""
        state = self.uploader.object_state(name)
        if not state or state.get("bytes") != done.get("bytes") or not done.get("etag") or state.get("etag") != done.get("etag"):
            return None
        try:
            header = self.uploader.shard_header(name, state["bytes"])
        except InputError:  # not a safetensors file any more: converted again
            return None
        if not done.get("self_checksum") or header.metadata.get(SELF_CHECKSUM_V2_KEY) != done.get("self_checksum"):
            return None
        self.uploader.register(name)
        return written_shard(Path(name), done, header)

    def check_written(self, shard: WrittenShard, state: dict, planned: set[str]) -> WrittenShard:
        """The driver's check of a shard a task uploaded: there with the size and ETag the task
        reported, and the planned tensors in its header."""
        name = shard.path.name
        found = self.uploader.object_state(name)
        if found.get("bytes") != shard.file_bytes or found.get("etag") != state.get("etag"):
            what = "missing" if not found else f"{found.get('bytes')} bytes, ETag {found.get('etag')}"
            raise VerificationError(
                f"{self.where}/{name}: the shard a Ray task uploaded ({shard.file_bytes} bytes, ETag {state.get('etag')}) "
                f"is not there ({what}): another process writes to the same prefix?"
            )
        header = self.uploader.shard_header(name, shard.file_bytes)
        if set(header.entries) != planned:
            raise VerificationError(f"{self.where}/{name}: the shard's tensors differ from the plan")
        self.uploader.register(name)
        return shard
