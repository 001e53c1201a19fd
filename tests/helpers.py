"""Helpers shared by test modules (fixtures live in conftest.py; test modules never import each other)."""

import functools
import io
import os
from pathlib import Path

import numpy as np
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _shared_dir() -> Path:
    """The team's read-only shared/ folder: $FASHION_SHARED_DIR, else beside the checkout, else /work/shared."""
    if "FASHION_SHARED_DIR" in os.environ:
        return Path(os.environ["FASHION_SHARED_DIR"])
    beside = ROOT.parent / "shared"
    return beside if beside.is_dir() else Path("/work/shared")


SHARED = _shared_dir()
DATASET = SHARED / "datasets" / "fashion-products"

# The test catalogue: the shared file's first 12 rows, then a spread over the whole file so that
# many article types are present (60 products).
CATALOGUE_LINES = frozenset(range(2, 14)) | frozenset(range(14, 8151, 170))


def stored_vector(image_id: int, backbone) -> np.ndarray | None:
    """The stored embedding of one image (None when there is none)."""
    from recommender.models import ImageEmbedding

    return (
        ImageEmbedding.objects.for_backbone(backbone)
        .done()
        .filter(image_id=image_id)
        .values_list("vector", flat=True)
        .first()
    )


def photo_upload(sku: str = "10007", name: str = "my photo.jpg") -> SimpleUploadedFile:
    """A shared catalogue photo as a browser would upload it."""
    return SimpleUploadedFile(name, (DATASET / "images" / f"{sku}.jpg").read_bytes(), content_type="image/jpeg")


def add_product_form(upload, **overrides) -> dict:
    """The admin's add-product form with one photo, as a browser posts it."""
    form = {
        "sku": "NEW-001",
        "name": "Linen Summer Shirt",
        "gender": "Men",
        "master_category": "Apparel",
        "sub_category": "Topwear",
        "article_type": "Shirts",
        "base_colour": "White",
        "season": "Summer",
        "year": "2024",
        "usage": "Casual",
        "images-TOTAL_FORMS": "1",
        "images-INITIAL_FORMS": "0",
        "images-MIN_NUM_FORMS": "0",
        "images-MAX_NUM_FORMS": "1000",
        "images-0-image": upload,
        "images-0-position": "0",
    }
    form.update(overrides)
    return form


@functools.cache
def decompression_bomb() -> bytes:
    """A few hundred bytes of PNG that would decode to 400 megapixels (made once: it takes a second)."""
    buffer = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buffer, format="PNG")
    return buffer.getvalue()


def unit_vectors(count: int, dimension: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(count, dimension)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


STAFF_USERNAME, STAFF_PASSWORD = "staff", "a-long-password"


def log_in_to_admin(page, admin_url: str) -> None:
    """Sign a Playwright page in to the admin as the browser tests' superuser (their `admin_url` fixture)."""
    page.goto(admin_url)
    page.fill("#id_username", STAFF_USERNAME)
    page.fill("#id_password", STAFF_PASSWORD)
    with page.expect_navigation():
        page.get_by_role("button", name="Log in").click()
