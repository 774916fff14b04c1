"""Helpers for tests that run quantkit as a process of its own."""

from __future__ import annotations

import signal


def as_a_terminal_job() -> None:
    """``preexec_fn`` for a command that a test interrupts with SIGINT, as a terminal's Ctrl-C.

    A command typed at a terminal takes Ctrl-C. One started in the background by a shell without
    job control (as a CI script may start pytest) inherits SIGINT ignored, and Python then leaves
    it ignored: the signal would never arrive."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
