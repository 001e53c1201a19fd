"""A backbone's model, built once per process, called directly on whole batches of pixels."""

import logging
import threading
import time

import numpy as np
from PIL import Image

from .backbones import Backbone
from .preprocessing import image_pixels

logger = logging.getLogger(__name__)


class EmbedderBusy(Exception):
    """The model stayed busy with other requests for longer than the caller would wait."""


class Embedder:
    def __init__(self, backbone: Backbone):
        import tensorflow as tf

        self.backbone = backbone
        self.model = backbone.build()
        size = backbone.input_size
        self._forward = tf.function(
            lambda batch: self.model(batch, training=False),
            input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32)],
        )
        self._lock = threading.Lock()

    def embed_pixels(self, pixels: np.ndarray, wait_seconds: float | None = None) -> np.ndarray:
        """(n, size, size, 3) uint8 RGB -> (n, dimension) float32, each row of unit length.

        One batch at a time per process (TensorFlow already uses every core); with `wait_seconds`,
        raise EmbedderBusy rather than queue for the model any longer than that.
        """
        if len(pixels) == 0:
            return np.zeros((0, self.backbone.dimension), dtype=np.float32)
        inputs = self.backbone.preprocess(pixels)
        if not self._lock.acquire(timeout=-1 if wait_seconds is None else wait_seconds):
            raise EmbedderBusy(f"the {self.backbone.name} model was busy for {wait_seconds:g}s")
        try:
            features = self._forward(inputs).numpy()
        finally:
            self._lock.release()
        return normalise_rows(features)

    def embed_image(self, image: Image.Image, wait_seconds: float | None = None) -> np.ndarray:
        """One upright RGB image (a shopper's photo) as a unit vector, prepared like catalogue images."""
        return self.embed_pixels(image_pixels(image, self.backbone.input_size)[None], wait_seconds)[0]


def normalise_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


_embedders: dict[str, Embedder] = {}
_embedders_lock = threading.Lock()


def get_embedder(backbone: Backbone) -> Embedder:
    """The process's embedder for a backbone, built on first use."""
    with _embedders_lock:  # a warm-up thread and a request may ask at once: build it only once
        if backbone.name not in _embedders:
            started = time.monotonic()
            _embedders[backbone.name] = Embedder(backbone)
            logger.info("Loaded %s in %.1fs", backbone.name, time.monotonic() - started)
        return _embedders[backbone.name]
