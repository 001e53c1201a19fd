"""A backbone's model, loaded once per process, turning pixels into unit vectors.

LiteRT (XNNPACK) runs it by default; Keras is the reference, and the fallback, logged, when the
runtime or the conversion is not to be had. An int8 backbone has no fallback: its vectors live in
their own embedding space, and a float model would put wrong vectors there.
"""

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from django.conf import settings
from PIL import Image

from .backbones import Backbone, WeightsNotFound
from .preprocessing import image_pixels
from .projection import colour_features, head_inputs

logger = logging.getLogger(__name__)


class EmbedderBusy(Exception):
    """The model stayed busy with other requests for longer than the caller would wait."""


class Embedder:
    runtime = ""

    def __init__(self, backbone: Backbone):
        self.backbone = backbone

    def embed_pixels(self, pixels: np.ndarray, wait_seconds: float | None = None) -> np.ndarray:
        """(n, size, size, 3) uint8 RGB -> (n, dimension) float32, each row of unit length; with
        `wait_seconds`, raise EmbedderBusy rather than queue for the model any longer than that."""
        if len(pixels) == 0:
            return np.zeros((0, self.backbone.dimension), dtype=np.float32)
        return normalise_rows(self._features(self.backbone.preprocess(pixels), wait_seconds))

    def embed_catalogue_pixels(self, pixels: np.ndarray, labels: Mapping[str, Sequence[str]]) -> np.ndarray:
        """Catalogue photos, told their products' labels (field -> each row's value): a trained
        model's vectors carry them (projection.py); a backbone's own do not."""
        return self.embed_pixels(pixels)

    def embed_image(self, image: Image.Image, wait_seconds: float | None = None) -> np.ndarray:
        """One upright RGB image (a shopper's photo) as a unit vector, prepared like catalogue images."""
        return self.embed_pixels(image_pixels(image, self.backbone.input_size)[None], wait_seconds)[0]

    def _features(self, inputs: np.ndarray, wait_seconds: float | None) -> np.ndarray:
        raise NotImplementedError


class KerasEmbedder(Embedder):
    """The Keras model called directly on whole batches, one batch at a time per process (TensorFlow
    already uses every core)."""

    runtime = "keras"

    def __init__(self, backbone: Backbone, model=None):
        import tensorflow as tf

        super().__init__(backbone)
        self.model = model or backbone.build()
        size = backbone.input_size
        self._forward = tf.function(
            lambda batch: self.model(batch, training=False),
            input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32)],
        )
        self._lock = threading.Lock()

    def _features(self, inputs, wait_seconds):
        if not self._lock.acquire(timeout=-1 if wait_seconds is None else wait_seconds):
            raise EmbedderBusy(f"the {self.backbone.name} model was busy for {wait_seconds:g}s")
        try:
            return self._forward(inputs).numpy()
        finally:
            self._lock.release()


class LiteRTEmbedder(Embedder):
    """The converted model on a pool of EMBEDDING_INTERPRETERS interpreters of EMBEDDING_THREADS threads."""

    def __init__(self, backbone: Backbone):
        from . import litert

        super().__init__(backbone)
        path = litert.model_file(backbone)
        if not path.is_file():
            if backbone.precision == "int8":
                raise WeightsNotFound(f"No int8 model at {path}: run manage.py quantize_embedding first.")
            logger.info("Converting %s for LiteRT into %s", backbone.name, path)
            litert.write_atomically(path, litert.convert(backbone.build()))
        self.pool = litert.InterpreterPool(path, settings.EMBEDDING_INTERPRETERS, settings.EMBEDDING_THREADS)
        self.runtime = f"litert {backbone.precision}"
        self._spread = ThreadPoolExecutor(max_workers=settings.EMBEDDING_INTERPRETERS, thread_name_prefix="litert")

    def _features(self, inputs, wait_seconds):
        """A batch is shared out between the pool's interpreters, each running its part in a thread."""
        parts = np.array_split(inputs, min(len(inputs), settings.EMBEDDING_INTERPRETERS))
        if len(parts) == 1:
            return self._run(inputs, wait_seconds)
        return np.concatenate(list(self._spread.map(lambda part: self._run(part, wait_seconds), parts)))

    def _run(self, inputs, wait_seconds):
        from .litert import InterpreterBusy, run

        try:
            with self.pool.interpreter(wait_seconds) as interpreter:
                return run(interpreter, inputs)
        except InterpreterBusy as exc:
            raise EmbedderBusy(str(exc)) from None


class ProjectedEmbedder(Embedder):
    """A trained model: the base backbone's embedder, then the trained head (numpy, on the same pixels)."""

    def __init__(self, backbone: Backbone, base: Embedder):
        super().__init__(backbone)
        self.base = base
        self.runtime = f"{base.runtime} + trained head"

    def embed_pixels(self, pixels: np.ndarray, wait_seconds: float | None = None) -> np.ndarray:
        return self._project(pixels, None, wait_seconds)

    def embed_catalogue_pixels(self, pixels: np.ndarray, labels: Mapping[str, Sequence[str]]) -> np.ndarray:
        return self._project(pixels, labels)

    def _project(self, pixels, labels, wait_seconds=None) -> np.ndarray:
        if len(pixels) == 0:
            return np.zeros((0, self.backbone.dimension), dtype=np.float32)
        inputs = head_inputs(self.base.embed_pixels(pixels, wait_seconds), colour_features(pixels))
        return self.backbone.trained.head.apply(inputs, labels)


def normalise_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def load_embedder(backbone: Backbone) -> Embedder:
    if backbone.trained is not None:
        from .backbones import get_backbone

        return ProjectedEmbedder(backbone, get_embedder(get_backbone(backbone.trained.base)))
    if backbone.precision == "int8":
        return LiteRTEmbedder(backbone)
    if settings.EMBEDDING_RUNTIME == "keras":
        return KerasEmbedder(backbone)
    try:
        return LiteRTEmbedder(backbone)
    except WeightsNotFound:  # Keras could not build it either
        raise
    except Exception as exc:  # no runtime, or a model the converter or runtime cannot take
        logger.warning("LiteRT cannot run %s (%s: %s); using Keras", backbone.name, type(exc).__name__, exc)
        return KerasEmbedder(backbone)


_embedders: dict[str, Embedder] = {}
_embedders_lock = threading.RLock()  # a trained model loads its base backbone inside


def get_embedder(backbone: Backbone) -> Embedder:
    """The process's embedder for a backbone, loaded on first use."""
    with _embedders_lock:  # a warm-up thread and a request may ask at once: load it only once
        if backbone.name not in _embedders:
            started = time.monotonic()
            _embedders[backbone.name] = embedder = load_embedder(backbone)
            logger.info("Loaded %s (%s) in %.1fs", backbone.name, embedder.runtime, time.monotonic() - started)
        return _embedders[backbone.name]
