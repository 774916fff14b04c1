"""The tensor table of a ``torch.save`` pickle, read without torch.

A PyTorch zip checkpoint's ``data.pkl`` says, per tensor, which stored record holds its bytes
(a persistent id ``('storage', <storage type>, key, location, numel)``) and how the tensor views
it (``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``). This module
unpickles that much, and nothing else, into plain :class:`TensorRef` values: no torch import
(~2 s) and no data read.

It is a strict subset of ``torch.load(weights_only=True)``: the opcodes handled are those
torch's restricted unpickler handles, with the same type checks (SETITEM only on dicts, APPEND
only on lists, BUILD only on an OrderedDict), and the only globals are the storage types, the
dtypes and three rebuild functions torch writes for plain tensors and Parameters, plus
``collections.OrderedDict``. Anything else (another global, opcode or argument shape) raises
:class:`NotUnderstood`: the caller then loads the file with torch as before, which accepts or
refuses it exactly as ``weights_only=True`` does. Nothing a pickle names is ever imported or
called, apart from ``OrderedDict`` and the functions below.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from dataclasses import dataclass

from ..dtypes import BY_ST, DType

# torch.save's legacy typed storage classes (``torch.FloatStorage``...) and their dtypes
_STORAGE_TYPES = {
    "FloatStorage": "F32", "HalfStorage": "F16", "BFloat16Storage": "BF16", "DoubleStorage": "F64",
    "CharStorage": "I8", "ByteStorage": "U8", "ShortStorage": "I16", "IntStorage": "I32",
    "LongStorage": "I64", "BoolStorage": "BOOL",
}
_UNTYPED = "torch.storage.UntypedStorage"  # written with _rebuild_tensor_v3 (float8, uint16...)
_TORCH_DTYPES = {d.name: d for d in BY_ST.values()}  # ``torch.float8_e4m3fn`` -> its DType
_GRAD_DTYPES = {"F32", "F16", "BF16", "F64"}  # dtypes torch lets require grad


class NotUnderstood(Exception):
    """The pickle uses something this reader does not handle: load it with torch instead."""


@dataclass(frozen=True)
class _StorageType:
    dtype: DType | None  # None: untyped (bytes)


@dataclass(frozen=True, eq=False)
class StorageRef:
    """One stored record (``data/<key>`` in the zip) as the pickle describes it."""

    key: str
    dtype: DType | None  # the typed storage's dtype; None for an untyped one
    nbytes: int


@dataclass(frozen=True, slots=True, eq=False)
class TensorRef:
    """A tensor as the pickle rebuilds it: which storage, and how it is viewed. Compared and
    hashed by identity, as torch tensors are (two views are two dict keys)."""

    storage: StorageRef
    dtype: DType
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    storage_offset: int  # in elements

    @property
    def numel(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    def is_contiguous(self) -> bool:
        """C-contiguous, as torch decides it (sizes of 1 have any stride; empty is contiguous)."""
        if self.numel == 0:
            return True
        expected = 1
        for size, stride in zip(reversed(self.shape), reversed(self.stride)):
            if size != 1 and stride != expected:
                return False
            expected *= size
        return True


def _ints(value: object) -> bool:
    return type(value) is tuple and all(type(v) is int and v >= 0 for v in value)


def _rebuild(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype: DType, metadata=None) -> TensorRef:
    if not isinstance(storage, StorageRef) or type(storage_offset) is not int or storage_offset < 0:
        raise NotUnderstood("storage")
    if not (_ints(size) and _ints(stride) and len(size) == len(stride)):
        raise NotUnderstood("size or stride")
    if type(requires_grad) is not bool or (requires_grad and dtype.st not in _GRAD_DTYPES):
        raise NotUnderstood("requires_grad")
    if type(backward_hooks) is not OrderedDict or backward_hooks or metadata is not None:
        raise NotUnderstood("hooks or metadata")
    return TensorRef(storage, dtype, size, stride, storage_offset)


def rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None) -> TensorRef:
    """``torch._utils._rebuild_tensor_v2`` on a typed storage: the dtype is the storage's."""
    if not isinstance(storage, StorageRef) or storage.dtype is None:
        raise NotUnderstood("v2 on an untyped storage")
    return _rebuild(storage, storage_offset, size, stride, requires_grad, backward_hooks, storage.dtype, metadata)


def rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None) -> TensorRef:
    """``torch._utils._rebuild_tensor_v3``: an untyped storage and the dtype given."""
    if not isinstance(storage, StorageRef) or storage.dtype is not None or not isinstance(dtype, DType):
        raise NotUnderstood("v3 on a typed storage")
    return _rebuild(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata)


def rebuild_parameter(data, requires_grad, backward_hooks) -> TensorRef:
    """``torch._utils._rebuild_parameter``: a Parameter is read as the tensor it wraps."""
    if not isinstance(data, TensorRef) or type(requires_grad) is not bool or type(backward_hooks) is not OrderedDict or backward_hooks:
        raise NotUnderstood("parameter")
    if requires_grad and data.dtype.st not in _GRAD_DTYPES:
        raise NotUnderstood("requires_grad")
    return data


