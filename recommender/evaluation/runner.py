"""Evaluating the catalogue in the database: loads the stored vectors and labels, runs the metrics,
and measures the served search path."""

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from django.core.files.storage import default_storage

from catalog.models import Product, ProductImage

from ..encoding.backbones import Backbone
from ..encoding.preprocessing import read_image
from ..models import ImageEmbedding
from ..retrieval import nearest_products
from .metrics import (
    CatalogueVectors,
    exact_product_neighbours,
    label_scores,
    leave_one_out_neighbours,
    random_control,
    raw_pixel_vector,
)

LABELS = {"article type": "article_type", "sub category": "sub_category", "base colour": "base_colour"}


def catalogue_vectors(backbone: Backbone, limit: int | None = None) -> CatalogueVectors:
    rows = (
        ImageEmbedding.objects.for_backbone(backbone)
        .done()
        .order_by("image__product_id", "image__position", "image_id")
        .values_list("image__product_id", "vector")
    )
    product_ids, starts, vectors = [], [], []
    for product_id, vector in rows.iterator(chunk_size=4000):
        if not product_ids or product_ids[-1] != product_id:
            if limit is not None and len(product_ids) == limit:
                break
            product_ids.append(product_id)
            starts.append(len(vectors))
        vectors.append(vector)
    if len(product_ids) < 2:
        raise ValueError(f"At least two products need a {backbone.name} embedding to evaluate; run embed_catalog.")
    image_vectors = np.vstack(vectors)
    starts_array = np.array(starts)
    attributes = {p["pk"]: p for p in Product.objects.filter(pk__in=product_ids).values("pk", *LABELS.values())}
    return CatalogueVectors(
        product_ids=np.array(product_ids),
        query_vectors=image_vectors[starts_array],
        image_vectors=image_vectors,
        image_starts=starts_array,
        labels={name: np.array([attributes[pid][field] for pid in product_ids]) for name, field in LABELS.items()},
    )


def served_path_quality(
    data: CatalogueVectors, exact: np.ndarray, backbone: Backbone, k: int, sample: int, seed: int = 0
) -> dict:
    """Recall@k of what the site serves (index + re-rank, one per product) against exact search, and its latency."""
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(data.product_ids), size=min(sample, len(data.product_ids)), replace=False)
    hits, identical, latencies = 0, 0, []
    for row in picked:
        started = time.perf_counter()
        served = nearest_products(data.query_vectors[row], backbone, k=k, exclude_product_id=int(data.product_ids[row]))
        latencies.append(time.perf_counter() - started)
        truth = set(data.product_ids[exact[row, :k]].tolist())
        found = len(truth & {n.product.pk for n in served})
        hits += found
        identical += found == k
    return {
        "queries": len(picked),
        "recall": hits / (k * len(picked)),
        "identical_top_k": identical / len(picked),  # share of queries whose whole top k is exact
        "latency_p50_ms": float(np.percentile(latencies, 50) * 1000),
        "latency_p95_ms": float(np.percentile(latencies, 95) * 1000),
    }


def brute_force_refit(data: CatalogueVectors, exact: np.ndarray, k: int, queries: int = 50) -> dict:
    """The original design's search: scikit-learn's brute-force NearestNeighbors over the products'
    first photos, fitted again per query; its latency, and how much of our exact top k it finds."""
    from sklearn.neighbors import NearestNeighbors

    latencies, found = [], 0
    rows = range(min(queries, len(data.product_ids)))
    for row in rows:
        started = time.perf_counter()
        model = NearestNeighbors(n_neighbors=k + 1, algorithm="brute", metric="cosine").fit(data.query_vectors)
        _, neighbours = model.kneighbors(data.query_vectors[row : row + 1])
        latencies.append(time.perf_counter() - started)
        found += len(set(neighbours[0].tolist()) - {row} & set(exact[row].tolist()))
    return {
        "queries": len(latencies),
        "recall_of_exact": found / (k * len(rows)),
        "latency_p50_ms": float(np.percentile(latencies, 50) * 1000),
        "latency_p95_ms": float(np.percentile(latencies, 95) * 1000),
    }


def raw_pixel_vectors(product_ids: np.ndarray) -> np.ndarray:
    """The 32×32-pixel floor, from each product's first image file."""
    paths = {}
    images = ProductImage.objects.filter(product_id__in=product_ids.tolist()).order_by("position", "pk")
    for product_id, name in images.values_list("product_id", "image"):
        paths.setdefault(product_id, name)  # the first image in display order

    def vector(product_id):
        with default_storage.open(paths[product_id]) as file:
            return raw_pixel_vector(read_image(file, 256))

    with ThreadPoolExecutor(2) as pool:
        return np.stack(list(pool.map(vector, product_ids.tolist())))


def evaluate_catalogue(
    backbone: Backbone,
    *,
    k: int = 5,
    sample: int = 1000,
    limit: int | None = None,
    baselines: bool = False,
    control: bool = False,
) -> dict:
    """Everything `manage.py evaluate_recommender` reports, as one JSON-ready dict."""
    started = time.monotonic()
    data = catalogue_vectors(backbone, limit)
    exact = exact_product_neighbours(data, k)
    report = {
        "backbone": backbone.name,
        "k": k,
        "products": len(data.product_ids),
        "images": len(data.image_vectors),
        "quality": label_scores(exact, data.labels),
        "served_path": served_path_quality(data, exact, backbone, k, sample),
    }
    if control:
        report["random_control"] = label_scores(exact_product_neighbours(random_control(data), k), data.labels)
    if baselines:
        pixels = raw_pixel_vectors(data.product_ids)
        report["raw_pixels"] = label_scores(leave_one_out_neighbours(pixels, k), data.labels)
        report["brute_force_refit"] = brute_force_refit(data, exact, k)
    report["seconds"] = time.monotonic() - started
    return report
