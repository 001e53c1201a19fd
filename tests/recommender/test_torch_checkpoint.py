"""The legacy checkpoint reader against hostile files: every malformed file is a CheckpointError, cheaply."""

import pickle
import pickletools
import random
import struct
import tracemalloc
from typing import NamedTuple

import numpy as np
import pytest

from recommender.encoding.torch_checkpoint import LEGACY_MAGIC_NUMBER, CheckpointError, read_state_dict


# Pickle opcodes written by hand, so the files refer to torch's classes without torch installed.
class Global(NamedTuple):
    module: str
    name: str


class Call(NamedTuple):
    function: object
    args: tuple


class PersistentId(NamedTuple):
    saved_id: object


ORDERED_DICT = Global("collections", "OrderedDict")
FLOAT = Global("torch", "FloatStorage")


def ops(value) -> bytes:
    """Protocol 2 opcodes that push `value` on the unpickler's stack."""
    if isinstance(value, Global):
        return f"c{value.module}\n{value.name}\n".encode()
    if isinstance(value, Call):
        return ops(value.function) + ops(value.args) + pickle.REDUCE
    if isinstance(value, PersistentId):
        return ops(value.saved_id) + pickle.BINPERSID
    if isinstance(value, tuple):
        return pickle.MARK + b"".join(map(ops, value)) + pickle.TUPLE
    if isinstance(value, list):
        return pickle.EMPTY_LIST + pickle.MARK + b"".join(map(ops, value)) + pickle.APPENDS
    return pickletools.optimize(pickle.dumps(value, protocol=2))[2:-1]  # without PROTO and STOP


def storage_id(key="0", numel=6, storage_type=FLOAT):
    return ("storage", storage_type, key, "cpu", numel, None)


def tensor(offset, size, stride, saved_id=None):
    persistent_id = PersistentId(saved_id or storage_id())
    rebuild = Global("torch._utils", "_rebuild_tensor_v2")
    return Call(rebuild, (persistent_id, offset, size, stride, False, Call(ORDERED_DICT, ())))


def checkpoint(tensors: dict, storages: dict[str, np.ndarray], counts: dict[str, int] | None = None) -> bytes:
    state_dict = Call(ORDERED_DICT, ([(name, ref) for name, ref in tensors.items()],))
    parts = [pickle.dumps(value, protocol=2) for value in (LEGACY_MAGIC_NUMBER, 1001, {"little_endian": True})]
    parts += [pickle.PROTO + b"\x02" + ops(state_dict) + pickle.STOP, pickle.dumps(list(storages), protocol=2)]
    for key, array in storages.items():
        parts += [struct.pack("<q", (counts or {}).get(key, array.size)), array.tobytes()]
    return b"".join(parts)


STORAGE = np.arange(6, dtype=np.float32)


def small_checkpoint() -> bytes:
    steps = storage_id("1", numel=1, storage_type=Global("torch", "LongStorage"))
    return checkpoint(
        {
            "weight": tensor(0, (2, 3), (3, 1)),
            "transposed": tensor(0, (3, 2), (1, 3)),
            "bias": tensor(4, (2,), (1,)),
            "steps": tensor(0, (), (), steps),
        },
        {"0": STORAGE, "1": np.array([7], dtype=np.int64)},
    )


def read_bytes(tmp_path, data: bytes) -> dict[str, np.ndarray]:
    path = tmp_path / "checkpoint.pth"
    path.write_bytes(data)
    return read_state_dict(path)


