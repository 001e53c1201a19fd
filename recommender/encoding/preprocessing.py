"""From an image to the square pixel array a backbone takes, the same way for catalogue and query."""

from typing import BinaryIO, Literal

import numpy as np
from PIL import Image, ImageOps

from catalog.images import open_image, upright_rgb

SquareMode = Literal["pad", "crop", "trim"]
# Chosen by measurement on the shared catalogue (benchmarks/precision_at_5.py; see README).
DEFAULT_SQUARE_MODE: SquareMode = "trim"
WHITE = (255, 255, 255)
# Product shots sit on white; anything lighter than this counts as background when trimming.
BACKGROUND_THRESHOLD = 245


def read_image(file: BinaryIO, size: int) -> Image.Image:
    """Decode (validated, EXIF-upright, flattened to RGB); big JPEGs decode at reduced size."""
    return upright_rgb(open_image(file, draft_size=size))


def image_pixels(image: Image.Image, size: int, mode: SquareMode = DEFAULT_SQUARE_MODE) -> np.ndarray:
    """An upright RGB image as the (size, size, 3) uint8 array a model takes: shrunk, then padded with
    white (pad), centre-cropped (crop), or trimmed to its content and then padded (trim)."""
    if mode == "trim":
        image = _trim_background(image)
    if mode == "crop":
        image = ImageOps.fit(image, (size, size), method=Image.Resampling.BILINEAR)
    else:
        image = ImageOps.pad(image, (size, size), method=Image.Resampling.BILINEAR, color=WHITE)
    return np.asarray(image, dtype=np.uint8)


def _trim_background(image: Image.Image) -> Image.Image:
    grey = image.convert("L").point(lambda value: 255 if value < BACKGROUND_THRESHOLD else 0)
    box = grey.getbbox()
    return image.crop(box) if box else image


def file_pixels(file: BinaryIO, size: int, mode: SquareMode = DEFAULT_SQUARE_MODE) -> np.ndarray:
    return image_pixels(read_image(file, size), size, mode)
