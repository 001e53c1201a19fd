"""Read a PyTorch checkpoint in the legacy (pre-1.6, non-zip) format without PyTorch.

The legacy format is a run of pickles followed by raw storage bytes:
magic number, protocol version, system info, the state dict (whose tensors refer to storages by
key through pickle persistent ids), then the list of storage keys, then for each key an int64
element count followed by the storage's bytes. Only the classes a state dict needs are allowed to
be unpickled, so a hostile file cannot run code, and every size the file states is checked against
the bytes it holds, so a hostile file cannot make the reader allocate more than the file's size
(plus the arrays its storages can fill). Every malformed file raises `CheckpointError`.
"""

import io
import math
import pickle
import struct
from collections import OrderedDict
from pathlib import Path

import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
MAX_DIMS = 32
# What the pure-Python unpickler raises on garbage (a bad opcode, an empty stack, a call with the
# wrong arguments...), besides our own CheckpointError.
UNPICKLING_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    struct.error,
    OverflowError,
    RecursionError,
)


class CheckpointError(ValueError):
    pass


class _StorageType:
    def __init__(self, name: str):
        self.dtype = np.dtype(STORAGE_DTYPES[name])


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class _TensorRef:
    def __init__(self, storage_key: str, offset: int, size: tuple, stride: tuple):
        if not isinstance(storage_key, str) or not _is_count(offset):
            raise CheckpointError(f"bad tensor storage or offset {storage_key!r}, {offset!r}")
        shaped = isinstance(size, tuple | list) and isinstance(stride, tuple | list) and len(size) == len(stride)
        if not shaped or len(size) > MAX_DIMS or not all(map(_is_count, (*size, *stride))):
            raise CheckpointError(f"bad tensor size or stride {size!r}, {stride!r}")
        self.storage_key, self.offset, self.size, self.stride = storage_key, offset, tuple(size), tuple(stride)


def _rebuild_tensor_v2(storage_key, storage_offset, size, stride, *unused):
    return _TensorRef(storage_key, storage_offset, size, stride)


class _StateDictUnpickler(pickle._Unpickler):
    # The pure-Python unpickler: the C one grows its memo table to whatever index a PUT names, so
    # a dozen hostile bytes can make it allocate gigabytes.

    def _refuse_bytearray(self):  # the unpickler would allocate the size it names before reading
        raise CheckpointError("unexpected bytearray in checkpoint")

    dispatch = pickle._Unpickler.dispatch | {pickle.BYTEARRAY8[0]: _refuse_bytearray}

    def __init__(self, file: io.BytesIO, storage_types: dict[str, _StorageType]):
        super().__init__(file)
        self.storage_types = storage_types

    def find_class(self, module: str, name: str):  # only what a state dict is made of
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        raise CheckpointError(f"unexpected object {module}.{name} in checkpoint")

    def persistent_load(self, saved_id):
        # ('storage', storage type, key, location, element count, view metadata); views are not supported.
        if not (isinstance(saved_id, tuple) and len(saved_id) == 6):
            raise CheckpointError(f"unexpected persistent id {saved_id!r}")
        kind, storage_type, key, location, numel, view = saved_id
        if (
            kind != "storage"
            or not isinstance(storage_type, _StorageType)
            or not isinstance(key, str)
            or not isinstance(location, str)
            or not _is_count(numel)
            or view is not None
        ):
            raise CheckpointError(f"unexpected persistent id {saved_id!r}")
        if self.storage_types.setdefault(key, storage_type).dtype != storage_type.dtype:
            raise CheckpointError(f"storage {key} is given two types")
        return key


def read_state_dict(path: Path) -> dict[str, np.ndarray]:
    """The checkpoint's tensors as numpy arrays, honouring each tensor's strides."""
    file = io.BytesIO(Path(path).read_bytes())
    storage_types: dict[str, _StorageType] = {}

    def load():
        try:
            return _StateDictUnpickler(file, storage_types).load()
        except CheckpointError:
            raise
        except UNPICKLING_ERRORS as error:
            raise CheckpointError(f"{path} is not a readable checkpoint: {error!r}") from error

    if load() != LEGACY_MAGIC_NUMBER:
        raise CheckpointError(f"{path} is not a legacy PyTorch checkpoint")
    load()  # protocol version
    system_info = load()
    if not isinstance(system_info, dict) or not system_info.get("little_endian", True):
        raise CheckpointError(f"{path} was not written on a little-endian machine")
    state_dict = load()
    storage_keys = load()
    if not isinstance(state_dict, dict) or not isinstance(storage_keys, list):
        raise CheckpointError(f"{path} does not hold a state dict")
    storages = {key: _read_storage(file, key, storage_types, path) for key in storage_keys}
    return {name: _tensor(name, ref, storages) for name, ref in state_dict.items()}


def _read_storage(file: io.BytesIO, key, storage_types: dict[str, _StorageType], path: Path) -> np.ndarray:
    if not isinstance(key, str) or key not in storage_types:
        raise CheckpointError(f"{path} lists an unknown storage {key!r}")
    dtype = storage_types[key].dtype
    header = file.read(8)
    if len(header) != 8:
        raise CheckpointError(f"{path} is truncated")
    (count,) = struct.unpack("<q", header)
    left = len(file.getbuffer()) - file.tell()
    if not 0 <= count <= left // dtype.itemsize:
        raise CheckpointError(f"storage {key} claims {count} elements but {path} has {left} bytes left")
    return np.frombuffer(file.read(count * dtype.itemsize), dtype=dtype)


def _tensor(name, ref, storages: dict[str, np.ndarray]) -> np.ndarray:
    if not isinstance(name, str) or not isinstance(ref, _TensorRef):
        raise CheckpointError(f"state dict entry {name!r} is not a tensor")
    if ref.storage_key not in storages:
        raise CheckpointError(f"tensor {name} refers to a storage the file does not hold")
    storage = storages[ref.storage_key]
    count = math.prod(ref.size)
    if count == 0:
        if ref.offset > len(storage):
            raise CheckpointError(f"tensor {name} lies outside its storage")
        return np.empty(ref.size, dtype=storage.dtype)
    # A zero stride repeats elements, so a tiny storage could fill a huge array: every element must
    # be one of the storage's, each dimension stepping over distinct ones.
    last = ref.offset + sum((size - 1) * step for size, step in zip(ref.size, ref.stride))
    if count > len(storage) or last >= len(storage) or any(s > 1 and not step for s, step in zip(ref.size, ref.stride)):
        raise CheckpointError(f"tensor {name} lies outside its storage")
    view = np.lib.stride_tricks.as_strided(
        storage[ref.offset :],
        shape=ref.size,
        strides=tuple(step * storage.itemsize if size > 1 else 0 for size, step in zip(ref.size, ref.stride)),
        writeable=False,
    )
    return np.ascontiguousarray(view)  # a copy in C order, independent of the file buffer