def assert_refused_cheaply(tmp_path, data: bytes, match: str | None = None):
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=match):
            read_bytes(tmp_path, data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20


def test_small_valid_checkpoint_reads_with_its_strides(tmp_path):
    arrays = read_bytes(tmp_path, small_checkpoint())

    assert list(arrays) == ["weight", "transposed", "bias", "steps"]
    np.testing.assert_array_equal(arrays["weight"], [[0, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(arrays["transposed"], [[0, 3], [1, 4], [2, 5]])
    np.testing.assert_array_equal(arrays["bias"], [4, 5])
    assert arrays["weight"].dtype == np.float32 and arrays["transposed"].flags.c_contiguous
    assert arrays["steps"].dtype == np.int64 and arrays["steps"].item() == 7


@pytest.mark.parametrize(
    "size, stride",
    [((2**28,), (0,)), ((2**14, 2**14), (0, 0)), ((2, 3), (0, 1)), ((2**40,), (1,)), ((7,), (1,)), ((1, 7), (9, 1))],
)
def test_tensor_larger_than_its_storage_is_refused(tmp_path, size, stride):
    data = checkpoint({"weight": tensor(0, size, stride)}, {"0": STORAGE})
    assert_refused_cheaply(tmp_path, data, "outside its storage")


@pytest.mark.parametrize("count", [2**60, 2**62 // 4 + 1, 7, -1])
def test_false_element_count_is_refused(tmp_path, count):
    data = checkpoint({"weight": tensor(0, (6,), (1,))}, {"0": STORAGE}, counts={"0": count})
    assert_refused_cheaply(tmp_path, data, "claims")


@pytest.mark.parametrize(
    "saved_id",
    [
        "storage",
        ("storage",),
        ["storage", FLOAT, "0", "cpu", 6, None],
        ("module", FLOAT, "0", "cpu", 6, None),
        ("storage", "FloatStorage", "0", "cpu", 6, None),
        ("storage", FLOAT, 0, "cpu", 6, None),
        ("storage", FLOAT, ("0",), "cpu", 6, None),
        ("storage", FLOAT, "0", None, 6, None),
        ("storage", FLOAT, "0", "cpu", -6, None),
        ("storage", FLOAT, "0", "cpu", "6", None),
        ("storage", FLOAT, "0", "cpu", 6, ("view", 0, 6)),
        ("storage", FLOAT, "0", "cpu", 6, None, None),
    ],
)
def test_wrong_persistent_id_is_refused(tmp_path, saved_id):
    data = checkpoint({"weight": tensor(0, (6,), (1,), saved_id)}, {"0": STORAGE})
    assert_refused_cheaply(tmp_path, data)


@pytest.mark.parametrize(
    "offset, size, stride",
    [
        (-1, (6,), (1,)),
        (7, (0,), (1,)),
        (6, (1,), (1,)),
        ("0", (6,), (1,)),
        (0, 6, 1),
        (0, (6,), (1, 1)),
        (0, (6,), (-1,)),
        (0, (-6,), (1,)),
        (0, ("6",), (1,)),
        (0, (1,) * 100, (1,) * 100),
    ],
)
def test_bad_tensor_reference_is_refused(tmp_path, offset, size, stride):
    data = checkpoint({"weight": tensor(offset, size, stride)}, {"0": STORAGE})
    assert_refused_cheaply(tmp_path, data)


def test_storages_must_match_the_state_dict(tmp_path):
    tensors = {"weight": tensor(0, (6,), (1,)), "bias": tensor(0, (6,), (1,), storage_id("9"))}
    unlisted = checkpoint(tensors, {"0": STORAGE})
    assert_refused_cheaply(tmp_path, unlisted, "does not hold")
    unknown = checkpoint({"weight": tensor(0, (6,), (1,))}, {"0": STORAGE, "9": STORAGE})
    assert_refused_cheaply(tmp_path, unknown, "unknown storage")
    not_a_tensor = checkpoint({"weight": 1.5}, {})
    assert_refused_cheaply(tmp_path, not_a_tensor, "not a tensor")


@pytest.mark.parametrize(
    "opcodes",
    [
        # CPython's C unpickler would grow its memo table to 2**28 entries (2 GiB) for these 12 bytes.
        b"N" + pickle.LONG_BINPUT + struct.pack("<I", 2**27),
        # and the Python one would allocate 4 GiB for this bytearray before finding the file too short.
        pickle.BYTEARRAY8 + struct.pack("<Q", 2**32),
    ],
)
def test_hostile_pickle_sizes_do_not_allocate(tmp_path, opcodes):
    assert_refused_cheaply(tmp_path, pickle.PROTO + b"\x05" + opcodes + pickle.STOP)


def test_every_truncation_is_refused(tmp_path):
    data = small_checkpoint()
    for cut in range(len(data)):
        with pytest.raises(CheckpointError):
            read_bytes(tmp_path, data[:cut])


def test_flipped_bytes_raise_only_checkpoint_errors(tmp_path):
    data = small_checkpoint()
    rng = random.Random(13)
    for _ in range(500):
        corrupted = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            corrupted[rng.randrange(len(data))] = rng.randrange(256)
        try:
            read_bytes(tmp_path, bytes(corrupted))
        except CheckpointError:
            pass
