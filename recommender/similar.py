"""The two things shoppers see: a product's similar items, and the products that look like a photo."""

import logging
import time
import uuid
from dataclasses import dataclass, field

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone
from PIL import Image

from catalog.models import Product, ProductImage

from .encoding.backbones import Backbone
from .encoding.embedder import get_embedder
from .encoding.garment import Box, get_locator
from .models import ImageEmbedding
from .retrieval import Neighbour, current_version, nearest_products

logger = logging.getLogger(__name__)


@dataclass
class SimilarItems:
    neighbours: list[Neighbour]
    pending: bool = False  # the product has no embedding yet
    seconds: float = 0.0


def similar_products(
    product: Product,
    backbone: Backbone,
    *,
    k: int = 5,
    gender: str = "",
    article_type: str = "",
    colour: str = "",
) -> SimilarItems:
    """The k products that look most like `product` (never itself), of a gender/article type/colour
    family if given.

    Cached per product until the index changes, and for at most SIMILAR_ITEMS_CACHE_SECONDS.
    """
    started = time.monotonic()
    version = current_version(backbone) or "exact"
    key = f"similar:{backbone.name}:{version}:{product.pk}:{k}:{gender}:{article_type}:{colour}"
    cached = _cache_get(key)
    if cached is not None:
        neighbours = _neighbours_from_ids(cached)
        if len(neighbours) == len(cached):  # nothing was deleted since
            return SimilarItems(neighbours, seconds=time.monotonic() - started)
    vector = (
        ImageEmbedding.objects.for_backbone(backbone)
        .done()
        .filter(image__product=product)
        .order_by("image__position", "image_id")  # the first embedded image, in display order
        .values_list("vector", flat=True)
        .first()
    )
    if vector is None:
        return SimilarItems([], pending=True, seconds=time.monotonic() - started)
    neighbours = nearest_products(
        vector,
        backbone,
        k=k,
        exclude_product_id=product.pk,
        gender=gender,
        article_type=article_type,
        colour=colour,
    )
    _cache_set(key, [(n.product.pk, n.image.pk, n.score) for n in neighbours])
    return SimilarItems(neighbours, seconds=time.monotonic() - started)


def _neighbours_from_ids(rows: list[tuple[int, int, float]]) -> list[Neighbour]:
    images = ProductImage.objects.for_cards().in_bulk([image_id for _, image_id, _ in rows])
    return [
        Neighbour(images[image_id].product, images[image_id], score)
        for _, image_id, score in rows
        if image_id in images
    ]


def _cache_get(key: str):
    try:
        return cache.get(key)
    except Exception as exc:  # a cache outage must not take product pages down
        logger.warning("Similar-items cache unavailable: %s", exc)
        return None


def _cache_set(key: str, value) -> None:
    try:
        cache.set(key, value, settings.SIMILAR_ITEMS_CACHE_SECONDS)
    except Exception as exc:
        logger.warning("Similar-items cache unavailable: %s", exc)


@dataclass
class VisualSearchResult:
    neighbours: list[Neighbour]
    crop: Box = Box.WHOLE  # the part of the photo that was searched with
    crop_source: str = "whole"  # "auto" (the garment found), "shopper" (their box) or "whole"
    regions: list[Box] = field(default_factory=list)  # garments found in the photo, most salient first
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage


def search_by_photo(
    photo: Image.Image,
    backbone: Backbone,
    *,
    k: int = 5,
    gender: str = "",
    article_type: str = "",
    colour: str = "",
    crop: Box | None = None,
    find_garment: bool = True,
) -> VisualSearchResult:
    """The k catalogue products that look most like a shopper's photo (decoded, upright RGB).

    The search uses the shopper's `crop` if given, else the most salient garment the locator finds
    (unless `find_garment` is off), else the whole photo. The garments found are reported either way,
    as choices for the shopper."""
    wait = settings.VISUAL_SEARCH_MODEL_WAIT_SECONDS
    started = time.monotonic()
    regions = get_locator().locate(photo, wait_seconds=wait) if find_garment else []
    located = time.monotonic()
    if crop is not None:
        source = "shopper"
    elif regions:
        crop, source = regions[0], "auto"
    else:
        crop, source = Box.WHOLE, "whole"
    vector = get_embedder(backbone).embed_image(crop.crop(photo), wait_seconds=wait)
    embedded = time.monotonic()
    neighbours = nearest_products(vector, backbone, k=k, gender=gender, article_type=article_type, colour=colour)
    if settings.VISUAL_SEARCH_KEEP_UPLOADS:
        _keep(photo)
    timings = {"locate": located - started, "embed": embedded - located, "search": time.monotonic() - embedded}
    return VisualSearchResult(neighbours, crop, source, regions, timings)


def _keep(photo: Image.Image) -> None:
    """Save a shopper's photo in the private upload folder (only when the site is set up to)."""
    folder = settings.VISUAL_SEARCH_UPLOAD_DIR / timezone.now().strftime("%Y/%m/%d")
    folder.mkdir(parents=True, exist_ok=True)
    photo.save(folder / f"{uuid.uuid4().hex}.jpg", format="JPEG", quality=90)