_CALLABLES = {
    "collections.OrderedDict": OrderedDict,
    "torch._utils._rebuild_tensor_v2": rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": rebuild_parameter,
}
_GLOBALS: dict[str, object] = {
    **_CALLABLES,
    **{f"torch.{name}": _StorageType(BY_ST[st]) for name, st in _STORAGE_TYPES.items()},
    _UNTYPED: _StorageType(None),
    **{f"torch.{name}": dtype for name, dtype in _TORCH_DTYPES.items()},
}


# The opcodes torch's weights_only unpickler handles that torch.save's protocol 2 uses for a
# state dict; protocol 2's others (EXT*, INST, OBJ, NEWOBJ, PERSID, strings as bytes...) and
# later protocols' (FRAME, MEMOIZE, STACK_GLOBAL...) are not in the table and stop the load.
_OPCODES = (
    pickle.PROTO, pickle.STOP, pickle.GLOBAL, pickle.REDUCE, pickle.BUILD, pickle.BINPERSID, pickle.MARK,
    pickle.APPEND, pickle.APPENDS, pickle.SETITEM, pickle.SETITEMS,
    pickle.TUPLE, pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3, pickle.EMPTY_TUPLE, pickle.EMPTY_LIST, pickle.EMPTY_DICT,
    pickle.NONE, pickle.NEWTRUE, pickle.NEWFALSE, pickle.BININT, pickle.BININT1, pickle.BININT2, pickle.LONG1,
    pickle.BINFLOAT, pickle.BINUNICODE, pickle.BINGET, pickle.LONG_BINGET, pickle.BINPUT, pickle.LONG_BINPUT,
)


class _TableUnpickler(pickle._Unpickler):  # the Python unpickler: its opcode table can be narrowed
    """Unpickles a torch.save pickle into TensorRefs; raises NotUnderstood on anything else."""

    dispatch = {op[0]: pickle._Unpickler.dispatch[op[0]] for op in _OPCODES}

    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data), fix_imports=False)
        self._storages: dict[str, StorageRef] = {}

    def find_class(self, module: str, name: str) -> object:
        found = _GLOBALS.get(f"{module}.{name}")
        if found is None:
            raise NotUnderstood(f"global {module}.{name}")
        return found

    def persistent_load(self, pid: object) -> StorageRef:
        if type(pid) is not tuple or len(pid) != 5 or pid[0] != "storage":
            raise NotUnderstood("persistent id")
        _, kind, key, location, numel = pid
        if not isinstance(kind, _StorageType) or type(key) is not str or type(location) is not str or type(numel) is not int or numel < 0:
            raise NotUnderstood("storage record")
        storage = StorageRef(key, kind.dtype, numel * (kind.dtype.itemsize if kind.dtype else 1))
        seen = self._storages.setdefault(key, storage)
        if (seen.dtype, seen.nbytes) != (storage.dtype, storage.nbytes):  # torch keeps the first: not ours to guess
            raise NotUnderstood("one record read as two storages")
        return seen

    def load_proto(self) -> None:
        if self.read(1)[0] != 2:
            raise NotUnderstood("protocol")
        self.proto = 2

    def load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        if not any(func is allowed for allowed in _CALLABLES.values()) or type(args) is not tuple:
            raise NotUnderstood("reduce")
        self.stack[-1] = func(*args)

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if type(inst) is not OrderedDict or type(state) is not dict:
            raise NotUnderstood("build")
        inst.__dict__.update(state)  # a state_dict's ``_metadata``, as torch sets it

    def load_append(self) -> None:
        item = self.stack.pop()
        if type(self.stack[-1]) is not list:
            raise NotUnderstood("append")
        self.stack[-1].append(item)

    def load_appends(self) -> None:
        items = self.pop_mark()
        if type(self.stack[-1]) is not list:
            raise NotUnderstood("appends")
        self.stack[-1].extend(items)

    def load_setitem(self) -> None:
        value, key = self.stack.pop(), self.stack.pop()
        self._mapping()[key] = value

    def load_setitems(self) -> None:
        items = self.pop_mark()
        if len(items) % 2:
            raise NotUnderstood("setitems")
        target = self._mapping()
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    def _mapping(self) -> dict:
        if type(self.stack[-1]) not in (dict, OrderedDict):
            raise NotUnderstood("setitem")
        return self.stack[-1]

    for _op, _name in ((pickle.PROTO, "load_proto"), (pickle.REDUCE, "load_reduce"), (pickle.BUILD, "load_build"),
                       (pickle.APPEND, "load_append"), (pickle.APPENDS, "load_appends"),
                       (pickle.SETITEM, "load_setitem"), (pickle.SETITEMS, "load_setitems")):
        dispatch[_op[0]] = locals()[_name]
    del _op, _name


def load_table(data: bytes) -> object:
    """What ``data.pkl`` holds, tensors as :class:`TensorRef`; NotUnderstood for anything else
    (a global, opcode or argument this reader does not handle, or a damaged pickle)."""
    try:
        return _TableUnpickler(data).load()
    except NotUnderstood:
        raise
    except Exception as exc:  # damaged or unusual: torch says what is wrong with it
        raise NotUnderstood(f"{type(exc).__name__}: {exc}") from None
