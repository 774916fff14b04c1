"""Every scheme quantkit converts to, by name: the only module-level state of the schemes.

Adding a scheme: write its module (a ``CastScheme`` or ``QuantScheme``) and add one line below.
"""

from __future__ import annotations

from ..errors import UsageError
from . import bnb, cast, ct
from .base import QuantScheme, Scheme

SCHEMES: dict[str, Scheme] = {}


def register(scheme: Scheme) -> Scheme:
    """Make ``scheme`` a conversion target (``--to``) and let readers recognize what it stores."""
    SCHEMES[scheme.name] = scheme
    return scheme


def get_scheme(name: str) -> Scheme:
    """The scheme registered as ``name`` (any case); UsageError naming the choices otherwise."""
    try:
        return SCHEMES[name] if name in SCHEMES else SCHEMES[name.lower()]
    except (KeyError, AttributeError):
        raise UsageError(f"unknown scheme {name!r}: choose one of {', '.join(SCHEMES)}") from None


def quantizers() -> list[QuantScheme]:
    """The registered schemes that store quantized weights (the readers dequantize these)."""
    return [s for s in SCHEMES.values() if isinstance(s, QuantScheme)]


def schemes_help() -> str:
    """``--to``'s help: each scheme with its one-line summary."""
    return "; ".join(f"{s.name}: {s.summary}" for s in SCHEMES.values())


register(cast.BF16)
register(cast.FP16)
register(bnb.INT8)
register(bnb.NF4)
register(bnb.FP4)
register(ct.FP8)
register(ct.FP8_BLOCK)
register(ct.W8A16)
register(ct.W4A16)
