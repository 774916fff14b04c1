"""How quantkit compiles its kernels: numba, cached on disk, GIL released.

``nogil`` lets the converter's two worker threads run kernels at the same time. ``cache``
keeps the machine code between runs, so a run pays numba's compilation (seconds) only the
first time. numba writes that cache beside the source file, or, where the package folder is
read-only, in the user's cache folder; where neither can be written (a read-only image with
no home), quantkit points it at a folder under the system's temporary directory, and if
even that fails it compiles without a cache rather than failing.

numba's first compile or cache load imports ``numba.np.arraymath``, which imports SciPy's
BLAS wrappers (``scipy.linalg``, 0.35 s of CPU on the development machine) only to choose how
jitted ``np.cov`` / ``np.corrcoef`` take inner products. quantkit's kernels use neither, so
that module is imported here with SciPy's BLAS hidden (numba then uses its own loop there);
SciPy imports normally afterwards. Where SciPy's BLAS is already loaded, nothing is hidden.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable

import numba

_SCIPY_BLAS = "scipy.linalg.cython_blas"


def _import_arraymath() -> None:
    hide = _SCIPY_BLAS not in sys.modules
    if hide:
        sys.modules[_SCIPY_BLAS] = None  # `import` of it raises ImportError, its parents are not imported
    try:
        import numba.np.arraymath  # noqa: F401
    finally:
        if hide and sys.modules.get(_SCIPY_BLAS, 0) is None:
            del sys.modules[_SCIPY_BLAS]


_import_arraymath()

_OPTIONS = {"nogil": True, "cache": True, "error_model": "numpy", "boundscheck": False}


def fallback_cache_dir() -> str:
    """Where kernels are cached when numba finds no writable place of its own."""
    return os.path.join(tempfile.gettempdir(), f"quantkit-numba-{os.getuid() if hasattr(os, 'getuid') else 'user'}")


def kernel(function: Callable | None = None, *, inline: bool = False) -> Callable:
    """``function`` compiled with quantkit's options, cached wherever a cache can be kept;
    ``inline``: a small helper numba pastes into its callers."""
    if function is None:
        return lambda f: kernel(f, inline=inline)
    options = {**_OPTIONS, "inline": "always"} if inline else _OPTIONS
    try:
        return numba.njit(**options)(function)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        pass
    if not numba.config.CACHE_DIR:
        numba.config.CACHE_DIR = fallback_cache_dir()
        try:
            return numba.njit(**options)(function)
        except RuntimeError:
            pass
    return numba.njit(**{**options, "cache": False})(function)
