"""Retrieval metrics for "do the nearest items share the query's label?" (leave-one-out); no database.

Each item is a query once; its neighbours are the k most similar other items by cosine. A
neighbour is a hit when it has the query's label (article type, sub category, colour...).
"""

from dataclasses import dataclass

import numpy as np
from PIL import Image

RAW_PIXELS_SIZE = 32


def leave_one_out_neighbours(vectors: np.ndarray, k: int, block: int = 2048) -> np.ndarray:
    """(n, k) indices of each row's k most similar other rows (rows must be unit length), best first."""
    vectors = np.asarray(vectors, dtype=np.float32)
    count = len(vectors)
    k = min(k, count - 1)
    result = np.empty((count, k), dtype=np.int64)
    for start in range(0, count, block):
        scores = vectors[start : start + block] @ vectors.T
        rows = np.arange(len(scores))
        scores[rows, start + rows] = -np.inf  # never your own neighbour
        best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, best, axis=1), axis=1, kind="stable")
        result[start : start + block] = np.take_along_axis(best, order, axis=1)
    return result


@dataclass(frozen=True)
class RetrievalScores:
    precision: float  # micro: mean over queries of precision@k
    average_precision: float  # micro mAP@k, over queries that have at least one relevant item
    macro_precision: float  # mean over labels of the per-label mean precision@k
    macro_average_precision: float
    queries: int
    labels: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def retrieval_scores(neighbours: np.ndarray, labels: np.ndarray) -> RetrievalScores:
    """Precision@k and mAP@k (micro and macro over labels) of leave-one-out `neighbours`."""
    labels = np.asarray(labels)
    k = neighbours.shape[1]
    hits = labels[neighbours] == labels[:, None]
    precision = hits.mean(axis=1)
    unique, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    relevant = counts[inverse] - 1  # other items with the query's label
    cumulative = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    denominator = np.minimum(relevant, k)
    answerable = denominator > 0
    average_precision = np.where(answerable, (cumulative * hits).sum(axis=1) / np.maximum(denominator, 1), np.nan)
    per_label_precision = [precision[inverse == index].mean() for index in range(len(unique))]
    per_label_ap = [
        np.nanmean(average_precision[inverse == index])
        for index in range(len(unique))
        if answerable[inverse == index].any()
    ]
    return RetrievalScores(
        precision=float(precision.mean()),
        average_precision=float(np.nanmean(average_precision)) if answerable.any() else 0.0,
        macro_precision=float(np.mean(per_label_precision)),
        macro_average_precision=float(np.mean(per_label_ap)) if per_label_ap else 0.0,
        queries=len(labels),
        labels=len(unique),
    )


def raw_pixel_vector(image: Image.Image) -> np.ndarray:
    """The floor to beat: the image shrunk to 32×32 RGB, as one unit-length vector."""
    small = image.convert("RGB").resize((RAW_PIXELS_SIZE, RAW_PIXELS_SIZE), Image.Resampling.BILINEAR)
    vector = np.asarray(small, dtype=np.float32).ravel()
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


@dataclass
class CatalogueVectors:
    """One query vector per product (its first embedded image), and every image vector."""

    product_ids: np.ndarray  # (products,)
    query_vectors: np.ndarray  # (products, dimension)
    image_vectors: np.ndarray  # (images, dimension), grouped by product in product_ids order
    image_starts: np.ndarray  # first row of each product in image_vectors
    labels: dict[str, np.ndarray]  # label name -> (products,) values


def exact_product_neighbours(data: CatalogueVectors, k: int, block: int = 1024) -> np.ndarray:
    """Each product's k most similar other products: a product scores its best image's cosine."""
    count = len(data.product_ids)
    k = min(k, count - 1)
    result = np.empty((count, k), dtype=np.int64)
    for start in range(0, count, block):
        image_scores = data.query_vectors[start : start + block] @ data.image_vectors.T
        product_scores = np.maximum.reduceat(image_scores, data.image_starts, axis=1)
        rows = np.arange(len(product_scores))
        product_scores[rows, start + rows] = -np.inf
        best = np.argpartition(-product_scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(product_scores, best, axis=1), axis=1, kind="stable")
        result[start : start + block] = np.take_along_axis(best, order, axis=1)
    return result


def chance_precision(labels: np.ndarray) -> float:
    """Expected precision@k of random neighbours: the chance that another product shares the label."""
    _, counts = np.unique(labels, return_counts=True)
    return float((counts * (counts - 1)).sum() / (len(labels) * (len(labels) - 1)))


def label_scores(neighbours: np.ndarray, labels: dict[str, np.ndarray]) -> dict[str, dict]:
    return {
        name: {**retrieval_scores(neighbours, values).as_dict(), "chance_precision": chance_precision(values)}
        for name, values in labels.items()
    }


def random_control(data: CatalogueVectors, seed: int = 0) -> CatalogueVectors:
    """The same catalogue with random unit vectors: every score must fall to chance."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(len(data.product_ids), data.query_vectors.shape[1])).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return CatalogueVectors(data.product_ids, vectors, vectors, np.arange(len(vectors)), data.labels)


def photo_search_scores(
    vectors: np.ndarray, truth: np.ndarray, data: CatalogueVectors, k: int, exclude_truth: bool = False
) -> dict[str, float]:
    """Photos of known products (`truth`: their rows in `data`) searched against the catalogue:
    exact-item recall@1 and @k, and article-type precision@k. With `exclude_truth` (the photo is the
    product's own catalogue photo) the product itself is left out and only precision counts."""
    image_scores = vectors @ data.image_vectors.T
    product_scores = np.maximum.reduceat(image_scores, data.image_starts, axis=1)
    if exclude_truth:
        product_scores[np.arange(len(truth)), truth] = -np.inf
    top = np.argsort(-product_scores, axis=1, kind="stable")[:, :k]
    types = data.labels["article type"]
    scores = {"photos": len(truth), f"type_precision@{k}": float(np.mean(types[top] == types[truth][:, None]))}
    if not exclude_truth:
        scores["recall@1"] = float(np.mean(top[:, 0] == truth))
        scores[f"recall@{k}"] = float(np.mean((top == truth[:, None]).any(axis=1)))
    return scores


def query_neighbours(
    vectors: np.ndarray, queries: np.ndarray, k: int, query_vectors: np.ndarray | None = None
) -> np.ndarray:
    """(len(queries), k) indices of the k rows of `vectors` most similar to each query row, never
    itself; searched with `query_vectors` when the queries have vectors of their own (a photo of a
    catalogue product embedded as a shopper's photo would be, say), else with their rows."""
    scores = (vectors[queries] if query_vectors is None else query_vectors) @ vectors.T
    scores[np.arange(len(queries)), queries] = -np.inf
    best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, best, axis=1), axis=1, kind="stable")
    return np.take_along_axis(best, order, axis=1)


def label_precision(neighbours: np.ndarray, queries: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Micro and macro (over the queries' labels) precision@k of `neighbours` of the `queries` rows;
    queries without a label ("") are left out (None when no query has one)."""
    labels = np.asarray(labels)
    known = labels[queries] != ""
    if not known.any():
        return {"micro": None, "macro": None, "queries": 0}
    hits = (labels[neighbours[known]] == labels[queries[known]][:, None]).mean(axis=1)
    query_labels = labels[queries[known]]
    macro = [hits[query_labels == label].mean() for label in np.unique(query_labels)]
    return {"micro": float(hits.mean()), "macro": float(np.mean(macro)), "queries": int(known.sum())}
