"""Fixtures shared by the whole suite: small catalogues built from the team's shared dataset."""

import csv
import os
import shutil
from pathlib import Path

import pytest

from tests.processes import CeleryWorker, RedisServer

ROOT = Path(__file__).resolve().parents[1]


def _shared_dir() -> Path:
    """The team's read-only shared/ folder: $FASHION_SHARED_DIR, else beside the checkout, else /work/shared."""
    if "FASHION_SHARED_DIR" in os.environ:
        return Path(os.environ["FASHION_SHARED_DIR"])
    beside = Path(__file__).resolve().parents[2] / "shared"
    return beside if beside.is_dir() else Path("/work/shared")


SHARED = _shared_dir()
DATASET = SHARED / "datasets" / "fashion-products"


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


@pytest.fixture
def catalogue(db, fashion_dataset):
    """60 products of the shared dataset: its first 12 rows, then a spread over the whole file
    so that many article types are present."""
    from catalog.importing import import_products, kaggle_rows

    wanted_lines = set(range(2, 14)) | set(range(14, 8151, 170))
    rows = (row for row in kaggle_rows(fashion_dataset) if row.line in wanted_lines)
    report = import_products(rows)
    assert report.created == 60, report.problems
    return report


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
            INDEX_DIR=str(settings.INDEX_DIR),
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


@pytest.fixture
def embedded_catalogue(catalogue):
    """The 60-product catalogue with EfficientNet-Lite2 embeddings for every image."""
    from recommender.embedding import embed_catalogue

    report = embed_catalogue("efficientnet_lite2")
    assert report.embedded == 60
    return report


def stored_vector(image_id: int, backbone: str = "efficientnet_lite2"):
    """The stored embedding of one image, as a numpy vector (None when there is none)."""
    import numpy as np

    from recommender.vectors import done_embeddings

    vector = done_embeddings(backbone).filter(image_id=image_id).values_list("vector", flat=True).first()
    return None if vector is None else np.frombuffer(vector, dtype=np.float32)
