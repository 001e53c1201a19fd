"""A backbone's model, built once per process, called directly on whole batches of pixels."""

import logging
import threading
import time

import numpy as np
from PIL import Image

from .backbones import Backbone
from .preprocessing import image_pixels

logger = logging.getLogger(__name__)


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

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(n, size, size, 3) uint8 RGB -> (n, dimension) float32, each row of unit length."""
        if len(pixels) == 0:
            return np.zeros((0, self.backbone.dimension), dtype=np.float32)
        with self._lock:  # one batch at a time per process: TensorFlow already uses every core
            features = self._forward(self.backbone.preprocess(pixels)).numpy()
        return normalise_rows(features)

    def embed_image(self, image: Image.Image) -> np.ndarray:
        """One upright RGB image (a shopper's photo) as a unit vector, prepared like catalogue images."""
        return self.embed_pixels(image_pixels(image, self.backbone.input_size)[None])[0]


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
