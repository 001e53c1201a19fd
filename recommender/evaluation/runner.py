"""Evaluating the catalogue in the database: loads the stored vectors and labels, runs the metrics,
and measures the served search path."""

import random
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from django.core.files.storage import default_storage
from PIL import Image

from catalog.models import Product, ProductImage

from ..encoding.backbones import Backbone
from ..encoding.embedder import get_embedder
from ..encoding.garment import Box, get_locator
from ..encoding.preprocessing import image_pixels, read_image
from ..models import ImageEmbedding
from ..retrieval import nearest_products
from .metrics import (
    CatalogueVectors,
    exact_product_neighbours,
    label_scores,
    leave_one_out_neighbours,
    photo_search_scores,
    random_control,
    raw_pixel_vector,
)
from .shopper_photos import shopper_photo
from .split import in_test_split

LABELS = {"article type": "article_type", "sub category": "sub_category", "base colour": "base_colour"}
CLUTTER_PRODUCTS = 200  # other products whose photos appear beside the one in a shopper photo


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


def first_photo_names(product_ids: np.ndarray) -> dict[int, str]:
    """Each product's first image file (in display order), by product id."""
    names = {}
    images = ProductImage.objects.filter(product_id__in=product_ids.tolist()).order_by("position", "pk")
    for product_id, name in images.values_list("product_id", "image"):
        names.setdefault(product_id, name)
    return names


def raw_pixel_vectors(product_ids: np.ndarray) -> np.ndarray:
    """The 32×32-pixel floor, from each product's first image file."""
    paths = first_photo_names(product_ids)

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
    shopper_photos: int = 0,
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
    if shopper_photos:
        report.update(shopper_photo_quality(data, backbone, k, shopper_photos))
    report["seconds"] = time.monotonic() - started
    return report


def shopper_photo_quality(data: CatalogueVectors, backbone: Backbone, k: int, count: int, seed: int = 0) -> dict:
    """Search by photo on shopper-like photos of `count` test-split products (made with a fixed
    seed; never used for tuning), and on their clean catalogue photos: the whole photo, the garment
    the locator finds, and (shopper photos only) the product's true box, the locator's ceiling."""
    skus = dict(Product.objects.filter(pk__in=data.product_ids.tolist()).values_list("pk", "sku"))
    rows = [row for row, product_id in enumerate(data.product_ids.tolist()) if in_test_split(skus[product_id])]
    rng = random.Random(seed)
    rows = sorted(rng.sample(rows, min(count, len(rows))))
    if not rows:
        return {}
    clutter_rows = rng.sample(range(len(data.product_ids)), min(CLUTTER_PRODUCTS, len(data.product_ids)))
    names = first_photo_names(data.product_ids[sorted({*rows, *clutter_rows})])
    photos = {}
    for product_id, name in names.items():
        with default_storage.open(name) as file:
            photos[product_id] = read_image(file, 512)
    shots, clean = [], []
    for row in rows:
        others = [photos[data.product_ids[other]] for other in rng.sample(clutter_rows, 3) if other != row]
        clean.append(photos[data.product_ids[row]])
        shots.append(shopper_photo(clean[-1], seed=rng.getrandbits(31), clutter=others))
    embedder, locator = get_embedder(backbone), get_locator()

    def embed(images: list[Image.Image]) -> np.ndarray:
        size = backbone.input_size
        return embedder.embed_pixels(np.stack([image_pixels(image, size) for image in images]))

    truth = np.array(rows)
    images = [shot.image for shot in shots]
    return {
        "shopper_photos": {
            "whole photo": photo_search_scores(embed(images), truth, data, k),
            "garment found": photo_search_scores(
                embed([locator.crop_to_garment(image) for image in images]), truth, data, k
            ),
            "true box": photo_search_scores(embed([Box(*s.box).crop(s.image) for s in shots]), truth, data, k),
        },
        "catalogue_photos": {
            "whole photo": photo_search_scores(embed(clean), truth, data, k, exclude_truth=True),
            "garment found": photo_search_scores(
                embed([locator.crop_to_garment(image) for image in clean]), truth, data, k, True
            ),
        },
    }
