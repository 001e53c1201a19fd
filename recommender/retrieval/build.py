"""Building index versions: written aside, verified, then switched to atomically.

A build writes into versions/<version>.partial/, renames it when complete, publishes it to the
index storage for every host (publishing.py), then swaps this host's `current`; a crash at any
point leaves the live index untouched. Builds are serialised with a PostgreSQL
advisory lock.
"""

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
from django.conf import settings
from django.db import connection
from django.utils import timezone

from ..encoding.backbones import Backbone
from ..models import EmbeddingStamp, ImageEmbedding
from .publishing import publish, published_manifest
from .search import CANDIDATES_PER_RESULT
from .versions import (
    IDS_FILE,
    INDEX_FILE,
    MANIFEST_FILE,
    PRODUCT_IDS_FILE,
    PROJECTION_FILE,
    VECTOR_DTYPE,
    VECTORS_FILE,
    IndexManifest,
    LoadedIndex,
    Projection,
    annoy_metric,
    backbone_dir,
    file_checksum,
    fsync,
    index_candidates,
    record_verified,
    remove_old_versions,
    switch_current,
)

logger = logging.getLogger(__name__)
BUILD_BATCH = 2000  # embeddings read from PostgreSQL at a time
# search_k values calibration chooses from, cheapest first: 1,000 to 165,000, each 1.2 times the
# one before, so that the one chosen is at most a fifth more than the target needs.
SEARCH_K_STEPS = tuple(int(round(1000 * 1.2**step, -2)) for step in range(29))
CALIBRATION_QUERIES = 500
PROJECTION_SAMPLE = 20_000  # vectors the projection's axes are fitted on


@contextmanager
def advisory_lock(name: str):
    """A PostgreSQL session lock; yields whether we got it (never waits)."""
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
        acquired = cursor.fetchone()[0]
    try:
        yield acquired
    finally:
        if acquired:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [key])


@dataclass(frozen=True)
class BuildResult:
    manifest: IndexManifest | None
    reason: str  # what happened, for logs and the admin


def index_is_stale(backbone: Backbone) -> bool:
    return _stale(published_manifest(backbone), ImageEmbedding.objects.for_backbone(backbone).done().stamp())


def _stale(manifest: IndexManifest | None, stamp: EmbeddingStamp) -> bool:
    if (
        manifest is None
        or not manifest.current_layout
        or manifest.projected_dimension != projected_dimension(manifest.dimension)  # the setting changed
    ):
        return stamp.count > 0
    return (manifest.items, manifest.until) != (stamp.count, stamp.latest)


def build_index(backbone: Backbone, *, n_trees: int | None = None, force: bool = False) -> BuildResult:
    """Build a new index version from the stored embeddings, if they changed, and publish it: every
    host switches to it (this one at once, the others at their next poll)."""
    n_trees = n_trees or settings.INDEX_TREES
    with advisory_lock(f"annoy-index:{backbone.name}") as acquired:
        if not acquired:
            return BuildResult(None, "another build is running")
        manifest = published_manifest(backbone)
        stamp = ImageEmbedding.objects.for_backbone(backbone).done().stamp()
        if not force and not _stale(manifest, stamp):
            return BuildResult(manifest, "up to date")
        if stamp.count == 0:
            return BuildResult(None, "no embeddings yet")
        try:
            manifest = _write_version(backbone, n_trees, stamp)
        except EmbeddingsChanged as exc:
            logger.info("Index build of %s given up: %s", backbone.name, exc)
            return BuildResult(None, "embeddings changed during the build; the next one starts afresh")
        publish(backbone_dir(backbone) / "versions" / manifest.version, manifest)
        switch_current(backbone, manifest.version)
        remove_old_versions(backbone)
        logger.info(
            "Index %s/%s: %d items, %d trees, %.1fs",
            backbone.name,
            manifest.version,
            manifest.items,
            n_trees,
            manifest.build_seconds,
        )
        return BuildResult(manifest, "built")


class EmbeddingsChanged(Exception):
    """An embedding the build was reading was deleted meanwhile; the next build starts afresh."""


