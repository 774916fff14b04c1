"""What every command shares: error handling at the edge, progress bars, JSON output."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import typer
from typer.core import TyperCommand

from quantkit.errors import QuantkitError

EXIT_INTERRUPTED = 130
EXIT_INTERNAL = 1
EXIT_BROKEN_PIPE = 141  # what a shell reports for a process killed by SIGPIPE (128 + 13)


def _raise_interrupt(signum, frame):  # SIGTERM behaves like Ctrl-C: clean up, exit non-zero
    raise KeyboardInterrupt


@dataclass(frozen=True)
class AppOptions:
    """The options given before the command name; the app's callback puts them in ``ctx.obj``."""

    debug: bool = False


class GuardedCommand(TyperCommand):
    """A command whose quantkit errors become one line on stderr and an exit code.

    Register each command with ``@app.command(NAME, cls=GuardedCommand)``. ``--debug`` (read
    from ``ctx.obj``, which every command's context inherits from the app's) adds the traceback.
    """

    def invoke(self, ctx: typer.Context):
        debug = isinstance(ctx.obj, AppOptions) and ctx.obj.debug
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            return super().invoke(ctx)
        except QuantkitError as exc:
            _fail(f"quantkit: error: {exc}", exc.exit_code, debug=debug)
        except KeyboardInterrupt as exc:  # str(exc): what is in place, when the output was complete
            _fail(f"quantkit: interrupted; {str(exc) or 'partial output removed'}", EXIT_INTERRUPTED, debug=debug)
        except BrokenPipeError:  # `quantkit inspect x | head`: the reader left, nothing to say
            _stdout_to_devnull()
            raise typer.Exit(EXIT_BROKEN_PIPE) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as exc:  # an unexpected failure is a bug: say so in one line
            message = f"quantkit: internal error: {exc.__class__.__name__}: {exc} (run with --debug for the traceback)"
            _fail(message, EXIT_INTERNAL, debug=debug)
        finally:
            signal.signal(signal.SIGTERM, previous)


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null so that Python's final flush does not fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real file (an in-process test runner)
        pass


def source_options(key: str | None, strip_prefix: str | None, allow_global: list[str] | None) -> dict:
    """--key / --strip-prefix / --allow-global as ``open_checkpoint`` keywords."""
    return {"key": key, "strip_prefix": strip_prefix, "allow_globals": tuple(allow_global or ())}


def warn(message: str) -> None:
    typer.echo(f"quantkit: warning: {message}", err=True)


def _fail(message: str, code: int, *, debug: bool) -> None:
    if debug:
        import traceback

        traceback.print_exc()
    typer.echo(message, err=True)
    raise typer.Exit(code)


@contextmanager
def byte_progress(total: int, description: str, *, quiet: bool) -> Iterator[Callable[[int], None] | None]:
    """A tqdm bar counting bytes on stderr; None when quiet.

    The bar appears at the first update, so a command that fails before writing anything
    (output exists, bad input) leaves just its one error line on stderr.
    """
    if quiet:
        yield None
        return
    from tqdm import tqdm

    bars: list[tqdm] = []

    def update(num_bytes: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, desc=description, unit="B", unit_scale=True, unit_divisor=1000, file=sys.stderr, leave=False))
        bars[0].update(num_bytes)

    try:
        yield update
    finally:
        for bar in bars:
            bar.close()


def print_json(value: object) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))
