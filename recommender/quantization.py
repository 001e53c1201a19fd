"""int8 models, chosen by measurement: calibrated on catalogue photos outside the test split, and
kept only if retrieval on the test split loses no more than INT8_MAX_DROP against float32.

`manage.py quantize_embedding` runs this; `evaluate_recommender --int8` prints the same comparison.
"""

import json
import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from catalog.models import ProductImage

from .embedding import embed_catalogue
from .encoding import litert
from .encoding.backbones import BACKBONES, Backbone
from .encoding.embedder import get_embedder, normalise_rows
from .encoding.preprocessing import file_pixels
from .evaluation.metrics import leave_one_out_neighbours, retrieval_scores
from .evaluation.split import in_test_split
from .retrieval import build_index

logger = logging.getLogger(__name__)

# Largest acceptable loss of precision@5 (micro) on the test split, per label.
INT8_MAX_DROP = {"article type": 0.005, "base colour": 0.01}
GATED_LABELS = {"article type": "article_type", "base colour": "base_colour"}


class QualityCheckFailed(Exception):
    pass


@dataclass
class PrecisionComparison:
    products: int
    fp32: dict[str, dict[str, float]]  # label -> {"micro": P@5, "macro": P@5}
    int8: dict[str, dict[str, float]]
    mean_cosine: float  # between the fp32 and int8 vector of each photo
    min_cosine: float

    def drop(self, label: str) -> float:
        return self.fp32[label]["micro"] - self.int8[label]["micro"]

    @property
    def passed(self) -> bool:
        return all(self.drop(label) <= limit for label, limit in INT8_MAX_DROP.items())


def int8_variant(backbone: Backbone) -> Backbone:
    return BACKBONES[f"{backbone.model_name}-int8"]


def _photos(test: bool, limit: int | None = None, seed: int = 0) -> list[ProductImage]:
    """Each product's first photo, in or out of the test split (a fixed random sample of `limit`)."""
    first = {}
    for image in ProductImage.objects.select_related("product").order_by("product_id", "position", "pk"):
        if image.product_id not in first and in_test_split(image.product.sku) == test:
            first[image.product_id] = image
    photos = list(first.values())
    if limit is not None and len(photos) > limit:
        photos = random.Random(seed).sample(photos, limit)
    return photos


def _pixels(photos: list[ProductImage], size: int) -> np.ndarray:
    def pixels(photo: ProductImage) -> np.ndarray:
        with photo.image.open("rb") as file:
            return file_pixels(file, size)

    return np.stack([pixels(photo) for photo in photos])


def compare_precisions(backbone: Backbone, int8_model: Path, k: int = 5) -> PrecisionComparison:
    """Leave-one-out P@k among the test split's products, with the float32 and the int8 model."""
    photos = _photos(test=True)
    if len(photos) < k + 1:
        raise QualityCheckFailed(f"the test split holds {len(photos)} products; at least {k + 1} are needed")
    pixels = _pixels(photos, backbone.input_size)
    fp32 = get_embedder(backbone).embed_pixels(pixels)
    pool = litert.InterpreterPool(int8_model, size=1, threads=2)
    with pool.interpreter() as interpreter:
        int8 = normalise_rows(litert.run(interpreter, backbone.preprocess(pixels)))
    cosines = (fp32 * int8).sum(axis=1)
    labels = {name: np.array([getattr(p.product, field) for p in photos]) for name, field in GATED_LABELS.items()}

    def scores(vectors):
        neighbours = leave_one_out_neighbours(vectors, k)
        return {
            name: {"micro": s.precision, "macro": s.macro_precision}
            for name, values in labels.items()
            for s in [retrieval_scores(neighbours, values)]
        }

    return PrecisionComparison(len(photos), scores(fp32), scores(int8), float(cosines.mean()), float(cosines.min()))


def quantize(backbone: Backbone, calibration_photos: int = 200, on_batch=lambda report: None) -> PrecisionComparison:
    """Make the int8 model of `backbone`; keep it only if it passes the quality check (raises
    QualityCheckFailed otherwise, and nothing is kept); embed the catalogue with it and index it; then
    write its report, which makes EMBEDDING_PRECISION=auto use it (never a half-embedded space)."""
    photos = _photos(test=False, limit=calibration_photos)
    if not photos:
        raise QualityCheckFailed("the catalogue has no photos outside the test split to calibrate on")
    calibration = backbone.preprocess(_pixels(photos, backbone.input_size))
    int8 = int8_variant(backbone)
    model = litert.model_file(int8)
    report = model.with_suffix(".json")
    report.unlink(missing_ok=True)
    litert.write_atomically(model, litert.convert(backbone.build(), calibration))
    comparison = compare_precisions(backbone, model)
    if not comparison.passed:
        model.unlink()
        drops = ", ".join(f"{label} {comparison.drop(label):+.4f}" for label in INT8_MAX_DROP)
        raise QualityCheckFailed(f"int8 loses too much precision@5 on the test split ({drops})")
    embed_catalogue(int8, on_batch=on_batch)
    build_index(int8)
    report.write_text(json.dumps({**asdict(comparison), "calibration_photos": len(photos)}, indent=2))
    logger.info("int8 model of %s kept at %s", backbone.name, model)
    return comparison
