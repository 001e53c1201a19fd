import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command
from django.template.loader import render_to_string
from django.test import RequestFactory
from django.utils import timezone

from catalog.models import ProductImage
from recommender.api import product_json
from recommender.encoding.backbones import get_backbone
from recommender.models import ImageEmbedding, IndexVersion
from recommender.retrieval import build, build_index, current_manifest, index_is_stale, nearest_products
from recommender.retrieval.reader import IndexReader, _readers
from recommender.retrieval.search import candidate_images
from recommender.retrieval.vectors import embedding_matrix
from recommender.retrieval.versions import current_version_dir, file_checksum
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
    assert (manifest.items, manifest.dimension, manifest.backbone) == (60, 1280, LITE2.name)
    assert manifest.metric == "euclidean"  # on the centred projection
    directory = current_version_dir(LITE2)
    assert directory == index_dir / LITE2.name / "versions" / manifest.version
    assert set(manifest.checksums) == {"items.ann", "image_ids.npy", "product_ids.npy", "vectors.npy", "projection.npy"}
    assert manifest.projected_dimension == 128  # INDEX_PROJECTED_DIMENSION: Annoy searches 128 principal axes
    assert json.loads((directory / "manifest.json").read_text())["version"] == manifest.version
    vectors = np.load(directory / "vectors.npy")
    assert vectors.dtype == np.float32
    assert np.array_equal(vectors[0], stored_vector(np.load(directory / "image_ids.npy")[0], LITE2))
    assert build_index(LITE2, force=False).reason == "up to date"


def test_a_build_chooses_the_search_k_that_matches_exact_search(embedded_catalogue, settings):
    from annoy import AnnoyIndex

    manifest = build_index(LITE2).manifest
    assert manifest.search_k in build.SEARCH_K_STEPS

    # Clustered vectors of 20 dimensions: the loosest search_k finds less than a high target asks.
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(50, 20))
    vectors = centres[rng.integers(0, 50, 3000)] + 0.6 * rng.normal(size=(3000, 20))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    annoy = AnnoyIndex(20, "angular")
    for row, vector in enumerate(vectors):
        annoy.add_item(row, vector)
    annoy.build(2)
    rows = np.arange(0, 3000, 15)
    calibration = build.Calibration(rows, vectors[rows])
    for start in range(0, 3000, 1000):  # as a build streams them
        calibration.add(start, vectors[start : start + 1000])
    loose, strict = (calibration.search_k(annoy, vectors, None, target) for target in (0.5, 0.999))
    assert loose == build.SEARCH_K_STEPS[0] and strict > loose


def test_a_space_with_few_dimensions_is_indexed_as_it_is(embedded_catalogue, settings):
    settings.INDEX_PROJECTED_DIMENSION = 1280
    manifest = build_index(LITE2).manifest

    assert (manifest.projected_dimension, manifest.metric) == (None, "angular")
    assert set(manifest.checksums) == {"items.ann", "image_ids.npy", "product_ids.npy", "vectors.npy"}
    matrix = embedding_matrix(LITE2)
    query = query_vector(5)
    assert list(candidate_images(query, 10, LITE2).image_ids[:5]) == list(matrix.top(query, 10)[0][:5])


def test_the_projection_keeps_the_vectors_principal_axes():
    from recommender.retrieval.versions import Projection

    rng = np.random.default_rng(2)
    # 500 points spread along 3 axes of a 40-d space, with a little noise in the others.
    axes = np.linalg.qr(rng.normal(size=(40, 3)))[0].T
    points = rng.normal(size=(500, 3)) * [5.0, 3.0, 2.0] @ axes + 0.01 * rng.normal(size=(500, 40)) + 1.0

    projection = Projection.fit(points, 3)

    assert projection.axes.shape == (3, 40)
    assert np.allclose(projection.axes @ projection.axes.T, np.eye(3), atol=1e-4)
    # Distances between points survive the projection: nothing but the noise was dropped.
    projected = projection.apply(points)
    original = np.linalg.norm(points[:50, None] - points[None, :50], axis=-1)
    kept = np.linalg.norm(projected[:50, None] - projected[None, :50], axis=-1)
    assert np.abs(original - kept).max() < 0.1


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


