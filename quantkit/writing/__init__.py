"""Writing a checkpoint folder: the one pipeline (``pipeline``) runs chunked units (``chunks``)
and whole units through shard writers (``shard``) in a staged folder (``staging``), then
writes the folder's other files (``folder``: index, manifest, copied model files)."""

from .folder import WriteResult, copy_model_files
from .pipeline import ProgressFn, WriteOptions, write_cast_checkpoint, write_checkpoint
from .shard import ShardWriter, WrittenShard
from .staging import staged_output

__all__ = [
    "ProgressFn", "ShardWriter", "WriteOptions", "WriteResult", "WrittenShard",
    "copy_model_files", "staged_output", "write_cast_checkpoint", "write_checkpoint",
]
