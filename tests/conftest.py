"""Fixtures shared by the whole suite: small catalogues built from the team's shared dataset.

Expensive things are built once per session: the test catalogue's embeddings are computed once
with the real model and written into each test's database from that cache.
"""

import csv
import io
import os
import shutil
from pathlib import Path

import pytest

from tests.helpers import CATALOGUE_LINES, DATASET, ROOT
from tests.processes import CeleryWorker, RedisServer


@pytest.fixture(scope="session")
def fashion_dataset() -> Path:
    if not (DATASET / "styles.csv").is_file():
        pytest.fail(f"The shared dataset is not at {DATASET}; set FASHION_SHARED_DIR to the shared/ folder.")
    return DATASET


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path) -> Path:
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture(autouse=True)
def index_dir(settings, tmp_path) -> Path:
    settings.INDEX_DIR = tmp_path / "index"
    return settings.INDEX_DIR


@pytest.fixture(autouse=True)
def index_store(settings, tmp_path) -> Path:
    """Where index versions are published to (the "indexes" storage)."""
    location = tmp_path / "index-store"
    storage = {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": str(location)}}
    settings.STORAGES = {**settings.STORAGES, "indexes": storage}
    return location


@pytest.fixture(autouse=True)
def trained_model_dirs(settings, tmp_path):
    """Each test saves trained models and caches features in folders of its own."""
    settings.TRAINED_MODEL_DIR = tmp_path / "trained"
    settings.EMBEDDING_FEATURE_DIR = tmp_path / "features"


def shared_styles(dataset: Path, count: int, start: int = 0) -> tuple[list[str], list[list[str]]]:
    with (dataset / "styles.csv").open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = [row for _, row in zip(range(start + count), reader)][start:]
    return header, rows


def write_kaggle_folder(folder: Path, dataset: Path, header: list[str], rows: list[list[str]]) -> Path:
    """A Kaggle-layout folder holding `rows` and copies of their shared images."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    with (folder / "styles.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    for row in rows:
        source = dataset / "images" / f"{row[0]}.jpg"
        if source.is_file():
            shutil.copyfile(source, folder / "images" / f"{row[0]}.jpg")
    return folder


@pytest.fixture
def kaggle_folder(tmp_path, fashion_dataset) -> Path:
    """A 12-product Kaggle-layout folder, safe to modify."""
    header, rows = shared_styles(fashion_dataset, 12)
    return write_kaggle_folder(tmp_path / "kaggle", fashion_dataset, header, rows)


@pytest.fixture(scope="session")
def catalogue_rows(fashion_dataset) -> list:
    """(import row, stored image) of the test catalogue's 60 products, read and normalised once."""
    from catalog.images import normalise_image
    from catalog.importing import kaggle_rows

    rows = []
    for row in kaggle_rows(fashion_dataset):
        if row.line in CATALOGUE_LINES:
            with row.open_image() as file:
                rows.append((row, normalise_image(file)))
    return rows


@pytest.fixture
def catalogue(db, catalogue_rows) -> list:
    """60 products of the shared dataset (tests.helpers.CATALOGUE_LINES), one photo each: what
    `import_catalog` makes of them (tests/catalog/test_import.py tests that), written in bulk."""
    from catalog.models import Product, ProductImage, product_slug

    products = Product.objects.bulk_create(
        Product(sku=row.sku, slug=product_slug(row.fields["name"]), **row.fields) for row, _ in catalogue_rows
    )
    images = []
    for product, (row, stored) in zip(products, catalogue_rows):
        image = ProductImage(product=product, position=0, checksum=stored.checksum)
        image.image.save(f"{row.sku}.{stored.extension}", stored.as_file(row.sku), save=False)
        images.append(image)
    ProductImage.objects.bulk_create(images)
    return products


@pytest.fixture
def subprocess_env(settings):
    """Environment for a child process (a management command, a Celery worker) that must see the
    test database, media and data folders this test uses."""

    def build(**extra: str) -> dict[str, str]:
        from django.db import connection

        database = connection.settings_dict
        env = {key: value for key, value in os.environ.items() if not key.startswith("DJANGO_")}
        env.update(
            DJANGO_SETTINGS_MODULE="fashionsite.test_settings",
            DATABASE_URL=(
                f"postgres://{database['USER']}:{database['PASSWORD'] or ''}"
                f"@{database['HOST']}:{database['PORT']}/{database['NAME']}"
            ),
            DJANGO_MEDIA_ROOT=str(settings.MEDIA_ROOT),
            EMBEDDING_MODEL_DIR=str(settings.EMBEDDING_MODEL_DIR),
            TRAINED_MODEL_DIR=str(settings.TRAINED_MODEL_DIR),
            EMBEDDING_FEATURE_DIR=str(settings.EMBEDDING_FEATURE_DIR),
            INDEX_DIR=str(settings.INDEX_DIR),
            INDEX_STORAGE_DIR=settings.STORAGES["indexes"]["OPTIONS"]["location"],
            PYTHONPATH=str(ROOT),
            TF_CPP_MIN_LOG_LEVEL="2",
        )
        env.update(extra)
        return env

    return build


@pytest.fixture(scope="session", autouse=True)
def redis_server(tmp_path_factory):
    """The suite's own Redis (TEST_REDIS_PORT): every saved image publishes a task to it."""
    server = RedisServer(int(os.environ["TEST_REDIS_PORT"]), tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def celery_worker(subprocess_env, redis_server, tmp_path):
    """A real `celery worker` on the test database; its queue starts empty."""
    redis_server.flush()
    worker = CeleryWorker(
        subprocess_env(CELERY_VISIBILITY_TIMEOUT="4", CELERY_UNACKED_RESTORE_SECONDS="1"),
        tmp_path / "worker.log",
    )
    yield worker
    worker.stop()


@pytest.fixture(scope="session")
def lite2():
    from recommender.encoding.backbones import get_backbone

    return get_backbone("efficientnet_lite2")


@pytest.fixture(scope="session")
def catalogue_vectors(catalogue_rows, lite2) -> dict:
    """Lite2 vectors of the test catalogue's photos by checksum, computed the way the embedding
    pipeline computes them (from the stored, normalised JPEG). Kept on disk between runs, under a key
    that changes with the photos, the weights and the encoding code."""
    import hashlib

    import numpy as np

    from recommender.encoding.backbones import efficientnet_lite_weights
    from recommender.encoding.embedder import get_embedder
    from recommender.encoding.preprocessing import file_pixels

    checksums = [stored.checksum for _, stored in catalogue_rows]
    key = hashlib.sha256("".join(checksums).encode())
    for path in [efficientnet_lite_weights(lite2.name), *sorted((ROOT / "recommender" / "encoding").glob("*.py"))]:
        key.update(path.read_bytes())
    cached = ROOT / "var" / "test-cache" / f"catalogue-vectors-{key.hexdigest()[:16]}.npy"
    if cached.is_file():
        vectors = np.load(cached)
    else:
        pixels = np.stack([file_pixels(io.BytesIO(stored.content), lite2.input_size) for _, stored in catalogue_rows])
        vectors = get_embedder(lite2).embed_pixels(pixels)
        cached.parent.mkdir(parents=True, exist_ok=True)
        np.save(cached.with_suffix(f".{os.getpid()}.npy"), vectors)
        os.replace(cached.with_suffix(f".{os.getpid()}.npy"), cached)  # parallel workers may both write
    return dict(zip(checksums, vectors))


@pytest.fixture
def embedded_catalogue(catalogue, catalogue_vectors, lite2):
    """The 60-product catalogue with an EfficientNet-Lite2 embedding for every image (from the session cache)."""
    from catalog.models import ProductImage
    from recommender.models import ImageEmbedding

    images = ProductImage.objects.all()
    ImageEmbedding.objects.bulk_create(
        ImageEmbedding(
            image=image,
            backbone=lite2.name,
            image_checksum=image.checksum,
            status=ImageEmbedding.Status.DONE,
            vector=catalogue_vectors[image.checksum],
            dimension=lite2.dimension,
        )
        for image in images
    )
    assert ImageEmbedding.objects.count() == 60
    return catalogue


@pytest.fixture
def indexed_catalogue(embedded_catalogue, lite2):
    from recommender.retrieval import build_index

    build_index(lite2)
    return embedded_catalogue


@pytest.fixture
def staff_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("staff", "staff@example.com", "a-long-password"))
    return client


@pytest.fixture
def shared_slice(db, fashion_dataset, lite2):
    """300 products spread over the whole shared catalogue, embedded and indexed."""
    from catalog.importing import import_products, kaggle_rows
    from recommender.embedding import embed_catalogue
    from recommender.retrieval import build_index

    lines = set(range(2, 8151, 27))
    report = import_products(row for row in kaggle_rows(fashion_dataset) if row.line in lines)
    assert report.created >= 300
    embed_catalogue(lite2)
    build_index(lite2)
    return report.created
