"""Index versions whose checksums match but whose content is odd are refused once, never used."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from catalog.models import ProductImage
from recommender.retrieval import build_index, nearest_products
from recommender.retrieval.reader import _readers
from recommender.retrieval.search import candidate_images
from recommender.retrieval.versions import Projection, current_version_dir, file_checksum
from tests.helpers import stored_vector

pytestmark = [pytest.mark.django_db, pytest.mark.slow]  # 36 index builds


def fields(**changes):
    def tamper(manifest: dict, directory: Path) -> dict:
        return manifest | changes

    return tamper


def without(key: str):
    def tamper(manifest: dict, directory: Path) -> dict:
        del manifest[key]
        return manifest

    return tamper


def write_file(manifest: dict, directory: Path, name: str, write) -> dict:
    """Replace a data file and its checksum, so that only its content is wrong."""
    with (directory / name).open("wb") as file:
        write(file)
    manifest["checksums"][name] = file_checksum(directory / name)
    return manifest


def rewrite_array(name: str, change):
    def tamper(manifest: dict, directory: Path) -> dict:
        array = change(np.load(directory / name))
        return write_file(manifest, directory, name, lambda file: np.save(file, array, allow_pickle=True))

    return tamper


def pickled(name: str):
    def tamper(manifest: dict, directory: Path) -> dict:
        array = np.load(directory / name)
        return write_file(manifest, directory, name, lambda file: pickle.dump(array, file))

    return tamper


def rebuilt_annoy(change, *, vectors_too: bool = False):
    """items.ann rebuilt from changed vectors (projected first, when the version is), and with
    `vectors_too` vectors.npy and the manifest's dimension to match."""

    def tamper(manifest: dict, directory: Path) -> dict:
        from annoy import AnnoyIndex

        vectors = np.load(directory / "vectors.npy")
        if manifest["projected_dimension"] and not vectors_too:
            vectors = Projection.load(directory / "projection.npy").apply(vectors)
        vectors = np.ascontiguousarray(change(vectors))
        annoy = AnnoyIndex(vectors.shape[1], manifest["metric"])
        for row, vector in enumerate(vectors):
            annoy.add_item(row, vector)
        annoy.build(5)
        annoy.save(str(directory / "items.ann"))
        manifest["checksums"]["items.ann"] = file_checksum(directory / "items.ann")
        if vectors_too:
            write_file(manifest, directory, "vectors.npy", lambda file: np.save(file, vectors))
            manifest["dimension"] = vectors.shape[1]
        return manifest

    return tamper


ODD_VERSIONS = {
    "metric of an unprojected index": fields(metric="angular"),
    "bogus metric": fields(metric="bogus"),
    "dimension as a string": fields(dimension="1280"),
    "fractional dimension": fields(dimension=12.5),
    "negative dimension": fields(dimension=-1),
    "boolean trees": fields(n_trees=True),
    "trees as a string": fields(n_trees="25"),
    "negative items": fields(items=-1),
    "fractional items": fields(items=60.0),
    "another backbone": fields(backbone="resnet50"),
    "timestamp that is no date": fields(embeddings_until="yesterday"),
    "missing key": without("n_trees"),
    "unknown key": fields(colour="blue"),
    "checksums as a list": lambda manifest, directory: manifest | {"checksums": list(manifest["checksums"].values())},
    "manifest as a list": lambda manifest, directory: list(manifest.values()),
    "vectors of the wrong width": rewrite_array("vectors.npy", lambda vectors: vectors[:, :640]),
    "float64 vectors": rewrite_array("vectors.npy", lambda vectors: vectors.astype(np.float64)),
    "pickled vectors": pickled("vectors.npy"),
    "empty vectors file": lambda manifest, directory: write_file(manifest, directory, "vectors.npy", lambda file: None),
    "2-D image ids": rewrite_array("image_ids.npy", lambda ids: ids.reshape(-1, 1)),
    "float image ids": rewrite_array("image_ids.npy", lambda ids: ids.astype(np.float64)),
    "object image ids": rewrite_array("image_ids.npy", lambda ids: ids.astype(object)),
    "product ids of another length": rewrite_array("product_ids.npy", lambda ids: ids[:-1]),
    "float product ids": rewrite_array("product_ids.npy", lambda ids: ids.astype(np.float64)),
    "items.ann of another dimension": rebuilt_annoy(lambda vectors: vectors[:, : vectors.shape[1] // 2]),
    "items.ann in another order": rebuilt_annoy(lambda vectors: vectors[::-1]),
    "version of another dimension": rebuilt_annoy(lambda vectors: vectors[:, :640], vectors_too=True),
    "projected dimension as large as the vectors'": fields(projected_dimension=1280),
    "projection of another width": rewrite_array("projection.npy", lambda projection: projection[:, :640]),
    "float64 projection": rewrite_array("projection.npy", lambda projection: projection.astype(np.float64)),
    "projection on other axes": rewrite_array("projection.npy", lambda projection: projection[::-1]),
    "projection missing": lambda manifest, directory: (directory / "projection.npy").unlink() or manifest,
}


def tamper_with_current(backbone, tamper) -> None:
    directory = current_version_dir(backbone)
    path = directory / "manifest.json"
    path.write_text(json.dumps(tamper(json.loads(path.read_text()), directory)))


def refusals(caplog) -> int:
    return sum(record.getMessage().startswith("Cannot use index") for record in caplog.records)


@pytest.fixture
def query(embedded_catalogue, lite2) -> np.ndarray:
    _readers.clear()
    yield stored_vector(ProductImage.objects.order_by("pk")[3].pk, lite2)
    _readers.clear()


@pytest.mark.parametrize("tamper", ODD_VERSIONS.values(), ids=ODD_VERSIONS.keys())
def test_an_odd_version_means_exact_search_until_a_good_one_is_built(query, lite2, caplog, tamper):
    build_index(lite2)
    tamper_with_current(lite2, tamper)

    for _ in range(3):
        assert candidate_images(query, 5, lite2).source == "exact"
        assert len(nearest_products(query, lite2, k=5)) == 5
    assert refusals(caplog) == 1

    build_index(lite2, force=True)
    assert candidate_images(query, 5, lite2).source == "index"


@pytest.mark.parametrize("case", ["bogus metric", "vectors of the wrong width"])
def test_an_odd_new_version_leaves_the_previous_one_in_use(query, lite2, caplog, case):
    first = build_index(lite2).manifest
    assert candidate_images(query, 5, lite2).source == "index"
    build_index(lite2, force=True)
    tamper_with_current(lite2, ODD_VERSIONS[case])

    for _ in range(3):
        assert candidate_images(query, 5, lite2).source == "index"
        assert len(nearest_products(query, lite2, k=5)) == 5
    assert _readers[lite2.name].loaded.manifest.version == first.version
    assert refusals(caplog) == 1
