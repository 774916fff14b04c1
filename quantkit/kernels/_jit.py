"""How quantkit runs its kernels: compiled ahead of time where a build is present, else by
numba's JIT (cached on disk); GIL released either way.

Every kernel is written once, as a numba function, and decorated with :func:`kernel`. A call
from Python goes to the ahead-of-time build (``python -m quantkit.kernels.build``, run by
``make setup``: a plain extension module made by numba's ``pycc`` from these same functions,
with the JIT's options) when it holds the call's exact argument types and was built from
these sources for this CPU; otherwise to numba's JIT. The build loads in about a millisecond;
the JIT costs numba's import and its first call (0.6-1.0 s per process on the development
machine, even with its cache). Both run the same LLVM code of the same functions, and tests
compare them byte for byte.

``nogil`` lets the converter's two worker threads run kernels at the same time. ``cache``
keeps the JIT's machine code between runs, so a run pays numba's compilation (seconds) only
the first time. numba writes that cache beside the source file, or, where the package folder
is read-only, in the user's cache folder; where neither can be written (a read-only image
with no home), quantkit points it at a folder under the system's temporary directory, and if
even that fails it compiles without a cache rather than failing.

numba's first compile or cache load imports ``numba.np.arraymath``, which imports SciPy's
BLAS wrappers (``scipy.linalg``, 0.35 s of CPU on the development machine) only to choose how
jitted ``np.cov`` / ``np.corrcoef`` take inner products. quantkit's kernels use neither, so
that module is imported here with SciPy's BLAS hidden (numba then uses its own loop there);
SciPy imports normally afterwards. Where SciPy's BLAS is already loaded, nothing is hidden.

Inside numba, kernels call each other as numba dispatchers: each kernel is compiled from a
copy of its function whose globals are a *shadow* of its module, in which every kernel is
its dispatcher and every kernel module its shadow; Python code keeps calling the
:class:`Kernel` objects, which choose between the build and the JIT per call.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import types
from collections.abc import Callable

import numpy as np

from . import _compiled_table

KERNELS_ENV = "QUANTKIT_KERNELS"  # "jit": never use the ahead-of-time build
_SCIPY_BLAS = "scipy.linalg.cython_blas"
_OPTIONS = {"nogil": True, "cache": True, "error_model": "numpy", "boundscheck": False}
_ALL: list[Kernel] = []
_LOCK = threading.RLock()  # dispatchers and shadows are made once, by one thread
_SHADOWS: dict[str, types.ModuleType] = {}
_COMPILED: dict[str, dict] | None = None  # kernel -> {argument key: compiled function}; None: not loaded yet
harvest: dict | None = None  # set by the build: kernel -> the numba argument types it was called with


def _import_arraymath() -> None:
    hide = _SCIPY_BLAS not in sys.modules
    if hide:
        sys.modules[_SCIPY_BLAS] = None  # `import` of it raises ImportError, its parents are not imported
    try:
        import numba.np.arraymath  # noqa: F401
    finally:
        if hide and sys.modules.get(_SCIPY_BLAS, 0) is None:
            del sys.modules[_SCIPY_BLAS]


def fallback_cache_dir() -> str:
    """Where kernels are cached when numba finds no writable place of its own."""
    return os.path.join(tempfile.gettempdir(), f"quantkit-numba-{os.getuid() if hasattr(os, 'getuid') else 'user'}")


def arg_key(value) -> object:
    """What numba's dispatch would tell apart in an argument, as plain data (no numba import):
    an array's dtype, dimensions, layout and writability (not its alignment: numba's dispatch
    does not tell aligned arrays from others either); a scalar's type.
    None where the ahead-of-time build cannot take the value."""
    if isinstance(value, np.ndarray):
        flags = value.flags
        layout = "C" if flags.c_contiguous else "F" if flags.f_contiguous else "A"
        return ("array", value.dtype.str, value.ndim, layout, bool(flags.writeable))
    if isinstance(value, (bool, np.bool_)):
        return "?"
    if isinstance(value, int):
        return "<i8" if -(1 << 63) <= value < (1 << 63) else None
    if isinstance(value, float):
        return "<f8"
    if isinstance(value, np.generic):
        return value.dtype.str
    if isinstance(value, tuple):
        keys = tuple(arg_key(v) for v in value)
        return None if None in keys else ("tuple", keys)
    return None


class Kernel:
    """A kernel: called from Python, runs the ahead-of-time build or numba's JIT."""

    def __init__(self, function: Callable, options: dict):
        self.py_func = function
        self.options = options
        self.__name__ = function.__name__
        self.__qualname__ = function.__qualname__
        self.__module__ = function.__module__
        self.__doc__ = function.__doc__
        self.key = f"{function.__module__.rsplit('.', 1)[-1]}.{function.__qualname__}"
        self._dispatcher = None
        self._compiled: dict | None = None
        with _LOCK:
            _ALL.append(self)

    def __repr__(self) -> str:
        return f"<quantkit kernel {self.key}>"

    def __call__(self, *args):
        compiled = self._compiled
        if compiled is None:
            compiled = self._compiled = _compiled_kernels().get(self.key, {})
        if compiled:
            function = compiled.get(tuple(arg_key(a) for a in args))
            if function is not None:
                return function(*args)
        return self.call_jit(*args)

    def call_jit(self, *args):
        """The call through numba's JIT, whatever the build holds."""
        dispatcher = self.dispatcher
        if harvest is not None:
            import numba

            harvest.setdefault(self, set()).add(tuple(numba.typeof(a) for a in args))
        return dispatcher(*args)

    @property
    def dispatcher(self):
        """This kernel's numba dispatcher (imports numba on first use)."""
        if self._dispatcher is None:
            with _LOCK:
                if self._dispatcher is None:
                    shadow = _shadow(sys.modules[self.__module__])
                    self._dispatcher = getattr(shadow, self.__name__)
        return self._dispatcher


