"""The labels of catalogue products that training learns and that trained vectors carry."""

from collections.abc import Iterable, Sequence

import numpy as np

from catalog.colours import colour_family

PRODUCT_LABEL_FIELDS = ("article_type", "sub_category", "base_colour", "gender", "usage")
PRODUCT_LABEL_LOOKUPS = tuple(f"image__product__{name}" for name in PRODUCT_LABEL_FIELDS)  # from an image's rows


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
