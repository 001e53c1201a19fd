"""Backbones run through LiteRT with XNNPACK: the Keras model converted once by TensorFlow's
converter, cached beside the weights, and a small pool of interpreters per process (an interpreter
must not be called from two threads at once).

The cached file's name carries a digest of the weights and of TensorFlow's version, so new weights
or a new converter give a new file. int8 models are calibrated on catalogue photos by
`manage.py quantize_embedding` (which gives them to `convert`); this module never makes one itself.
"""

import contextlib
import functools
import hashlib
import importlib.metadata
import io
import logging
import os
import queue
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from django.conf import settings

from .backbones import Backbone

logger = logging.getLogger(__name__)


class InterpreterBusy(Exception):
    """Every interpreter of the pool stayed in use for longer than the caller would wait."""


def model_file(backbone: Backbone) -> Path:
    """Where the converted model of `backbone` (its weights, at its precision) is cached."""
    return converted_file(backbone.model_name, [backbone.weights()], backbone.precision)


def converted_file(name: str, weights: list[Path], precision: str = "fp32") -> Path:
    """Where a model built from these weight files is cached once converted."""
    digests = [_weights_digest(path, path.stat().st_size, path.stat().st_mtime_ns) for path in weights]
    digest = digests[0] if len(digests) == 1 else hashlib.sha256("".join(digests).encode()).hexdigest()[:16]
    return Path(settings.EMBEDDING_MODEL_DIR) / f"{name}-{digest}-{precision}.tflite"


def kept_int8(backbone: Backbone) -> bool:
    """Whether an int8 model of `backbone` passed its quality check and the catalogue was embedded with
    it (manage.py quantize_embedding writes its report last)."""
    return model_file(backbone).with_suffix(".json").is_file()


def _converter_version() -> str:
    """TensorFlow's version, without importing it (web processes that only run LiteRT never do)."""
    for distribution in ("tensorflow-cpu", "tensorflow"):
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


@functools.lru_cache(maxsize=8)
def _weights_digest(weights: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256(_converter_version().encode())
    with weights.open("rb") as file:
        digest.update(hashlib.file_digest(file, "sha256").digest())
    return digest.hexdigest()[:16]


def convert(keras_model, calibration: np.ndarray | None = None) -> bytes:
    """The model as a LiteRT flatbuffer: float32, or with `calibration` (preprocessed model inputs of
    real photos, a few hundred) fully quantised to int8 with float input and output."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    if calibration is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([calibration[i : i + 1]] for i in range(len(calibration)))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    with contextlib.redirect_stdout(io.StringIO()) as printed:  # Keras prints every captured tensor
        model = converter.convert()
    logger.debug("Converter output: %s", printed.getvalue())
    return model


def write_atomically(path: Path, content: bytes) -> None:
    """Other processes may convert at the same time: write aside, then move into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tflite.partial")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(content)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


class InterpreterPool:
    """Up to `size` interpreters of one model, made as they are first needed, each on `threads` threads."""

    def __init__(self, model_path: Path, size: int, threads: int):
        from ai_edge_litert.interpreter import Interpreter

        def make():
            interpreter = Interpreter(model_path=str(model_path), num_threads=threads)
            interpreter.allocate_tensors()  # the converted model takes one image (batch of 1)
            return interpreter

        self._make = make
        self._idle: queue.LifoQueue = queue.LifoQueue()
        self._idle.put(make())  # fail here, at once, if the file is not a model this runtime runs
        self._made, self._size = 1, max(size, 1)
        self._lock = threading.Lock()

    @contextmanager
    def interpreter(self, wait_seconds: float | None = None):
        try:
            interpreter = self._idle.get_nowait()
        except queue.Empty:
            interpreter = self._grow() or self._wait(wait_seconds)
        try:
            yield interpreter
        finally:
            self._idle.put(interpreter)

    def _grow(self):
        with self._lock:
            if self._made >= self._size:
                return None
            self._made += 1
        return self._make()

    def _wait(self, wait_seconds: float | None):
        try:
            return self._idle.get(timeout=wait_seconds)
        except queue.Empty:
            raise InterpreterBusy(f"no interpreter free within {wait_seconds:g}s") from None


def run(interpreter, inputs: np.ndarray) -> np.ndarray:
    """Model inputs (n, size, size, 3) -> outputs, one image at a time: with XNNPACK a batch of one is
    the fastest per image here (see README)."""
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    outputs = []
    for row in inputs:
        interpreter.set_tensor(source["index"], row[None])
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(target["index"])[0].copy())
    return np.stack(outputs)
