"""From an image file to the square pixel array a backbone takes, the same way for catalogue and query."""

from typing import BinaryIO, Literal

import numpy as np
from PIL import Image

from catalog.images import open_image, upright_rgb

SquareMode = Literal["pad", "crop", "trim"]
# Chosen by measurement on the shared catalogue (benchmarks/preprocessing_choice.py; see README).
DEFAULT_SQUARE_MODE: SquareMode = "trim"
WHITE = (255, 255, 255)
# Product shots sit on white; anything lighter than this counts as background when trimming.
BACKGROUND_THRESHOLD = 245


def read_image(file: BinaryIO, size: int) -> Image.Image:
    """Decode (validated, EXIF-upright, flattened to RGB); big JPEGs decode at reduced size."""
    return upright_rgb(open_image(file, draft_size=size))


def square_pixels(image: Image.Image, size: int, mode: SquareMode = DEFAULT_SQUARE_MODE) -> np.ndarray:
    """`image` as a (size, size, 3) uint8 array: padded with white, centre-cropped, or trimmed to its
    content and then padded."""
    if mode == "trim":
        image = _trim_background(image)
    width, height = image.size
    if width != height:
        if mode == "crop":
            side = min(width, height)
            left, top = (width - side) // 2, (height - side) // 2
            image = image.crop((left, top, left + side, top + side))
        else:
            side = max(width, height)
            canvas = Image.new("RGB", (side, side), WHITE)
            canvas.paste(image, ((side - width) // 2, (side - height) // 2))
            image = canvas
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def _trim_background(image: Image.Image) -> Image.Image:
    grey = image.convert("L").point(lambda value: 255 if value < BACKGROUND_THRESHOLD else 0)
    box = grey.getbbox()
    return image.crop(box) if box else image


def load_pixels(file: BinaryIO, size: int, mode: SquareMode = DEFAULT_SQUARE_MODE) -> np.ndarray:
    return square_pixels(read_image(file, size), size, mode)
