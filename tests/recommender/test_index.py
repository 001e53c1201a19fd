import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from django.core.management import call_command

from catalog.models import ProductImage
from recommender.encoding.backbones import get_backbone
from recommender.models import ImageEmbedding, IndexVersion
from recommender.retrieval import build, build_index, current_manifest, index_is_stale, nearest_products
from recommender.retrieval.reader import IndexReader, _readers
from recommender.retrieval.search import candidate_images
from recommender.retrieval.vectors import embedding_matrix
from recommender.retrieval.versions import current_version_dir
from tests.helpers import ROOT, stored_vector
from tests.processes import wait_until

LITE2 = get_backbone("efficientnet_lite2")
pytestmark = pytest.mark.django_db


def query_vector(position: int = 3) -> np.ndarray:
    image = ProductImage.objects.order_by("pk")[position]
    return stored_vector(image.pk, LITE2)


def test_build_writes_a_verified_version_and_switches_to_it(embedded_catalogue, index_dir):
    result = build_index(LITE2)

    assert result.reason == "built"
    manifest = result.manifest
    assert (manifest.items, manifest.dimension, manifest.metric, manifest.backbone) == (60, 1280, "angular", LITE2.name)
    directory = current_version_dir(LITE2)
    assert directory == index_dir / LITE2.name / "versions" / manifest.version
    assert set(manifest.checksums) == {"items.ann", "image_ids.npy", "vectors.npy"}
    assert json.loads((directory / "manifest.json").read_text())["version"] == manifest.version
    vectors = np.load(directory / "vectors.npy")
    assert vectors.dtype == np.float16
    assert np.allclose(vectors[0], stored_vector(np.load(directory / "image_ids.npy")[0], LITE2), atol=1e-3)
    assert build_index(LITE2, force=False).reason == "up to date"


def test_a_build_chooses_the_search_k_that_matches_exact_search(embedded_catalogue, settings):
    from annoy import AnnoyIndex

    manifest = build_index(LITE2).manifest
    assert manifest.search_k in build.SEARCH_K_STEPS

    # Clustered vectors of 20 dimensions: the loosest search_k finds less than a high target asks.
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(50, 20))
    vectors = centres[rng.integers(0, 50, 3000)] + 0.6 * rng.normal(size=(3000, 20))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float16)
    annoy = AnnoyIndex(20, "angular")
    for row, vector in enumerate(vectors):
        annoy.add_item(row, vector)
    annoy.build(2)
    loose, strict = (build.calibrated_search_k(annoy, vectors, target) for target in (0.5, 0.999))
    assert loose == build.SEARCH_K_STEPS[0] and strict > loose


def test_a_version_is_hashed_once_per_host_not_by_every_process(embedded_catalogue, monkeypatch):
    from recommender.retrieval import versions

    build_index(LITE2)  # checksums computed as the files were written

    def hashing(path):
        raise AssertionError(f"{path} hashed again")

    monkeypatch.setattr(versions, "file_checksum", hashing)
    assert IndexReader(LITE2).get().manifest.items == 60


def test_a_build_that_loses_an_embedding_midway_gives_up_cleanly(embedded_catalogue, monkeypatch, index_dir):
    first = build_index(LITE2).manifest.version
    monkeypatch.setattr(type(ImageEmbedding.objects.all()), "vectors_of", lambda self, pks, dimension: None)

    result = build_index(LITE2, force=True)

    assert (result.manifest, result.reason) == (None, "embeddings changed during the build; the next one starts afresh")
    assert current_manifest(LITE2).version == first
    assert [path.name for path in (index_dir / LITE2.name / "versions").iterdir()] == [first]


def test_index_search_matches_exact_search(embedded_catalogue):
    build_index(LITE2)
    matrix = embedding_matrix(LITE2)
    for position in range(0, 60, 7):
        query = query_vector(position)
        from_index = candidate_images(query, 10, LITE2)
        assert from_index.source == "index"
        exact_ids, _ = matrix.top(query, 10)
        assert list(from_index.image_ids[:5]) == list(exact_ids[:5])


@pytest.mark.slow  # runs the model
def test_a_new_embedding_is_found_before_the_next_build(embedded_catalogue, fashion_dataset):
    from django.core.files.base import ContentFile

    from recommender.embedding import embed_images

    build_index(LITE2)
    product = ProductImage.objects.first().product
    new_image = ProductImage.objects.create(
        product=product,
        position=5,
        image=ContentFile((fashion_dataset / "images" / "10020.jpg").read_bytes(), name="x.jpg"),
    )
    embed_images([new_image.pk], LITE2)
    assert index_is_stale(LITE2)

    candidates = candidate_images(stored_vector(new_image.pk, LITE2), 5, LITE2)

    assert candidates.source == "index" and candidates.image_ids[0] == new_image.pk
    assert build_index(LITE2, force=False).reason == "built"
    assert new_image.pk in np.load(current_version_dir(LITE2) / "image_ids.npy")


