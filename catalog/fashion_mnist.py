"""A demo catalogue from Zalando's Fashion-MNIST (MIT licence; Debian package dataset-fashion-mnist).

Fashion-MNIST stores each product photo as 28×28 grey levels with the intensities negated (a white
background became black). We negate them back, so products sit on white like the shop's own
photos, and upscale 8× with a smooth filter for display.
"""

import gzip
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from .importing import RowProblem, SourceRow

DEFAULT_FOLDER = Path("/usr/share/datasets/fashion-mnist")
DISPLAY_SIZE = 224

# label -> (name, article type, master category, sub category), in the Kaggle dataset's vocabulary.
CLASSES = [
    ("T-shirt", "Tshirts", "Apparel", "Topwear"),
    ("Trousers", "Trousers", "Apparel", "Bottomwear"),
    ("Pullover", "Sweaters", "Apparel", "Topwear"),
    ("Dress", "Dresses", "Apparel", "Dress"),
    ("Coat", "Jackets", "Apparel", "Topwear"),
    ("Sandal", "Sandals", "Footwear", "Sandal"),
    ("Shirt", "Shirts", "Apparel", "Topwear"),
    ("Sneaker", "Casual Shoes", "Footwear", "Shoes"),
    ("Bag", "Handbags", "Accessories", "Bags"),
    ("Ankle Boot", "Boots", "Footwear", "Shoes"),
]


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format: big-endian header, then raw uint8 data), gzip or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    dimensions = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dimensions))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dimensions).reshape(shape)


def display_image(pixels: np.ndarray) -> Image.Image:
    """A 28×28 Fashion-MNIST sample as a white-background product photo."""
    return Image.fromarray(255 - pixels, mode="L").resize((DISPLAY_SIZE, DISPLAY_SIZE), Image.Resampling.LANCZOS)


def colour_name(pixels: np.ndarray) -> str:
    garment = 255 - pixels[pixels > 16].astype(np.int32)  # grey level of the product itself
    level = float(garment.mean()) if garment.size else 255.0
    return "Black" if level < 80 else "Grey" if level < 170 else "White"


def fashion_mnist_rows(
    folder: Path = DEFAULT_FOLDER, count: int = 1000, split: str = "t10k"
) -> Iterator[SourceRow | RowProblem]:
    images = read_idx(folder / f"{split}-images-idx3-ubyte.gz")
    labels = read_idx(folder / f"{split}-labels-idx1-ubyte.gz")
    for index in range(min(count, len(images))):
        pixels = images[index]
        title, article_type, master_category, sub_category = CLASSES[labels[index]]
        colour = colour_name(pixels)
        yield SourceRow(
            line=index + 1,
            sku=f"fmnist-{split}-{index:05d}",
            fields={
                "name": f"{colour} {title} {index + 1:04d}",
                "gender": "Unisex",
                "master_category": master_category,
                "sub_category": sub_category,
                "article_type": article_type,
                "base_colour": colour,
                "season": "",
                "year": None,
                "usage": "Casual",
            },
            open_image=lambda pixels=pixels: _png(display_image(pixels)),
        )


def _png(image: Image.Image) -> io.BytesIO:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    buffer.seek(0)
    return buffer