def test_products_come_from_the_index_and_postgresql_corrects_it(
    embedded_catalogue, django_assert_num_queries, settings
):
    settings.RECENT_EMBEDDINGS_CHECK_SECONDS = 60
    build_index(LITE2)
    query = query_vector(3)
    candidate_images(query, 40, LITE2)  # loads the index
    with django_assert_num_queries(1):  # which image shows which product is in the index: only the five are read
        first = nearest_products(query, LITE2, k=5)
        # Showing them reads nothing more: the one query loaded what cards and the API show.
        request = RequestFactory().get("/")
        shown = [product_json(request, neighbour.product, neighbour.image) for neighbour in first]
        cards = [
            render_to_string("catalog/partials/product_card.html", {"product": n.product, "image": n.image})
            for n in first
        ]
    assert len({neighbour.product.pk for neighbour in first}) == 5
    assert [item["sku"] for item in shown] == [neighbour.product.sku for neighbour in first]
    assert all(neighbour.image.image.url in card for neighbour, card in zip(first, cards))

    # Since the build, the best match's photo moved to another product and the second one was deleted.
    moved, deleted = first[0].image, first[1].image
    other = next(neighbour.product for neighbour in first[2:])
    ProductImage.objects.filter(pk=moved.pk).update(product=other)
    ProductImage.objects.filter(pk=deleted.pk).delete()

    again = nearest_products(query, LITE2, k=5)

    assert len(again) == 5 and deleted.pk not in {neighbour.image.pk for neighbour in again}
    assert all(neighbour.image.product_id == neighbour.product.pk for neighbour in again)
    assert len({neighbour.product.pk for neighbour in again}) == 5


def test_a_version_of_the_older_layout_serves_until_it_is_rebuilt(embedded_catalogue, settings):
    settings.INDEX_PROJECTED_DIMENSION = 0  # versions of the older layout held the vectors themselves
    build_index(LITE2)
    directory = current_version_dir(LITE2)
    manifest = json.loads((directory / "manifest.json").read_text())
    # As versions were built before product ids were kept: float16 vectors, no product_ids.npy.
    del manifest["checksums"]["product_ids.npy"]
    (directory / "product_ids.npy").unlink()
    np.save(directory / "vectors.npy", np.load(directory / "vectors.npy").astype(np.float16))
    manifest["checksums"]["vectors.npy"] = file_checksum(directory / "vectors.npy")
    (directory / "manifest.json").write_text(json.dumps(manifest))
    IndexVersion.objects.update(manifest=manifest)
    _readers.clear()

    assert candidate_images(query_vector(), 5, LITE2).source == "index"
    assert len({neighbour.product.pk for neighbour in nearest_products(query_vector(), LITE2, k=5)}) == 5
    assert index_is_stale(LITE2)
    assert build_index(LITE2).reason == "built"
    assert current_manifest(LITE2).current_layout


def test_changing_the_projected_dimension_makes_the_index_stale(embedded_catalogue, settings):
    build_index(LITE2)
    assert not index_is_stale(LITE2)
    settings.INDEX_PROJECTED_DIMENSION = 64
    assert index_is_stale(LITE2)
    assert build_index(LITE2).manifest.projected_dimension == 64


def test_new_embeddings_are_looked_for_once_per_check_interval(
    embedded_catalogue, settings, monkeypatch, django_assert_num_queries
):
    from recommender.retrieval import reader

    settings.RECENT_EMBEDDINGS_CHECK_SECONDS = 2
    build_index(LITE2)
    query = query_vector(7)
    clock = [1000.0]
    monkeypatch.setattr(reader.time, "monotonic", lambda: clock[0])
    reader._recent.clear()
    assert candidate_images(query, 5, LITE2).image_ids[0] == ProductImage.objects.order_by("pk")[7].pk
    # A photo embedded after the build, identical to the query: the best match once it is seen.
    image = ProductImage.objects.order_by("pk")[20]
    ImageEmbedding.objects.filter(image=image, backbone=LITE2.name).update(vector=query, computed_at=timezone.now())

    clock[0] += 1.5
    with django_assert_num_queries(0):  # checked 1.5 s ago: not asked again
        assert image.pk not in candidate_images(query, 5, LITE2).image_ids
    clock[0] += 1.0
    assert image.pk in candidate_images(query, 2, LITE2).image_ids


