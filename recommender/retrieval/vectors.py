"""The stored embeddings of a backbone as one matrix, for exact search and index builds."""

import threading
from dataclasses import dataclass

import numpy as np

from ..encoding.backbones import Backbone
from ..models import EmbeddingStamp, ImageEmbedding


@dataclass(frozen=True)
class EmbeddingMatrix:
    """Every stored embedding of one backbone, as rows of one matrix."""

    backbone: str
    image_ids: np.ndarray  # int64, one per row
    vectors: np.ndarray  # float32 (rows, dimension), unit length
    stamp: EmbeddingStamp  # when loaded

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


def load_embedding_matrix(backbone: Backbone, stamp: EmbeddingStamp | None = None) -> EmbeddingMatrix:
    """The embeddings as of `stamp`: later ones are left out."""
    rows = ImageEmbedding.objects.for_backbone(backbone).done()
    stamp = stamp or rows.stamp()
    if stamp.latest is not None:
        rows = rows.filter(computed_at__lte=stamp.latest)
    image_ids, vectors = rows.as_matrix(backbone.dimension)
    return EmbeddingMatrix(backbone.name, image_ids, vectors, stamp)


_matrices: dict[str, EmbeddingMatrix] = {}
_matrices_lock = threading.Lock()


def embedding_matrix(backbone: Backbone) -> EmbeddingMatrix:
    """The process's copy of the stored embeddings, reloaded when they change."""
    stamp = ImageEmbedding.objects.for_backbone(backbone).done().stamp()
    with _matrices_lock:
        cached = _matrices.get(backbone.name)
        if cached is None or cached.stamp != stamp:
            cached = _matrices[backbone.name] = load_embedding_matrix(backbone, stamp)
        return cached
