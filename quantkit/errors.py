"""Exceptions raised by quantkit.

The library raises these; the CLI turns each into one line on stderr and exits with
``exit_code``. The codes are documented in README.md.
"""

from __future__ import annotations


class QuantkitError(Exception):
    """Base of every error quantkit raises on purpose."""

    exit_code = 1


class UsageError(QuantkitError):
    """An option or argument that cannot work (unknown scheme, bad size string)."""

    exit_code = 2


class InputError(QuantkitError):
    """The input is missing, not a checkpoint, or damaged."""

    exit_code = 3


class UnsafeCheckpointError(InputError):
    """A pickle that would need code execution to load: refused, nothing run."""

    exit_code = 4


class OutputError(QuantkitError):
    """The output cannot be written: it exists, the place is unwritable, the disk is full."""

    exit_code = 5


class VerificationError(QuantkitError):
    """`verify` (or the writer's own check) found the output inconsistent."""

    exit_code = 6
