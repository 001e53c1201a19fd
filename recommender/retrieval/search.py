"""Finding the catalogue products that look most like a query embedding.

Candidates (image ids with exact cosine scores) come from the Annoy index plus the embeddings
written since it was built, or, when there is no usable index, from exact search over every
stored embedding. They are then collapsed to products (one per product, its best image),
filtered by the shopper's choices, and widened until k products are found or the catalogue is
exhausted.
"""

import logging
from dataclasses import dataclass

import numpy as np
from django.conf import settings
from django.db.models import QuerySet

from catalog.models import Product, ProductImage

from ..encoding.backbones import Backbone
from .reader import index_reader, recent_embeddings
from .vectors import embedding_matrix

logger = logging.getLogger(__name__)

# Image candidates fetched per wanted product: room for several photos of one product and for
# Annoy's misses, so that re-ranking finds the exact top results.
CANDIDATES_PER_RESULT = 8


@dataclass(frozen=True)
class Neighbour:
    product: Product
    image: ProductImage
    score: float  # cosine similarity


@dataclass(frozen=True)
class Candidates:
    image_ids: np.ndarray
    scores: np.ndarray  # exact cosine, best first
    searched: int  # how many images the search could have returned
    source: str  # "index" or "exact"
    product_ids: np.ndarray | None = None  # each image's product as the index (or, for newer ones, PostgreSQL) knew it


def candidate_images(query: np.ndarray, count: int, backbone: Backbone) -> Candidates:
    """The `count` images most similar to `query`, re-ranked by exact cosine."""
    query = np.asarray(query, dtype=np.float32)
    index = index_reader(backbone).get()
    if index is None:
        matrix = embedding_matrix(backbone)
        image_ids, scores = matrix.top(query, count)
        return Candidates(image_ids, scores, len(matrix), "exact")

    image_ids, product_ids, scores = index.nearest(query, count)
    recent = recent_embeddings(index, backbone)
    if len(recent.image_ids) or len(recent.withdrawn):
        # Embeddings newer than the index replace what it holds for the same images.
        keep = ~np.isin(image_ids, np.concatenate([recent.image_ids, recent.withdrawn]))
        image_ids = np.concatenate([image_ids[keep], recent.image_ids])
        if product_ids is not None:
            product_ids = np.concatenate([product_ids[keep], recent.product_ids])
        scores = np.concatenate([scores[keep], recent.vectors @ query])
    order = np.argsort(-scores, kind="stable")[:count]
    searched = len(index) + len(recent.image_ids)
    product_ids = None if product_ids is None else product_ids[order]
    return Candidates(image_ids[order], scores[order], searched, "index", product_ids)


def nearest_products(
    query: np.ndarray,
    backbone: Backbone,
    *,
    k: int = 5,
    exclude_product_id: int | None = None,
    gender: str = "",
    article_type: str = "",
    colour: str = "",
) -> list[Neighbour]:
    """The k products most similar to `query`, best first, one per product, matching the filters
    (`colour` is a colour family, catalog.colours).

    Filters are applied to candidates, which widen until k products match; a filter that matches few
    products stops at SEARCH_MAX_CANDIDATES images (and one that matches none, at once).
    """
    products = _filtered_products(gender, article_type, colour)
    if products is not None and not products.exists():
        return []
    bound = max(settings.SEARCH_MAX_CANDIDATES, k)
    wanted = min(k * CANDIDATES_PER_RESULT, bound)
    while True:
        candidates = candidate_images(query, wanted, backbone)
        neighbours = _collapse_to_products(candidates, k, exclude_product_id, products)
        if len(neighbours) >= k or wanted >= min(candidates.searched, bound):
            return neighbours
        wanted = min(wanted * 4, bound)


def _filtered_products(gender: str, article_type: str, colour: str) -> QuerySet | None:
    """The products the filters allow (None: no filter)."""
    if not (gender or article_type or colour):
        return None
    products = Product.objects.all()
    if gender:
        products = products.filter(gender=gender)
    if article_type:
        products = products.filter(article_type=article_type)
    if colour:
        products = products.of_colour(colour)
    return products


def _collapse_to_products(
    candidates: Candidates, k: int, exclude_product_id: int | None, products: QuerySet | None
) -> list[Neighbour]:
    """The best image of each of the first k products among the candidates; only the k chosen
    images are read as objects. Which product an image shows comes from the index when no filter
    applies; when the index is out of date for a chosen image (deleted or moved since the build),
    or a filter applies, PostgreSQL says (two numbers a row). A photo moved to another product
    since the build is seen only if chosen: until the next build, its new product may be missing
    from results it would have entered through that photo alone."""
    if candidates.product_ids is not None and products is None:
        chosen = _first_of_each_product(candidates, candidates.product_ids.tolist(), k, exclude_product_id)
        neighbours = _neighbours(chosen)
        if len(neighbours) == len(chosen):
            return neighbours
    images = ProductImage.objects.filter(pk__in=candidates.image_ids.tolist())
    if products is not None:
        images = images.filter(product__in=products)
    product_of = dict(images.values_list("pk", "product_id"))
    product_ids = [product_of.get(image_id) for image_id in candidates.image_ids.tolist()]
    return _neighbours(_first_of_each_product(candidates, product_ids, k, exclude_product_id))


def _first_of_each_product(
    candidates: Candidates, product_ids: list[int | None], k: int, exclude_product_id: int | None
) -> list[tuple[int, int, float]]:
    """(image id, product id, score) of the best image of each of the first k products."""
    chosen, seen = [], {None, exclude_product_id}
    for image_id, product_id, score in zip(candidates.image_ids.tolist(), product_ids, candidates.scores.tolist()):
        if product_id not in seen:
            seen.add(product_id)
            chosen.append((image_id, product_id, score))
            if len(chosen) == k:
                break
    return chosen


def _neighbours(chosen: list[tuple[int, int, float]]) -> list[Neighbour]:
    """The chosen images as objects, leaving out any deleted or moved to another product since."""
    by_id = ProductImage.objects.for_cards().in_bulk([image_id for image_id, _, _ in chosen])
    return [
        Neighbour(by_id[image_id].product, by_id[image_id], float(score))
        for image_id, product_id, score in chosen
        if image_id in by_id and by_id[image_id].product_id == product_id
    ]
