"""Index versions on disk: their layout, manifest and verified loading.

Layout under INDEX_DIR/<backbone>/:

    versions/<version>/items.ann       Annoy index (angular), row i = image_ids[i]
    versions/<version>/image_ids.npy   row -> ProductImage id
    versions/<version>/product_ids.npy row -> the image's Product id when the version was built (newer versions)
    versions/<version>/vectors.npy     row -> the stored unit vector (for exact re-ranking)
    versions/<version>/projection.npy  only in a projected index: the axes Annoy's vectors are on
    versions/<version>/manifest.json   IndexManifest, with a SHA-256 of each file
    current -> versions/<version>      symlink, replaced atomically

`build` writes versions and switches `current`; `reader` follows it in each process.
"""

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path

import numpy as np
from django.conf import settings
from django.utils import timezone

from ..encoding.backbones import Backbone

INDEX_FILE = "items.ann"
IDS_FILE = "image_ids.npy"
PRODUCT_IDS_FILE = "product_ids.npy"
VECTORS_FILE = "vectors.npy"
MANIFEST_FILE = "manifest.json"
PROJECTION_FILE = "projection.npy"
VERSION_FILES = (INDEX_FILE, IDS_FILE, VECTORS_FILE)  # every version has these
# Which files of a version were checked against the manifest's checksums, as they were (size, time):
# a version is hashed once per host (when built, fetched or first loaded), not by every process.
VERIFIED_FILE = ".verified.json"
# The re-ranking matrix: the only full copy of the vectors (Annoy holds their projection). float16
# would halve it, but numpy converts float16 twenty times slower than a search's whole index step.
VECTOR_DTYPE = np.float32
# A version being written or downloaded is "<version>.partial…"; one this old was abandoned by a crash.
ABANDONED_PARTIAL_SECONDS = 3600
METRIC = "angular"  # for unit vectors indexed as they are: the angle is the cosine's order
# For a centred projection: Euclidean distance there stands for the full space's (hence cosine's)
# order, where angles around the sample mean do not (half the search_k for the same recall at 45k).
PROJECTED_METRIC = "euclidean"


def annoy_metric(projected_dimension: int | None) -> str:
    """The Annoy metric of a version indexed on that many principal axes (None: as it is)."""
    return PROJECTED_METRIC if projected_dimension else METRIC


# An embedding's computed_at is taken just before its transaction commits, so one may miss a
# build's snapshot yet be older than it: the reader's delta looks this far back, and duplicates
# are merged by image id.
DELTA_OVERLAP = timedelta(seconds=5)


class UnusableIndex(Exception):
    """An index version on disk is incomplete or damaged."""


def _is_count(value, *, least: int) -> bool:
    return type(value) is int and value >= least  # not a bool, a float or a string


