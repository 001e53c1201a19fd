"""Read a PyTorch checkpoint in the legacy (pre-1.6, non-zip) format without PyTorch.

The legacy format is a run of pickles followed by raw storage bytes:
magic number, protocol version, system info, the state dict (whose tensors refer to storages by
key through pickle persistent ids), then the list of storage keys, then for each key an int64
element count followed by the storage's bytes. Only the classes a state dict needs are allowed to
be unpickled, so a hostile file cannot run code.
"""

import pickle
from collections import OrderedDict
from pathlib import Path
from typing import BinaryIO

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


class CheckpointError(ValueError):
    pass


class _StorageType:
    def __init__(self, name: str):
        self.dtype = np.dtype(STORAGE_DTYPES[name])


class _TensorRef:
    def __init__(self, storage_key: str, offset: int, size: tuple, stride: tuple):
        self.storage_key, self.offset, self.size, self.stride = storage_key, offset, tuple(size), tuple(stride)


def _rebuild_tensor_v2(storage_key, storage_offset, size, stride, *unused):
    return _TensorRef(storage_key, storage_offset, size, stride)


class _StateDictUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO):
        super().__init__(file)
        self.storage_types: dict[str, _StorageType] = {}

    def find_class(self, module: str, name: str):  # only what a state dict is made of
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        raise CheckpointError(f"unexpected object {module}.{name} in checkpoint")

    def persistent_load(self, saved_id):
        kind, storage_type, key, _location, _numel, _view = saved_id
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"unexpected persistent id {saved_id!r}")
        self.storage_types[key] = storage_type
        return key


def read_state_dict(path: Path) -> dict[str, np.ndarray]:
    """The checkpoint's tensors as numpy arrays, honouring each tensor's strides."""
    with open(path, "rb") as file:
        try:
            magic_number = _StateDictUnpickler(file).load()
        except (pickle.UnpicklingError, EOFError, ValueError):
            magic_number = None
        if magic_number != LEGACY_MAGIC_NUMBER:
            raise CheckpointError(f"{path} is not a legacy PyTorch checkpoint")
        _StateDictUnpickler(file).load()  # protocol version
        system_info = _StateDictUnpickler(file).load()
        if not isinstance(system_info, dict) or not system_info.get("little_endian", True):
            raise CheckpointError(f"{path} was not written on a little-endian machine")
        unpickler = _StateDictUnpickler(file)
        state_dict = unpickler.load()
        storage_keys = _StateDictUnpickler(file).load()
        storages = {}
        for key in storage_keys:
            dtype = unpickler.storage_types[key].dtype
            count = int(np.frombuffer(file.read(8), dtype="<i8")[0])
            data = file.read(count * dtype.itemsize)
            if len(data) != count * dtype.itemsize:
                raise CheckpointError(f"{path} is truncated")
            storages[key] = np.frombuffer(data, dtype=dtype)
    arrays = {}
    for name, ref in state_dict.items():
        storage = storages[ref.storage_key]
        last = ref.offset + sum((size - 1) * step for size, step in zip(ref.size, ref.stride) if size > 0)
        if ref.offset < 0 or last >= len(storage) or any(step < 0 for step in ref.stride):
            raise CheckpointError(f"tensor {name} lies outside its storage")
        view = np.lib.stride_tricks.as_strided(
            storage[ref.offset :],
            shape=ref.size,
            strides=tuple(step * storage.itemsize for step in ref.stride),
            writeable=False,
        )
        arrays[name] = np.ascontiguousarray(view)  # a copy in C order, independent of the file buffer
    return arrays
