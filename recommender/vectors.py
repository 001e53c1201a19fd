"""The stored embeddings of a backbone as one matrix, for exact search and index builds."""

import threading
from dataclasses import dataclass

import numpy as np
from django.db.models import Count, Max

from .backbones import get_backbone
from .models import ImageEmbedding


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
    """The embeddings as of `stamp` (count, latest computed_at): later ones are left out."""
    stamp = stamp or embeddings_stamp(backbone)
    rows = done_embeddings(backbone)
    if stamp[1] is not None:
        rows = rows.filter(computed_at__lte=stamp[1])
    rows = rows.order_by("image_id").values_list("image_id", "vector")
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
