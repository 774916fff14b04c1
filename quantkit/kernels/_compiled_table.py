"""The ahead-of-time kernel build's table, and whether the build may run here.

``python -m quantkit.kernels.build`` writes, into this package, an extension module
``_aot_<digest>`` and ``_compiled.json``: the module's name, the digest of the kernel sources
it was built from, the CPU it was built for, and for each kernel the argument keys
(``_jit.arg_key``) of its compiled functions. :func:`load` returns those functions only
when the sources are the ones built and this CPU has every feature the build's had (the
build targets the building machine's CPU, as numba's JIT does); otherwise an empty table,
and the kernels run by numba's JIT.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import platform
from pathlib import Path

HERE = Path(__file__).resolve().parent
TABLE = HERE / "_compiled.json"
FORMAT = 1


def sources_digest() -> str:
    """SHA-256 over the kernel package's Python sources, by name."""
    digest = hashlib.sha256()
    for path in sorted(HERE.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def cpu_identity() -> dict:
    """The features code built for this CPU may use (Linux: /proc/cpuinfo's flags)."""
    flags = None
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = sorted(set(line.split(":", 1)[1].split()))
                    break
    except OSError:
        pass
    return {"machine": platform.machine(), "flags": flags, "node": None if flags else platform.node()}


def usable_here(built: dict, here: dict) -> bool:
    if built.get("machine") != here["machine"]:
        return False
    if built.get("flags") is None:  # no feature list where it was built: only that machine
        return built.get("node") is not None and built.get("node") == here["node"]
    return here["flags"] is not None and set(built["flags"]) <= set(here["flags"])


def _as_key(value):
    """A JSON key back as ``arg_key`` makes it (lists become tuples)."""
    return tuple(_as_key(v) for v in value) if isinstance(value, list) else value


def load() -> dict[str, dict]:
    """kernel -> {argument key: compiled function}; empty where the build is missing, stale,
    for another CPU or does not import."""
    try:
        table = json.loads(TABLE.read_text())
        if table.get("format") != FORMAT or table.get("sources") != sources_digest():
            return {}
        if not usable_here(table["cpu"], cpu_identity()):
            return {}
        module = importlib.import_module(f"{__package__}.{table['module']}")
        return {
            kernel: {_as_key(key): getattr(module, export) for key, export in entries}
            for kernel, entries in table["kernels"].items()
        }
    except (OSError, ValueError, KeyError, TypeError, ImportError, AttributeError):
        return {}
