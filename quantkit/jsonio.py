"""Reading JSON that came from a file: every failure one InputError naming the file.

``json.loads`` fails in more ways than ``JSONDecodeError``: bad UTF-8, nesting past the
recursion limit (RecursionError), an integer past Python's digit limit (a plain ValueError).
Everything quantkit reads as JSON (safetensors headers, indexes, metadata values,
``quantkit.json``, ``config.json``) goes through ``loads`` so that each is caught the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import InputError

MAX_JSON_FILE_BYTES = 100_000_000  # an index or config this large is not one


class BadJson(ValueError):
    """Why some text is not JSON quantkit can use; ``kind`` is the short reason shown to users."""

    def __init__(self, kind: str):
        super().__init__(kind)
        self.kind = kind


def loads(raw: bytes | str) -> object:
    """``json.loads``, every failure raised as BadJson."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
        return json.loads(text)
    except UnicodeDecodeError:
        raise BadJson("UnicodeDecodeError") from None
    except json.JSONDecodeError:
        raise BadJson("JSONDecodeError") from None
    except RecursionError:
        raise BadJson("RecursionError") from None
    except ValueError as exc:  # an integer past sys.get_int_max_str_digits()
        raise BadJson("ValueError: a number with too many digits") from None


def read_json(path: Path, *, what: str = "file") -> object:
    """Parse a JSON file; InputError ``<path>: <what> is not valid JSON (<why>)``."""
    size = path.stat().st_size
    if size > MAX_JSON_FILE_BYTES:
        raise InputError(f"{path}: {what} is {size} bytes, more than the {MAX_JSON_FILE_BYTES} quantkit reads as JSON")
    try:
        return loads(path.read_bytes())
    except BadJson as exc:
        raise InputError(f"{path}: {what} is not valid JSON ({exc.kind})") from None


def read_json_object(path: Path, *, what: str = "file") -> dict:
    """read_json of a file that must hold a JSON object."""
    value = read_json(path, what=what)
    if not isinstance(value, dict):
        raise InputError(f"{path}: {what} must be a JSON object, not a {type(value).__name__}")
    return value
