"""Training the garment locator's head on shopper-like composites of the catalogue's own photos.

Only products outside the fixed test and validation splits are used, so the shopper-photo evaluation
(made from test-split products) and the probes that set the locator's threshold (validation-split
products) measure photos of products the locator never saw.
"""

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from django.core.files.storage import default_storage
from PIL import Image, ImageOps
from tqdm import tqdm

from catalog.models import ProductImage

from .encoding import garment
from .encoding.backbones import tf_style
from .evaluation.shopper_photos import ShopperPhoto, shopper_photo
from .evaluation.split import held_out


@dataclass
class LocatorReport:
    photos: int
    validation_loss: float
    validation_box_iou: float  # mean IoU of the best region with the product's true box
    output: Path


def training_photos(count: int, seed: int) -> list[Image.Image]:
    """Up to `count` catalogue photos (one per product) from outside both held-out splits, chosen by `seed`."""
    rows = ProductImage.objects.filter(position=0).values_list("image", "product__sku").order_by("pk")
    names = [name for name, sku in rows if not held_out(sku)]
    chosen = random.Random(seed).sample(names, min(count, len(names)))
    photos = []
    for name in chosen:
        with default_storage.open(name) as file:
            photos.append(Image.open(file).convert("RGB"))
    return photos


@dataclass
class Examples:
    """Composites as the locator sees them: its input pixels, the target map, and the true box."""

    pixels: np.ndarray  # (n, INPUT_SIZE, INPUT_SIZE, 3) uint8
    targets: np.ndarray  # (n, cells, cells, 1) float32
    sizes: list[tuple[int, int]]
    boxes: list[garment.Box]


def make_examples(photos: list[Image.Image], count: int, seed: int) -> Examples:
    """`count` shopper-like composites of `photos`, kept only as the locator's inputs and targets."""
    rng = random.Random(seed)
    pixels, targets, sizes, boxes = [], [], [], []
    for _ in tqdm(range(count), desc="Composites", unit="photo"):
        composite = shopper_photo(rng.choice(photos), seed=rng.getrandbits(31), clutter=rng.sample(photos, 3))
        pixels.append(garment.square_pixels(composite.image))
        targets.append(target_map(composite, garment.MAP_CELLS))
        sizes.append(composite.image.size)
        boxes.append(garment.Box(*composite.box))
    return Examples(np.stack(pixels), np.stack(targets), sizes, boxes)


def target_map(composite: ShopperPhoto, cells: int) -> np.ndarray:
    """The product's share of each map cell, with the photo padded to a square like the locator's input."""
    size = garment.INPUT_SIZE
    mask = ImageOps.pad(composite.mask, (size, size), method=Image.Resampling.BILINEAR, color=0)
    return np.asarray(mask.resize((cells, cells), Image.Resampling.BOX), dtype=np.float32)[..., None] / 255


def box_iou(a: garment.Box, b: garment.Box) -> float:
    width = max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0))
    height = max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))
    overlap = width * height
    union = (a.x1 - a.x0) * (a.y1 - a.y0) + (b.x1 - b.x0) * (b.y1 - b.y0) - overlap
    return overlap / union if union else 0.0


def train_locator(
    output: Path = garment.HEAD_WEIGHTS, *, composite_count: int = 6000, epochs: int = 20, seed: int = 0
) -> LocatorReport:
    """Make composites, extract the frozen trunk's features once, fit the head, save its weights."""
    import keras

    examples = make_examples(training_photos(composite_count // 2, seed), composite_count, seed)
    trunk = garment.build_trunk()
    pixels = examples.pixels
    batches = [trunk(tf_style(pixels[i : i + 32]), training=False) for i in tqdm(range(0, len(pixels), 32), "Features")]
    features = [np.concatenate([batch[level].numpy() for batch in batches]) for level in range(len(trunk.outputs))]
    targets = examples.targets

    keras.utils.set_random_seed(seed)
    head = garment.build_head([output.shape for output in trunk.outputs])
    head.compile(keras.optimizers.Adam(2e-3), "binary_crossentropy")
    validation = len(pixels) // 10
    train = slice(validation, None)
    history = head.fit(
        [level[train] for level in features],
        targets[train],
        batch_size=32,
        epochs=epochs,
        validation_data=([level[:validation] for level in features], targets[:validation]),
        verbose=2,
    )
    probabilities = head.predict([level[:validation] for level in features], verbose=0)[..., 0]
    ious = []
    for size, box, probability in zip(
        examples.sizes[:validation], examples.boxes[:validation], probabilities, strict=True
    ):
        found = garment.regions(probability, *size)
        ious.append(box_iou(found[0], box) if found else 0.0)
    output.parent.mkdir(parents=True, exist_ok=True)
    head.save_weights(str(output))
    return LocatorReport(len(pixels), float(history.history["val_loss"][-1]), float(np.mean(ious)), output)
