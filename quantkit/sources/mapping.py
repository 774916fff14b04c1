"""Tensor bytes handed to a kernel straight from the page cache: a window of a local file,
mapped for as long as the array over it lives.

A positioned read copies every byte from the page cache into the reader's buffer, and the
kernel then reads that buffer again. For a whole weight larger than the CPU's caches (the
bitsandbytes schemes read GPT-2's transposed weights whole) both passes go to memory; mapped,
the kernel reads the page cache once. Measured side by side (``benchmarks/bench_read_paths.py``,
medians of 3 on the 2-core development machine), the CPU time of a conversion fell from 7.5 to
6.4 s (nf4, GPT-2-XL safetensors; wall 5.19 to 4.69 s) and 4.4 to 4.0 s (nf4, GPT-2-large);
row-chunked quantization (w4a16, Llama-shaped 3.4 GB: 4.85 and 4.75 s) and casts, which read
8 MB pieces that stay in cache (bf16: 3.37 and 3.41 s), were unchanged within the noise.

The mapping is private and writable (copy-on-write): a kernel that writes into its input
changes its own copy of the page, never the file, and numba sees the same array types as for
a read buffer (no second compilation). It is not pre-faulted (``MAP_POPULATE`` on a
writable private mapping would copy every page); ``MADV_WILLNEED`` starts the window's
read-ahead instead, for an input not in the page cache.

A file that shrinks while mapped raises SIGBUS on the next access, where a read would have
said "data ended early". Each window is checked against the file's size when it is mapped;
a file truncated during that window's use by another process is not guarded against (the
same holds for every tool that maps checkpoints). ``QUANTKIT_MAP_READS=0`` turns mapping off
(every read a positioned read), e.g. for such a filesystem.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np

from ..errors import InputError

MAP_READS = os.environ.get("QUANTKIT_MAP_READS", "1") != "0"
_GRANULE = mmap.ALLOCATIONGRANULARITY


def map_range(path: Path, offset: int, nbytes: int, what: str) -> np.ndarray | None:
    """Bytes ``offset .. offset + nbytes`` of ``path`` as a writable uint8 array over a private
    mapping (unmapped when the array and every view of it are gone); None where mapping is
    turned off. ``what`` names the tensor for the error raised when the file holds fewer
    bytes than that."""
    if not MAP_READS:
        return None
    if nbytes <= 0:
        return np.empty(0, dtype=np.uint8)
    begin = offset - offset % _GRANULE
    with open(path, "rb", buffering=0) as f:
        if os.fstat(f.fileno()).st_size < offset + nbytes:
            raise InputError(f"{path}: data ended early while reading {what} (the file shrank while being read?)")
        if hasattr(mmap, "MAP_PRIVATE"):
            window = mmap.mmap(f.fileno(), offset + nbytes - begin, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=begin)
        else:  # Windows: copy-on-write is ACCESS_COPY there
            window = mmap.mmap(f.fileno(), offset + nbytes - begin, access=mmap.ACCESS_COPY, offset=begin)
    if hasattr(window, "madvise") and hasattr(mmap, "MADV_WILLNEED"):
        window.madvise(mmap.MADV_WILLNEED)
    return np.frombuffer(window, dtype=np.uint8, count=nbytes, offset=offset - begin)
