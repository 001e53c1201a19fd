"""Products' labels: those training learns, and those a trained model's catalogue vectors carry."""

from collections.abc import Iterable, Sequence

import numpy as np
from django.db.models import CharField, OuterRef, Value
from django.db.models.functions import Concat

from catalog.colours import colour_family

PRODUCT_LABEL_FIELDS = ("article_type", "sub_category", "base_colour", "gender", "usage")
PRODUCT_LABEL_LOOKUPS = tuple(f"image__product__{name}" for name in PRODUCT_LABEL_FIELDS)  # from an image's rows
# What a catalogue photo's trained vector depends on besides the photo: the label blocks' article
# type and colour family (of the base colour). Change it with training.LABEL_BLOCKS.
VECTOR_LABEL_FIELDS = ("article_type", "base_colour")
_SEPARATOR = "|"


def product_labels(rows: Iterable[Sequence[str]]) -> dict[str, np.ndarray]:
    """The labels of products given as rows of their PRODUCT_LABEL_FIELDS: each field ("" where the
    product has none; "NA" in the shared dataset) and the colour family."""
    columns = list(zip(*rows, strict=True)) or [()] * len(PRODUCT_LABEL_FIELDS)
    labels = {
        name: np.array([value if value not in ("", "NA") else "" for value in column], dtype=str)
        for name, column in zip(PRODUCT_LABEL_FIELDS, columns, strict=True)
    }
    labels["colour_family"] = np.array([colour_family(colour) for colour in labels["base_colour"]], dtype=str)
    return labels


def vector_labels(row: Sequence[str]) -> str:
    """What a trained vector made for a product with this row of PRODUCT_LABEL_FIELDS records
    (ImageEmbedding.labels)."""
    fields = dict(zip(PRODUCT_LABEL_FIELDS, row, strict=True))
    return _SEPARATOR.join(fields[name] for name in VECTOR_LABEL_FIELDS)


def current_vector_labels(product: str) -> Concat:
    """vector_labels of the product at lookup `product` (from a subquery: OuterRef), in SQL."""
    parts = [part for name in VECTOR_LABEL_FIELDS for part in (OuterRef(f"{product}__{name}"), Value(_SEPARATOR))]
    return Concat(*parts[:-1], output_field=CharField())
