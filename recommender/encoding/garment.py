"""Finding the garment in a shopper's photo, so that search embeds the product and not the room.

The locator is EfficientNet-Lite2's first stages (ImageNet weights, frozen, up to stride 16) run on
the photo at 160 px, with a small trained head that turns three of their feature maps (strides 4, 8
and 16) into a 40 x 40 map of "product here" probabilities. The head was trained on shopper-like composites
of catalogue photos whose product masks are known (`manage.py train_garment_locator`); its weights
ship beside this module. Regions are the connected areas of the map, most probable mass first.
"""

import hashlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from django.conf import settings
from PIL import Image
from scipy import ndimage

from . import efficientnet_lite
from .backbones import efficientnet_lite_weights, tf_style

logger = logging.getLogger(__name__)

NETWORK = "efficientnet_lite2"
INPUT_SIZE = 160
MAP_CELLS = INPUT_SIZE // 4  # the head's output: the stride-4 feature map's size
FEATURE_LAYERS = ("block3_add", "block6_add", "block14_add")  # strides 4, 8 and 16
HEAD_WEIGHTS = Path(__file__).with_name("garment_locator_head.weights.h5")
# A map cell counts as product above this probability; set on shopper photos of validation-split products.
THRESHOLD = 0.4
MAX_REGIONS = 3
# A second region is offered only when it holds at least this share of the first one's mass.
MIN_REGION_SHARE = 0.25
MIN_SIDE = 0.02  # the smallest crop side, as a fraction of the photo's, a shopper may ask for


class InvalidBox(ValueError):
    pass


@dataclass(frozen=True)
class Box:
    """A rectangle in a photo, as fractions of its width (x) and height (y)."""

    x0: float
    y0: float
    x1: float
    y1: float

    WHOLE: ClassVar["Box"]

    @classmethod
    def parse(cls, text: str) -> "Box":
        """From "x0,y0,x1,y1"; raises InvalidBox saying what is wrong."""
        parts = text.split(",")
        try:
            numbers = [float(part) for part in parts]
        except ValueError:
            numbers = []
        if len(numbers) != 4 or not all(np.isfinite(numbers)):
            raise InvalidBox("Give the crop as four numbers x0,y0,x1,y1 (fractions of the width and height).")
        box = cls(*numbers)
        if not (0 <= box.x0 < box.x1 <= 1 and 0 <= box.y0 < box.y1 <= 1):
            raise InvalidBox("The crop must lie inside the photo: 0 ≤ x0 < x1 ≤ 1 and 0 ≤ y0 < y1 ≤ 1.")
        if box.x1 - box.x0 < MIN_SIDE - 1e-9 or box.y1 - box.y0 < MIN_SIDE - 1e-9:  # 0.12 - 0.10 < 0.02 in floats
            raise InvalidBox(f"The crop is too small: each side must be at least {MIN_SIDE:.0%} of the photo's.")
        return box

    @property
    def param(self) -> str:
        return ",".join(f"{value:.4f}" for value in (self.x0, self.y0, self.x1, self.y1))

    @property
    def left_pct(self) -> float:
        return self.x0 * 100

    @property
    def top_pct(self) -> float:
        return self.y0 * 100

    @property
    def width_pct(self) -> float:
        return (self.x1 - self.x0) * 100

    @property
    def height_pct(self) -> float:
        return (self.y1 - self.y0) * 100

    def crop(self, image: Image.Image) -> Image.Image:
        if self == Box.WHOLE:
            return image
        width, height = image.size
        pixels = (self.x0 * width, self.y0 * height, self.x1 * width, self.y1 * height)
        left, top, right, bottom = (round(value) for value in pixels)
        left, top = min(left, width - 1), min(top, height - 1)  # a tiny photo: at least its last pixel
        return image.crop((left, top, max(right, left + 1), max(bottom, top + 1)))


Box.WHOLE = Box(0.0, 0.0, 1.0, 1.0)


def square_pixels(image: Image.Image) -> np.ndarray:
    """The photo padded (white) to the locator's square input, uint8."""
    scale = INPUT_SIZE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    square = Image.new("RGB", (INPUT_SIZE, INPUT_SIZE), (255, 255, 255))
    corner = ((INPUT_SIZE - size[0]) // 2, (INPUT_SIZE - size[1]) // 2)
    square.paste(image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0), corner)
    return np.asarray(square, dtype=np.uint8)


def regions(probabilities: np.ndarray, width: int, height: int) -> list[Box]:
    """The product regions of a (cells, cells) probability map of a `width` x `height` photo padded
    to a square: connected areas above THRESHOLD, most probable mass first."""
    labels, count = ndimage.label(probabilities > THRESHOLD)
    if count == 0:
        return []
    masses = ndimage.sum(probabilities, labels, range(1, count + 1))
    order = np.argsort(-masses)
    cell = INPUT_SIZE / probabilities.shape[0]
    scale = INPUT_SIZE / max(width, height)
    offset_x, offset_y = (INPUT_SIZE - width * scale) / 2, (INPUT_SIZE - height * scale) / 2
    found = []
    for label in order[:MAX_REGIONS]:
        if masses[label] < MIN_REGION_SHARE * masses[order[0]]:
            break
        rows, columns = np.nonzero(labels == label + 1)
        x0 = (columns.min() * cell - offset_x) / (width * scale)
        x1 = ((columns.max() + 1) * cell - offset_x) / (width * scale)
        y0 = (rows.min() * cell - offset_y) / (height * scale)
        y1 = ((rows.max() + 1) * cell - offset_y) / (height * scale)
        x0, y0, x1, y1 = (float(np.clip(value, 0, 1)) for value in (x0, y0, x1, y1))
        if x1 - x0 >= MIN_SIDE and y1 - y0 >= MIN_SIDE:
            found.append(Box(x0, y0, x1, y1))
    return found


