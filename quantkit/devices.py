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


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is present, else ``cpu``; ``cpu``, ``cuda`` and ``cuda:N`` as given.

    Raises UsageError for an unknown device, or CUDA asked for where there is none.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    check_device(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA device is available (use --device cpu or auto)")
    return device