def _rows_as_of(backbone: Backbone, stamp: EmbeddingStamp) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(embedding pks, image ids, product ids) of the index to build, by image id."""
    rows = ImageEmbedding.objects.for_backbone(backbone).done()
    if stamp.latest is not None:
        rows = rows.filter(computed_at__lte=stamp.latest)
    rows = rows.order_by("image_id").values_list("pk", "image_id", "image__product_id")
    table = np.array(list(rows.iterator(chunk_size=20_000)), dtype=np.int64).reshape(-1, 3)
    return table[:, 0], table[:, 1].copy(), table[:, 2].copy()


class Calibration:
    """Sample queries (stored vectors, each one's own item left out) and their exact top 5 by float32
    cosine, as the site's exact search finds them, gathered while the build streams the vectors."""

    def __init__(self, rows: np.ndarray, queries: np.ndarray):
        self.rows, self.queries = rows, queries
        self._best_rows = np.zeros((len(rows), 0), np.int64)
        self._best_scores = np.zeros((len(rows), 0), np.float32)

    @classmethod
    def of_index(cls, index: LoadedIndex, rows: np.ndarray) -> "Calibration":
        """Exact top 5 of these rows of a loaded version, for measuring what it serves."""
        calibration = cls(rows, np.asarray(index.vectors[rows], np.float32))
        for start in range(0, len(index), 100_000):
            calibration.add(start, np.asarray(index.vectors[start : start + 100_000], np.float32))
        return calibration

    def add(self, first_row: int, vectors: np.ndarray) -> None:
        scores = self.queries @ vectors.T
        rows = np.broadcast_to(np.arange(first_row, first_row + len(vectors)), scores.shape)
        scores, rows = np.hstack([self._best_scores, scores]), np.hstack([self._best_rows, rows])
        if scores.shape[1] > 6:  # the top 6: the query's own item and its top 5
            keep = np.argpartition(-scores, 5, axis=1)[:, :6]
            scores, rows = np.take_along_axis(scores, keep, 1), np.take_along_axis(rows, keep, 1)
        self._best_scores, self._best_rows = scores, rows

    def recall(self, annoy, vectors, projection: Projection | None, search_k: int) -> float:
        """The share of the exact top 5 that the index finds, searched as the site searches it
        (CANDIDATES_PER_RESULT × 5 candidates re-ranked, top 5). A result that ties the exact
        fifth-best score counts as found: of two identical photos, either is right."""
        found = wanted = 0
        for row, query, best_rows, best_scores in zip(
            self.rows.tolist(), self.queries, self._best_rows, self._best_scores
        ):
            exact = np.sort(best_scores[best_rows != row])[::-1][:5]
            candidates, scores = index_candidates(
                annoy, vectors, projection, query, 5 * CANDIDATES_PER_RESULT + 1, search_k
            )
            scores = scores[candidates != row][: len(exact)]
            found += int(np.sum(scores >= exact[-1] - 1e-5)) if len(exact) else 0
            wanted += len(exact)
        return found / wanted if wanted else 1.0

    def search_k(self, annoy, vectors, projection: Projection | None, target: float) -> int:
        """The smallest search_k of SEARCH_K_STEPS at which the index's recall reaches `target`:
        every other step first, then the one skipped below the first that reaches it."""

        def reaches(search_k: int) -> bool:
            return self.recall(annoy, vectors, projection, search_k) >= target

        coarse = SEARCH_K_STEPS[::2]
        found = next((step for step, search_k in enumerate(coarse) if reaches(search_k)), None)
        if found is None:
            return SEARCH_K_STEPS[-1]
        if found and reaches(SEARCH_K_STEPS[2 * found - 1]):
            return SEARCH_K_STEPS[2 * found - 1]
        return coarse[found]


def projected_dimension(dimension: int) -> int | None:
    """Annoy's dimension for a space: INDEX_PROJECTED_DIMENSION when the space has more."""
    return settings.INDEX_PROJECTED_DIMENSION if 0 < settings.INDEX_PROJECTED_DIMENSION < dimension else None


def _write_version(backbone: Backbone, n_trees: int, stamp: EmbeddingStamp) -> IndexManifest:
    """Stream the vectors from PostgreSQL in batches into the re-ranking matrix (written as a file,
    not mapped) and Annoy's on-disk build, so that memory does not grow with the catalogue. A space
    of more than INDEX_PROJECTED_DIMENSION dimensions is indexed on its principal axes, fitted first
    on a sample (versions.Projection)."""
    from annoy import AnnoyIndex

    started = time.monotonic()
    versions = backbone_dir(backbone) / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    version = timezone.now().strftime("%Y%m%dT%H%M%S.%f") + "-" + uuid.uuid4().hex[:6]  # sorts by build time
    partial = versions / f"{version}.partial"
    partial.mkdir()
    try:
        pks, image_ids, product_ids = _rows_as_of(backbone, stamp)
        if not len(pks):
            raise EmbeddingsChanged(f"every embedding of {backbone.name} was deleted during the build")
        rows = _sample_rows(len(pks), CALIBRATION_QUERIES)
        calibration = Calibration(rows, _vectors_of(pks[rows], backbone))
        projected = projected_dimension(backbone.dimension)
        projection = None
        if projected:
            projection = Projection.fit(
                _vectors_of(pks[_sample_rows(len(pks), PROJECTION_SAMPLE)], backbone), projected
            )
            projection.save(partial / PROJECTION_FILE)
        metric = annoy_metric(projected)
        annoy = AnnoyIndex(projected or backbone.dimension, metric)
        annoy.on_disk_build(str(partial / INDEX_FILE))
        with (partial / VECTORS_FILE).open("w+b") as matrix:
            header = {
                "descr": np.dtype(VECTOR_DTYPE).str,
                "fortran_order": False,
                "shape": (len(pks), backbone.dimension),
            }
            np.lib.format.write_array_header_1_0(matrix, header)
            vectors = MatrixRows(matrix, len(pks), backbone.dimension)
            for start in range(0, len(pks), BUILD_BATCH):
                batch = _vectors_of(pks[start : start + BUILD_BATCH], backbone)
                matrix.write(batch.astype(VECTOR_DTYPE, copy=False).tobytes())
                calibration.add(start, batch)
                _add_items(annoy, start, projection.apply(batch) if projection else batch)
            matrix.flush()
            annoy.build(n_trees, n_jobs=-1)  # writes the trees into the file as it goes
            search_k = calibration.search_k(annoy, vectors, projection, settings.INDEX_TARGET_RECALL)
        annoy.unload()
        np.save(partial / IDS_FILE, image_ids)
        np.save(partial / PRODUCT_IDS_FILE, product_ids)
        manifest = IndexManifest(
            version=version,
            backbone=backbone.name,
            dimension=backbone.dimension,
            items=len(image_ids),
            n_trees=n_trees,
            metric=metric,
            built_at=timezone.now().isoformat(),
            build_seconds=round(time.monotonic() - started, 3),
            embeddings_until=stamp.latest.isoformat() if stamp.latest else None,
            checksums={path.name: file_checksum(path) for path in sorted(partial.iterdir())},  # what it wrote
            search_k=search_k,
            projected_dimension=projected,
        )
        record_verified(partial, manifest)
        (partial / MANIFEST_FILE).write_text(json.dumps(asdict(manifest), indent=2))
        for path in partial.iterdir():
            fsync(path)
        final = versions / version
        os.rename(partial, final)
        fsync(versions)
        return manifest
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


class MatrixRows:
    """Rows of the matrix file a build is writing, read with pread: mapping it instead would bring
    most of the file into the build's memory (the kernel maps page-cache folios whole)."""

    def __init__(self, file, rows: int, dimension: int):
        self.descriptor, self.offset = file.fileno(), file.tell()
        self.rows, self.row_bytes = rows, dimension * np.dtype(VECTOR_DTYPE).itemsize

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        read = [os.pread(self.descriptor, self.row_bytes, self.offset + row * self.row_bytes) for row in rows.tolist()]
        return np.frombuffer(b"".join(read), VECTOR_DTYPE).reshape(len(read), self.row_bytes // VECTOR_DTYPE().itemsize)


def _sample_rows(count: int, size: int) -> np.ndarray:
    return np.sort(np.random.default_rng(0).choice(count, size=min(size, count), replace=False))


def _vectors_of(pks: np.ndarray, backbone: Backbone) -> np.ndarray:
    vectors = ImageEmbedding.objects.vectors_of(pks.tolist(), backbone.dimension)
    if vectors is None:
        raise EmbeddingsChanged(f"embeddings of {backbone.name} were deleted during the build")
    return vectors


def _add_items(annoy, first_row: int, vectors: np.ndarray) -> None:
    for row, vector in enumerate(np.asarray(vectors, np.float32).tolist(), first_row):  # lists: twice as fast as arrays
        annoy.add_item(row, vector)