def _is_timestamp(value) -> bool:
    try:
        return datetime.fromisoformat(value).tzinfo is not None
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class IndexManifest:
    version: str
    backbone: str
    dimension: int
    items: int
    n_trees: int
    metric: str
    built_at: str
    build_seconds: float
    embeddings_until: str | None  # latest computed_at among the embeddings it holds
    checksums: dict[str, str] = field(default_factory=dict)
    search_k: int | None = None  # chosen at build time for INDEX_TARGET_RECALL; older versions: INDEX_SEARCH_K
    projected_dimension: int | None = None  # Annoy's dimension when it searches a projection of the vectors

    def __post_init__(self) -> None:
        # A manifest comes from disk: anything odd is refused here rather than failing in every search.
        checks = {
            "version": isinstance(self.version, str),
            "backbone": isinstance(self.backbone, str),
            "dimension": _is_count(self.dimension, least=1),
            "items": _is_count(self.items, least=0),
            "n_trees": _is_count(self.n_trees, least=1),
            "metric": self.metric == annoy_metric(self.projected_dimension),
            "built_at": _is_timestamp(self.built_at),
            "build_seconds": type(self.build_seconds) in (int, float),
            "embeddings_until": self.embeddings_until is None or _is_timestamp(self.embeddings_until),
            "search_k": self.search_k is None or _is_count(self.search_k, least=1),
            "projected_dimension": self.projected_dimension is None
            or (_is_count(self.projected_dimension, least=1) and self.projected_dimension < self.dimension),
            "checksums": isinstance(self.checksums, dict)
            and all(isinstance(value, str) for value in self.checksums.values()),
        }
        if wrong := [name for name, valid in checks.items() if not valid]:
            raise ValueError(f"invalid {', '.join(wrong)}")

    @classmethod
    def read(cls, directory: Path) -> "IndexManifest":
        try:
            return cls(**json.loads((directory / MANIFEST_FILE).read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise UnusableIndex(f"no valid manifest in {directory}: {exc}") from exc

    @property
    def files(self) -> tuple[str, ...]:
        """The version's files besides the manifest."""
        product_ids = (PRODUCT_IDS_FILE,) if PRODUCT_IDS_FILE in self.checksums else ()
        return VERSION_FILES + product_ids + ((PROJECTION_FILE,) if self.projected_dimension else ())

    @property
    def current_layout(self) -> bool:
        """Whether it was built as builds are today; an older version still serves until the next build."""
        return PRODUCT_IDS_FILE in self.checksums

    @property
    def annoy_dimension(self) -> int:
        return self.projected_dimension or self.dimension

    @property
    def until(self) -> datetime | None:
        return datetime.fromisoformat(self.embeddings_until) if self.embeddings_until else None

    @property
    def age_seconds(self) -> float:
        return (timezone.now() - datetime.fromisoformat(self.built_at)).total_seconds()


def backbone_dir(backbone: Backbone) -> Path:
    return Path(settings.INDEX_DIR) / backbone.name


def current_link(backbone: Backbone) -> Path:
    return backbone_dir(backbone) / "current"


def current_version_dir(backbone: Backbone) -> Path | None:
    """Where `current` points (one readlink: every search asks)."""
    link = current_link(backbone)
    try:
        return link.parent / os.readlink(link)
    except OSError:
        return None


def current_version(backbone: Backbone) -> str | None:
    """The name of the version `current` points at (one readlink), or None when there is none."""
    directory = current_version_dir(backbone)
    return directory.name if directory else None


def current_manifest(backbone: Backbone) -> IndexManifest | None:
    directory = current_version_dir(backbone)
    if directory is None:
        return None
    try:
        return IndexManifest.read(directory)
    except UnusableIndex:
        return None


def version_size(backbone: Backbone) -> int:
    """Bytes on disk of the current version's files (0 when there is none)."""
    directory = current_version_dir(backbone)
    if directory is None or not directory.is_dir():
        return 0
    return sum(path.stat().st_size for path in directory.iterdir())


def fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def switch_current(backbone: Backbone, version: str) -> None:
    link = current_link(backbone)
    temporary = link.with_name(f".current-{uuid.uuid4().hex}")
    os.symlink(Path("versions") / version, temporary)
    os.replace(temporary, link)  # atomic: readers see the old or the new version, never neither
    fsync(link.parent)


def remove_old_versions(backbone: Backbone) -> None:
    """Keep the newest INDEX_KEEP_VERSIONS complete versions and the current one; drop leftovers of
    crashed builds and downloads. Processes still reading a removed version keep their open files
    until they switch."""
    versions = backbone_dir(backbone) / "versions"
    current = current_version_dir(backbone)
    complete = sorted((path for path in versions.iterdir() if ".partial" not in path.name), reverse=True)
    keep = {path.resolve() for path in complete[: max(settings.INDEX_KEEP_VERSIONS, 1)]}
    if current:
        keep.add(current.resolve())
    for path in versions.iterdir():
        in_progress = ".partial" in path.name and time.time() - path.stat().st_mtime < ABANDONED_PARTIAL_SECONDS
        if path.resolve() not in keep and not in_progress:
            shutil.rmtree(path, ignore_errors=True)


def _file_stats(directory: Path, names: tuple[str, ...]) -> dict[str, list[int]]:
    return {name: [(stat := (directory / name).stat()).st_size, stat.st_mtime_ns] for name in names}


def record_verified(directory: Path, manifest: IndexManifest) -> None:
    """Note that the version's files, as they are now, match its checksums."""
    (directory / VERIFIED_FILE).write_text(json.dumps(_file_stats(directory, manifest.files)))


def _verified_before(directory: Path, manifest: IndexManifest) -> bool:
    try:
        return json.loads((directory / VERIFIED_FILE).read_text()) == _file_stats(directory, manifest.files)
    except (OSError, ValueError):
        return False


def file_checksum(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


@dataclass(frozen=True)
class Projection:
    """The principal axes of a space's vectors. Annoy's cost grows with the dimension and its recall
    falls with it, so a high-dimensional space is searched on its first axes and the candidates
    found there are re-ranked by exact cosine in the full space."""

    mean: np.ndarray  # (dimension,)
    axes: np.ndarray  # (projected dimension, dimension), orthonormal rows

    @classmethod
    def fit(cls, sample: np.ndarray, dimension: int) -> "Projection":
        sample = np.asarray(sample, np.float32)
        mean = sample.mean(axis=0)
        centred = sample - mean
        _, eigenvectors = np.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
        return cls(mean, np.ascontiguousarray(eigenvectors[:, ::-1][:, :dimension].T))

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        return (np.asarray(vectors, np.float32) - self.mean) @ self.axes.T

    def save(self, path: Path) -> None:
        np.save(path, np.vstack([self.mean, self.axes]))

    @classmethod
    def load(cls, path: Path) -> "Projection":
        stacked = np.load(path, allow_pickle=False)
        if stacked.dtype != np.float32 or stacked.ndim != 2:
            raise ValueError(f"{path} is not a float32 matrix")
        return cls(stacked[0], stacked[1:])


def index_candidates(
    annoy, vectors: np.ndarray, projection: Projection | None, query: np.ndarray, count: int, search_k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of Annoy's `count` candidates for a unit `query`, and their exact cosine, best first."""
    searched = projection.apply(query) if projection is not None else query
    rows = np.array(annoy.get_nns_by_vector(searched.tolist(), count, search_k=search_k), dtype=np.int64)
    scores = np.asarray(vectors[rows], dtype=np.float32) @ query
    order = np.argsort(-scores, kind="stable")
    return rows[order], scores[order]


@dataclass
class LoadedIndex:
    directory: Path
    manifest: IndexManifest
    annoy: object
    image_ids: np.ndarray
    product_ids: np.ndarray | None  # None in versions of an older layout
    vectors: np.ndarray  # memory-mapped
    projection: Projection | None

    def __len__(self) -> int:
        return len(self.image_ids)

    def search_k(self, count: int) -> int:
        return max(self.manifest.search_k or settings.INDEX_SEARCH_K, self.manifest.n_trees * count)

    def contains(self, image_ids: np.ndarray) -> np.ndarray:
        """Which of these images this version holds."""
        return self._rows_of(image_ids)[1]

    def holds(self, image_ids: np.ndarray, product_ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Which of these embeddings this version already holds as they are: same image, same
        product, same vector."""
        rows, held = self._rows_of(image_ids)
        if not held.any():
            return held
        if self.product_ids is not None:
            held &= self.product_ids[rows] == product_ids
        return held & (np.asarray(self.vectors[rows]) == vectors).all(axis=1)

    def _rows_of(self, image_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each image's row in this version, and whether it is there at all."""
        if not len(self):
            return np.zeros(len(image_ids), np.int64), np.zeros(len(image_ids), bool)
        order = self._image_id_order
        rows = np.minimum(np.searchsorted(self.image_ids, image_ids, sorter=order), len(self) - 1)
        if order is not None:
            rows = order[rows]
        return rows, self.image_ids[rows] == image_ids

    @cached_property
    def _image_id_order(self) -> np.ndarray | None:
        """None when the ids are in order already, as builds write them."""
        ids = self.image_ids
        return None if np.all(ids[:-1] <= ids[1:]) else np.argsort(ids)

    def nearest(self, query: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Image ids and product ids (None in an older version) of about the `count` stored vectors
        nearest to `query`, and their exact cosine, best first."""
        count = min(count, len(self))
        rows, scores = index_candidates(self.annoy, self.vectors, self.projection, query, count, self.search_k(count))
        return self.image_ids[rows], None if self.product_ids is None else self.product_ids[rows], scores


def load_version(directory: Path, backbone: Backbone) -> LoadedIndex:
    """Open a version after checking every file against its manifest and the backbone (raises UnusableIndex)."""
    from annoy import AnnoyIndex

    manifest = IndexManifest.read(directory)
    if (manifest.backbone, manifest.dimension) != (backbone.name, backbone.dimension):
        raise UnusableIndex(
            f"{directory} was built for {manifest.backbone} ({manifest.dimension}-d), "
            f"not {backbone.name} ({backbone.dimension}-d)"
        )
    try:
        if not _verified_before(directory, manifest):
            for name in manifest.files:
                if file_checksum(directory / name) != manifest.checksums.get(name):
                    raise UnusableIndex(f"{directory / name} does not match its checksum")
            record_verified(directory, manifest)
        image_ids = np.load(directory / IDS_FILE, allow_pickle=False)
        product_ids = np.load(directory / PRODUCT_IDS_FILE, allow_pickle=False) if manifest.current_layout else None
        vectors = np.load(directory / VECTORS_FILE, mmap_mode="r", allow_pickle=False)
        projection = Projection.load(directory / PROJECTION_FILE) if manifest.projected_dimension else None
        annoy = AnnoyIndex(manifest.annoy_dimension, manifest.metric)
        annoy.load(str(directory / INDEX_FILE), prefault=False)
    except (OSError, ValueError, EOFError) as exc:  # missing or unreadable files, Annoy's own refusals
        raise UnusableIndex(f"cannot read {directory}: {exc}") from exc
    ids = (np.int64, (manifest.items,))
    if (image_ids.dtype, image_ids.shape) != ids or vectors.shape != (manifest.items, manifest.dimension):
        raise UnusableIndex(f"{directory} holds arrays of the wrong type or shape")
    if product_ids is not None and (product_ids.dtype, product_ids.shape) != ids:
        raise UnusableIndex(f"{directory / PRODUCT_IDS_FILE} has the wrong type or shape")
    if vectors.dtype not in (VECTOR_DTYPE, np.float16):  # float16: versions of the older layout
        raise UnusableIndex(f"{directory / VECTORS_FILE} holds {vectors.dtype} vectors")
    if projection is not None and projection.axes.shape != (manifest.projected_dimension, manifest.dimension):
        raise UnusableIndex(f"{directory / PROJECTION_FILE} has the wrong shape")
    # Annoy only checks that the file size fits the dimension: compare one of its vectors too.
    if annoy.get_n_items() != manifest.items or (manifest.items and not _holds(annoy, vectors[0], projection)):
        raise UnusableIndex(f"{directory / INDEX_FILE} does not hold the version's vectors")
    return LoadedIndex(directory, manifest, annoy, image_ids, product_ids, vectors, projection)


def _holds(annoy, first_vector: np.ndarray, projection: Projection | None) -> bool:
    """Whether Annoy's first item is the version's first vector (projected, when the index is)."""
    held = np.array(annoy.get_item_vector(0), np.float32)
    if projection is None:
        return np.array_equal(held.astype(first_vector.dtype), first_vector)
    return np.allclose(held, projection.apply(first_vector), rtol=1e-4, atol=1e-5)