def build_trunk():
    """The frozen feature extractor: Lite2's stages up to stride 16 at INPUT_SIZE, one output per layer
    in FEATURE_LAYERS."""
    import keras

    network = efficientnet_lite.build(NETWORK, INPUT_SIZE)
    network.load_weights(str(efficientnet_lite_weights(NETWORK)))
    return keras.Model(network.input, [network.get_layer(name).output for name in FEATURE_LAYERS])


def build_head(shapes):
    """The trained part: feature maps (strides 4, 8 and 16) -> (MAP_CELLS, MAP_CELLS, 1) probabilities,
    coarse to fine: each step doubles the map and mixes in the finer feature map."""
    import keras
    from keras import layers

    stride4, stride8, stride16 = (keras.Input(shape[1:]) for shape in shapes)
    x = layers.Conv2D(32, 1, activation="relu")(stride16)
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    for finer, filters in ((stride8, 24), (stride4, 16)):
        x = layers.UpSampling2D(2, interpolation="bilinear")(x)
        x = layers.Concatenate()([x, layers.Conv2D(16, 1, activation="relu")(finer)])
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    outputs = layers.Conv2D(1, 1, activation="sigmoid")(x)
    return keras.Model([stride4, stride8, stride16], outputs, name="garment_head")


def build_locator(head_weights: Path = HEAD_WEIGHTS):
    """Trunk and trained head as one Keras model: model input (see tf_style) -> probability map."""
    import keras

    trunk = build_trunk()
    head = build_head([output.shape for output in trunk.outputs])
    head.load_weights(str(head_weights))
    return keras.Model(trunk.input, head(trunk.outputs), name="garment_locator")


class GarmentLocator:
    """The locator, loaded once per process: LiteRT (the converted model, cached beside the
    embedding models) or, when that runtime is not to be had, Keras."""

    def __init__(self):
        # Read as the weights are loaded, so that caches of its crops are named by the locator that ran.
        self.fingerprint = _fingerprint()
        if settings.EMBEDDING_RUNTIME == "litert":
            try:
                self._predict = self._litert()
                self.runtime = "litert"
                return
            except Exception as exc:
                logger.warning("LiteRT cannot run the garment locator (%s: %s); using Keras", type(exc).__name__, exc)
        self._predict = self._keras()
        self.runtime = "keras"

    def locate(self, image: Image.Image, wait_seconds: float | None = None) -> list[Box]:
        """The product regions in an upright RGB photo, most salient first (may be empty)."""
        probabilities = self._predict(tf_style(square_pixels(image))[None], wait_seconds)
        return regions(np.asarray(probabilities).reshape(probabilities.shape[1:3]), *image.size)

    def crop_to_garment(self, image: Image.Image) -> Image.Image:
        """The photo cropped to its most salient garment, as a photo search crops it (whole if none)."""
        regions = self.locate(image)
        return (regions[0] if regions else Box.WHOLE).crop(image)

    def _litert(self):
        from . import litert
        from .embedder import EmbedderBusy

        path = litert.converted_file("garment_locator", [efficientnet_lite_weights(NETWORK), HEAD_WEIGHTS])
        if not path.is_file():
            logger.info("Converting the garment locator for LiteRT into %s", path)
            litert.write_atomically(path, litert.convert(build_locator()))
        pool = litert.InterpreterPool(path, settings.EMBEDDING_INTERPRETERS, settings.EMBEDDING_THREADS)

        def predict(inputs, wait_seconds):
            try:
                with pool.interpreter(wait_seconds) as interpreter:
                    return litert.run(interpreter, inputs)
            except litert.InterpreterBusy as exc:
                raise EmbedderBusy(str(exc)) from None

        return predict

    def _keras(self):
        from .embedder import EmbedderBusy

        model = build_locator()
        lock = threading.Lock()

        def predict(inputs, wait_seconds):
            if not lock.acquire(timeout=-1 if wait_seconds is None else wait_seconds):
                raise EmbedderBusy(f"the garment locator was busy for {wait_seconds:g}s")
            try:
                return model(inputs, training=False).numpy()
            finally:
                lock.release()

        return predict


def _fingerprint() -> str:
    """Names a locator by what decides its crops: the head's weights and the settings of its map."""
    recipe = repr((NETWORK, INPUT_SIZE, FEATURE_LAYERS, THRESHOLD, MIN_SIDE)).encode()
    return hashlib.sha256(HEAD_WEIGHTS.read_bytes() + recipe).hexdigest()[:12]


_locator: GarmentLocator | None = None
_locator_lock = threading.Lock()


def get_locator() -> GarmentLocator:
    global _locator
    with _locator_lock:
        if _locator is None:
            _locator = GarmentLocator()
        return _locator