def _njit(function: Callable, options: dict):
    import numba

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


def _shadow(module: types.ModuleType) -> types.ModuleType:
    """``module`` as numba should see it: kernels as dispatchers, kernel modules as shadows."""
    shadow = _SHADOWS.get(module.__name__)
    if shadow is not None:
        return shadow
    _import_arraymath()
    shadow = _SHADOWS[module.__name__] = types.ModuleType(module.__name__, module.__doc__)
    namespace = shadow.__dict__
    namespace.update(module.__dict__)
    for name, value in module.__dict__.items():
        if isinstance(value, Kernel):
            f = value.py_func
            copy = types.FunctionType(f.__code__, namespace, f.__name__, f.__defaults__, f.__closure__)
            copy.__qualname__, copy.__module__, copy.__doc__ = f.__qualname__, f.__module__, f.__doc__
            namespace[name] = _njit(copy, value.options)
        elif isinstance(value, types.ModuleType) and _is_kernel_module(value):
            namespace[name] = _shadow(value)
    for name, value in module.__dict__.items():  # a kernel imported from another kernel module
        if isinstance(value, Kernel) and value.__module__ != module.__name__:
            namespace[name] = value.dispatcher
    return shadow


def _is_kernel_module(module: types.ModuleType) -> bool:
    return any(isinstance(v, Kernel) for v in module.__dict__.values())


def _compiled_kernels() -> dict[str, dict]:
    global _COMPILED
    if _COMPILED is None:
        with _LOCK:
            if _COMPILED is None:
                _COMPILED = {} if build_set_aside() else _compiled_table.load()
    return _COMPILED


def build_set_aside() -> bool:
    """Whether ``QUANTKIT_KERNELS=jit`` asks for numba's JIT whatever the build holds."""
    return os.environ.get(KERNELS_ENV, "").lower() == "jit"


def uses_build() -> bool:
    """Whether calls may run the ahead-of-time build (present, current and for this CPU)."""
    return bool(_compiled_kernels())


def kernel(function: Callable | None = None, *, inline: bool = False) -> Callable:
    """``function`` as a :class:`Kernel` with quantkit's options; ``inline``: a small helper
    numba pastes into its callers."""
    if function is None:
        return lambda f: kernel(f, inline=inline)
    return Kernel(function, {**_OPTIONS, "inline": "always"} if inline else _OPTIONS)
