"""Which device work runs on."""

from __future__ import annotations

from .errors import UsageError


def check_device(device: str) -> str:
    """``device`` when it names one quantkit can use (auto, cpu, cuda, cuda:N), without
    importing torch; UsageError otherwise."""
    index = device.removeprefix("cuda:")
    if device not in ("auto", "cpu", "cuda") and not (device.startswith("cuda:") and index.isdigit()):
        raise UsageError(f"unknown device {device!r}: choose auto, cpu, cuda or cuda:N")
    return device


def conversion_device(device: str) -> str:
    """The device a conversion quantizes on: ``auto`` -> ``cpu``, else as ``resolve_device``.

    quantkit's CPU kernels write the same bytes on every machine (bitsandbytes' CPU backend's,
    the compressed-tensors reference's), while bitsandbytes' CUDA kernels round a few values
    on a boundary the other way; and where it was measured (one H200 and 16 cores) the CUDA
    path took 2.2x as long end to end, 7.6 s of it importing bitsandbytes' CUDA library
    (README, "On a GPU"). ``cuda`` / ``cuda:N`` still choose it.
    """
    return "cpu" if device == "auto" else resolve_device(device)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is present, else ``cpu``; ``cpu``, ``cuda`` and ``cuda:N`` as given.

    Raises UsageError for an unknown device, or CUDA asked for where there is none.
    """
    if device == "cpu" or (device == "auto" and not _may_have_cuda()):
        return check_device(device) if device == "cpu" else "cpu"
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    check_device(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA device is available (use --device cpu or auto)")
    return device


def _may_have_cuda() -> bool:
    """False where torch certainly sees no CUDA device, found without importing torch (which
    takes seconds): a CPU-only torch build, or Linux with no NVIDIA or ROCm device node."""
    import os
    import sys
    from importlib import metadata

    try:
        if metadata.version("torch").endswith("+cpu"):
            return False
    except metadata.PackageNotFoundError:
        return True  # let torch's own import say what is missing
    if sys.platform.startswith("linux"):
        return any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg"))
    return True