@pytest.mark.parametrize("needed", [1, 1000, 1001, 1500, 2100, 4000, 4301, 164_800, 200_000])
def test_calibration_chooses_the_smallest_step_that_reaches_the_target(monkeypatch, needed):
    tried = []

    def recall(self, annoy, vectors, projection, search_k):  # rises with search_k, reaching 0.99 at `needed`
        tried.append(search_k)
        return 0.99 * min(1.0, search_k / needed)

    monkeypatch.setattr(build.Calibration, "recall", recall)
    chosen = build.Calibration(np.zeros(0, np.int64), np.zeros((0, 4), np.float32)).search_k(None, None, None, 0.99)
    reaching = [step for step in build.SEARCH_K_STEPS if step >= needed]
    assert chosen == (reaching[0] if reaching else build.SEARCH_K_STEPS[-1])
    assert len(tried) <= len(build.SEARCH_K_STEPS[::2]) + 1  # every other step, then one between


def test_an_index_tells_which_embeddings_it_holds_as_they_are():
    from recommender.retrieval.versions import LoadedIndex

    image_ids, product_ids = np.array([30, 10, 20]), np.array([3, 1, 2])
    index = LoadedIndex(Path("v"), None, None, image_ids, product_ids, np.eye(3, dtype=np.float32), None)
    asked = np.array([10, 20, 40, 30, 10])
    vectors = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0], [1, 0, 0], [0, 1, 1]], np.float32)
    # Held; moved to another product; not in the index; held; another vector.
    assert index.holds(asked, np.array([1, 9, 4, 3, 1]), vectors).tolist() == [True, False, False, True, False]
    assert index.contains(asked).tolist() == [True, True, False, True, True]
    empty = LoadedIndex(Path("v"), None, None, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3)), None)
    assert not empty.holds(asked, asked, vectors).any() and not empty.contains(asked).any()


def test_recent_embeddings_leave_out_what_the_index_holds(embedded_catalogue):
    from recommender.retrieval.reader import index_reader, recent_embeddings

    build_index(LITE2)
    index = index_reader(LITE2).get()
    # The embeddings written within DELTA_OVERLAP of the build's newest are read again: the index
    # holds them as they are.
    images = list(ProductImage.objects.order_by("pk")[:3])
    ImageEmbedding.objects.filter(image__in=images[:2], backbone=LITE2.name).update(computed_at=index.manifest.until)
    recent = recent_embeddings(index, LITE2)
    assert len(recent.image_ids) == 0 and len(recent.withdrawn) == 0

    # Within that overlap, one committed late (the build never saw its vector) and one whose photo
    # moved to another product; since the build, one that failed: each is news to the index.
    ImageEmbedding.objects.filter(image=images[0], backbone=LITE2.name).update(vector=query_vector(9))
    ProductImage.objects.filter(pk=images[1].pk).update(product=images[2].product)
    ImageEmbedding.objects.filter(image=images[2], backbone=LITE2.name).update(
        status=ImageEmbedding.Status.FAILED, vector=None, computed_at=timezone.now()
    )
    recent = recent_embeddings(index, LITE2)
    assert sorted(recent.image_ids.tolist()) == [images[0].pk, images[1].pk]
    assert recent.withdrawn.tolist() == [images[2].pk]
    assert np.array_equal(recent.vectors[recent.image_ids.tolist().index(images[0].pk)], query_vector(9))


def test_a_build_reads_back_the_rows_it_wrote(tmp_path):
    vectors = np.random.default_rng(3).normal(size=(50, 7)).astype(np.float32)
    with (tmp_path / "vectors.npy").open("w+b") as file:
        np.lib.format.write_array_header_1_0(file, {"descr": "<f4", "fortran_order": False, "shape": (50, 7)})
        rows = build.MatrixRows(file, 50, 7)
        file.write(vectors.tobytes())
        file.flush()
        assert np.array_equal(rows[np.array([0, 49, 3, 3])], vectors[[0, 49, 3, 3]])
        assert rows[np.array([], np.int64)].shape == (0, 7)
    assert np.array_equal(np.load(tmp_path / "vectors.npy"), vectors)


def test_calibration_counts_an_identical_photo_as_found():
    from annoy import AnnoyIndex

    rng = np.random.default_rng(4)
    vectors = rng.normal(size=(400, 16)).astype(np.float32)
    vectors[200:] = vectors[:200]  # every photo twice
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    annoy = AnnoyIndex(16, "angular")
    for row, vector in enumerate(vectors.tolist()):
        annoy.add_item(row, vector)
    annoy.build(10)
    calibration = build.Calibration(np.arange(0, 400, 8), vectors[::8])
    calibration.add(0, vectors)

    # Exact search over everything: whichever twin ranks first, the recall is whole.
    assert calibration.recall(annoy, vectors, None, search_k=400 * 10) == 1.0
    assert calibration.search_k(annoy, vectors, None, 0.99) == build.SEARCH_K_STEPS[0]


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
