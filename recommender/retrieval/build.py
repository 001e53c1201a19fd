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
    METRIC,
    VECTOR_DTYPE,
    VECTORS_FILE,
    VERSION_FILES,
    IndexManifest,
    backbone_dir,
    file_checksum,
    fsync,
    record_verified,
    remove_old_versions,
    switch_current,
)

logger = logging.getLogger(__name__)
BUILD_BATCH = 2000  # embeddings read from PostgreSQL at a time
SEARCH_K_STEPS = (1000, 2000, 5000, 10_000, 20_000, 40_000, 80_000, 160_000)
CALIBRATION_QUERIES = 200


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
    if manifest is None:
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


def _rows_as_of(backbone: Backbone, stamp: EmbeddingStamp) -> tuple[np.ndarray, np.ndarray]:
    """(embedding pks, image ids) of the index to build, by image id."""
    rows = ImageEmbedding.objects.for_backbone(backbone).done()
    if stamp.latest is not None:
        rows = rows.filter(computed_at__lte=stamp.latest)
    pairs = np.array(list(rows.order_by("image_id").values_list("pk", "image_id").iterator(chunk_size=20_000)))
    pairs = pairs.reshape(-1, 2).astype(np.int64)
    return pairs[:, 0], pairs[:, 1]


def _exact_top(vectors: np.ndarray, queries: np.ndarray, count: int) -> np.ndarray:
    """Rows of the `count` best matches of each query, over the (memory-mapped) matrix in chunks."""
    best_rows = np.zeros((len(queries), 0), np.int64)
    best_scores = np.zeros((len(queries), 0), np.float32)
    for start in range(0, len(vectors), 65_536):
        scores = queries @ np.asarray(vectors[start : start + 65_536], np.float32).T
        rows = np.broadcast_to(np.arange(start, start + scores.shape[1]), scores.shape)
        scores, rows = np.hstack([best_scores, scores]), np.hstack([best_rows, rows])
        keep = np.argsort(-scores, axis=1, kind="stable")[:, :count]
        best_scores, best_rows = np.take_along_axis(scores, keep, 1), np.take_along_axis(rows, keep, 1)
    return best_rows


def calibrated_search_k(annoy, vectors: np.ndarray, target: float) -> int:
    """The smallest search_k of SEARCH_K_STEPS at which the index finds what exact search finds, as the
    site searches (CANDIDATES_PER_RESULT × 5 candidates re-ranked, top 5), for `target` of the top 5
    of CALIBRATION_QUERIES stored vectors (each query's own item left out)."""
    if len(vectors) <= 6:
        return SEARCH_K_STEPS[0]
    rows = np.random.default_rng(0).choice(len(vectors), size=min(CALIBRATION_QUERIES, len(vectors)), replace=False)
    queries = np.asarray(vectors[rows], np.float32)
    truths = [set(best.tolist()) - {row} for row, best in zip(rows, _exact_top(vectors, queries, 6))]
    for search_k in SEARCH_K_STEPS:
        found = 0
        for row, query, truth in zip(rows, queries, truths):
            candidates = np.array(annoy.get_nns_by_vector(query, 5 * CANDIDATES_PER_RESULT + 1, search_k=search_k))
            scores = np.asarray(vectors[candidates], np.float32) @ query
            top = set(candidates[np.argsort(-scores, kind="stable")[:6]].tolist()) - {row}
            found += len(top & truth)
        if found >= target * sum(len(truth) for truth in truths):
            return search_k
    return SEARCH_K_STEPS[-1]


def _write_version(backbone: Backbone, n_trees: int, stamp: EmbeddingStamp) -> IndexManifest:
    """Stream the vectors from PostgreSQL in batches into Annoy's on-disk build and a float16 matrix
    (for re-ranking), so that memory does not grow with the catalogue."""
    from annoy import AnnoyIndex

    started = time.monotonic()
    versions = backbone_dir(backbone) / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    version = timezone.now().strftime("%Y%m%dT%H%M%S.%f") + "-" + uuid.uuid4().hex[:6]  # sorts by build time
    partial = versions / f"{version}.partial"
    partial.mkdir()
    try:
        pks, image_ids = _rows_as_of(backbone, stamp)
        annoy = AnnoyIndex(backbone.dimension, METRIC)
        annoy.on_disk_build(str(partial / INDEX_FILE))
        vectors = np.lib.format.open_memmap(
            partial / VECTORS_FILE, mode="w+", dtype=VECTOR_DTYPE, shape=(len(pks), backbone.dimension)
        )
        for start in range(0, len(pks), BUILD_BATCH):
            batch = ImageEmbedding.objects.vectors_of(pks[start : start + BUILD_BATCH].tolist(), backbone.dimension)
            if batch is None:
                raise EmbeddingsChanged(f"embeddings of {backbone.name} were deleted during the build")
            for row, vector in enumerate(batch, start):
                annoy.add_item(row, vector)
            vectors[start : start + len(batch)] = batch
        annoy.build(n_trees, n_jobs=-1)  # writes the trees into the file as it goes
        search_k = calibrated_search_k(annoy, vectors, settings.INDEX_TARGET_RECALL)
        annoy.unload()
        vectors.flush()
        del vectors
        np.save(partial / IDS_FILE, image_ids)
        manifest = IndexManifest(
            version=version,
            backbone=backbone.name,
            dimension=backbone.dimension,
            items=len(image_ids),
            n_trees=n_trees,
            metric=METRIC,
            built_at=timezone.now().isoformat(),
            build_seconds=round(time.monotonic() - started, 3),
            embeddings_until=stamp.latest.isoformat() if stamp.latest else None,
            checksums={name: file_checksum(partial / name) for name in VERSION_FILES},
            search_k=search_k,
        )
        record_verified(partial)
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
