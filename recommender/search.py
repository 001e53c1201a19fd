"""Finding the catalogue products that look most like a query embedding.

Image-level candidates come from a searcher (for now: exact cosine search over every stored
embedding); they are then collapsed to products (one per product, its best image), filtered by
the shopper's choices, and widened until k products are found or the catalogue is exhausted.
"""

import threading
from dataclasses import dataclass

import numpy as np
from django.db.models import Count, Max

from catalog.models import Product, ProductImage

from .backbones import get_backbone
from .models import ImageEmbedding

CANDIDATES_PER_RESULT = 8


@dataclass(frozen=True)
class Neighbour:
    product: Product
    image: ProductImage
    score: float  # cosine similarity


@dataclass(frozen=True)
class EmbeddingMatrix:
    """Every stored embedding of one backbone, as rows of one matrix."""

    backbone: str
    image_ids: np.ndarray  # int64, one per row
    vectors: np.ndarray  # float32 (rows, dimension), unit length
    stamp: tuple  # (count, latest computed_at) when loaded

    def __len__(self) -> int:
        return len(self.image_ids)

    def top(self, query: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The `count` best rows as (image ids, scores), best first."""
        scores = self.vectors @ query
        count = min(count, len(scores))
        if count == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        best = np.argpartition(-scores, count - 1)[:count]
        best = best[np.argsort(-scores[best], kind="stable")]
        return self.image_ids[best], scores[best]


def done_embeddings(backbone: str):
    return ImageEmbedding.objects.filter(backbone=backbone, status=ImageEmbedding.Status.DONE)


def embeddings_stamp(backbone: str) -> tuple:
    summary = done_embeddings(backbone).aggregate(count=Count("pk"), latest=Max("computed_at"))
    return summary["count"], summary["latest"]


def load_embedding_matrix(backbone: str, stamp: tuple | None = None) -> EmbeddingMatrix:
    stamp = stamp or embeddings_stamp(backbone)
    rows = done_embeddings(backbone).order_by("image_id").values_list("image_id", "vector")
    image_ids, vectors = [], []
    for image_id, vector in rows.iterator(chunk_size=2000):
        image_ids.append(image_id)
        vectors.append(np.frombuffer(vector, dtype=np.float32))
    dimension = get_backbone(backbone).dimension
    matrix = np.vstack(vectors) if vectors else np.zeros((0, dimension), np.float32)
    return EmbeddingMatrix(backbone, np.array(image_ids, dtype=np.int64), matrix, stamp)


_matrices: dict[str, EmbeddingMatrix] = {}
_matrices_lock = threading.Lock()


def embedding_matrix(backbone: str) -> EmbeddingMatrix:
    """The process's copy of the stored embeddings, reloaded when they change."""
    stamp = embeddings_stamp(backbone)
    with _matrices_lock:
        cached = _matrices.get(backbone)
        if cached is None or cached.stamp != stamp:
            cached = _matrices[backbone] = load_embedding_matrix(backbone, stamp)
        return cached


def stored_vector(image_id: int, backbone: str) -> np.ndarray | None:
    vector = done_embeddings(backbone).filter(image_id=image_id).values_list("vector", flat=True).first()
    return None if vector is None else np.frombuffer(vector, dtype=np.float32)


def nearest_products(
    query: np.ndarray,
    *,
    k: int = 5,
    backbone: str | None = None,
    exclude_product_id: int | None = None,
    gender: str = "",
    article_type: str = "",
) -> list[Neighbour]:
    """The k products most similar to `query`, best first, one per product, matching the filters."""
    backbone = get_backbone(backbone).name
    matrix = embedding_matrix(backbone)
    wanted = k * CANDIDATES_PER_RESULT
    while True:
        image_ids, scores = matrix.top(query, wanted)
        neighbours = _collapse_to_products(image_ids, scores, k, exclude_product_id, gender, article_type)
        if len(neighbours) >= k or wanted >= len(matrix):
            return neighbours
        wanted *= 4


def _collapse_to_products(image_ids, scores, k, exclude_product_id, gender, article_type) -> list[Neighbour]:
    images = ProductImage.objects.filter(pk__in=image_ids.tolist()).select_related("product")
    if exclude_product_id is not None:
        images = images.exclude(product_id=exclude_product_id)
    if gender:
        images = images.filter(product__gender=gender)
    if article_type:
        images = images.filter(product__article_type=article_type)
    by_id = {image.pk: image for image in images}
    neighbours, seen = [], set()
    for image_id, score in zip(image_ids.tolist(), scores.tolist()):
        image = by_id.get(image_id)
        if image is None or image.product_id in seen:
            continue
        seen.add(image.product_id)
        neighbours.append(Neighbour(image.product, image, float(score)))
        if len(neighbours) == k:
            break
    return neighbours