def test_corrupt_index_file_falls_back_to_exact_search(embedded_catalogue, caplog):
    build_index(LITE2)
    ann = current_version_dir(LITE2) / "items.ann"
    data = bytearray(ann.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = os.urandom(64)
    ann.write_bytes(bytes(data))
    _readers.clear()

    neighbours = nearest_products(query_vector(), LITE2, k=5)

    assert len(neighbours) == 5
    assert candidate_images(query_vector(), 5, LITE2).source == "exact"
    assert "does not match its checksum" in caplog.text


def test_missing_index_falls_back_to_exact_search(embedded_catalogue, index_dir):
    assert current_manifest(LITE2) is None
    assert candidate_images(query_vector(), 5, LITE2).source == "exact"
    build_index(LITE2)
    assert candidate_images(query_vector(), 5, LITE2).source == "index"
    (index_dir / LITE2.name / "current").unlink()
    assert candidate_images(query_vector(), 5, LITE2).source == "exact"
    assert len(nearest_products(query_vector(), LITE2, k=5)) == 5


def test_a_failed_build_leaves_the_live_index_alone(embedded_catalogue, monkeypatch, index_dir):
    first = build_index(LITE2).manifest
    reader = IndexReader(LITE2)
    assert reader.get().manifest.version == first.version

    def crash(path):
        raise MemoryError("simulated crash after the files were written")

    monkeypatch.setattr(build, "file_checksum", crash)
    with pytest.raises(MemoryError):
        build_index(LITE2, force=True)

    assert current_manifest(LITE2).version == first.version
    assert reader.get().manifest.version == first.version
    assert not list((index_dir / LITE2.name / "versions").glob("*.partial"))


def test_leftovers_and_old_versions_are_cleaned_up(embedded_catalogue, index_dir, index_store, settings):
    settings.INDEX_KEEP_VERSIONS = 2
    versions = [build_index(LITE2, force=True).manifest.version for _ in range(4)]
    abandoned = index_dir / LITE2.name / "versions" / "20000101T000000.000000-dead00.partial"
    abandoned.mkdir()
    os.utime(abandoned, (time.time() - 7200, time.time() - 7200))
    downloading = index_dir / LITE2.name / "versions" / "20000101T000000.000000-beef00.partial-1a2b3c4d"
    downloading.mkdir()  # another process's download in progress
    versions.append(build_index(LITE2, force=True).manifest.version)

    remaining = sorted(p.name for p in (index_dir / LITE2.name / "versions").iterdir())
    assert remaining == sorted([*versions[-2:], downloading.name])
    published = sorted(p.name for p in (index_store / LITE2.name).iterdir() if any(p.iterdir()))
    assert published == sorted(versions[-2:])
    assert list(IndexVersion.objects.order_by("published_at").values_list("version", flat=True)) == versions[-2:]


def test_build_index_command(embedded_catalogue):
    from io import StringIO

    out = StringIO()
    call_command("build_index", "--trees", "10", stdout=out)
    assert "60 items, 10 trees" in out.getvalue()
    out = StringIO()
    call_command("build_index", "--if-stale", stdout=out)
    assert "up to date" in out.getvalue()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_two_web_processes_follow_a_rebuild_without_restarting(embedded_catalogue, subprocess_env, tmp_path):
    build_index(LITE2)
    first = current_manifest(LITE2).version
    servers, ports = [], []
    try:
        for _ in range(2):
            port = _free_port()
            servers.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "gunicorn",
                        "fashionsite.wsgi",
                        "--bind",
                        f"127.0.0.1:{port}",
                        "--workers",
                        "1",
                    ],
                    cwd=ROOT,
                    env=subprocess_env(),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            ports.append(port)
        for port in ports:
            assert wait_until(lambda port=port: _status(port), 30, f"web process on {port}")["index_version"] == first

        second = build_index(LITE2, force=True).manifest.version

        assert second != first
        for port in ports:
            status = _status(port)
            assert (status["index_version"], status["search"]) == (second, "index")
    finally:
        for server in servers:
            server.terminate()
            server.wait(10)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _status(port: int) -> dict | None:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/recommender/status", timeout=5) as response:
            return json.loads(response.read())
    except OSError:
        return None
