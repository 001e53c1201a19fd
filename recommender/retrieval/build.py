"""Building index versions: written aside, verified, then switched to atomically.

A build writes into versions/<version>.partial/, renames it when complete, then swaps `current`;
a crash at any point leaves the live index untouched. Builds are serialised with a PostgreSQL
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
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import connection
from django.utils import timezone

from ..encoding.backbones import Backbone
from ..models import EmbeddingStamp, ImageEmbedding
from .vectors import load_embedding_matrix
from .versions import (
    IDS_FILE,
    INDEX_FILE,
    MANIFEST_FILE,
    METRIC,
    VECTORS_FILE,
    IndexManifest,
    backbone_dir,
    current_link,
    current_manifest,
    current_version_dir,
    file_checksum,
)

logger = logging.getLogger(__name__)


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
    return _stale(current_manifest(backbone), ImageEmbedding.objects.for_backbone(backbone).done().stamp())


def _stale(manifest: IndexManifest | None, stamp: EmbeddingStamp) -> bool:
    if manifest is None:
        return stamp.count > 0
    return (manifest.items, manifest.until) != (stamp.count, stamp.latest)


def build_index(backbone: Backbone, *, n_trees: int | None = None, force: bool = False) -> BuildResult:
    """Build a new index version from the stored embeddings and switch to it, if they changed."""
    n_trees = n_trees or settings.INDEX_TREES
    with advisory_lock(f"annoy-index:{backbone.name}") as acquired:
        if not acquired:
            return BuildResult(None, "another build is running")
        manifest = current_manifest(backbone)
        stamp = ImageEmbedding.objects.for_backbone(backbone).done().stamp()
        if not force and not _stale(manifest, stamp):
            return BuildResult(manifest, "up to date")
        if stamp.count == 0:
            return BuildResult(None, "no embeddings yet")
        manifest = _write_version(backbone, n_trees, stamp)
        _switch(backbone, manifest.version)
        _remove_old_versions(backbone)
        logger.info(
            "Index %s/%s: %d items, %d trees, %.1fs",
            backbone.name,
            manifest.version,
            manifest.items,
            n_trees,
            manifest.build_seconds,
        )
        return BuildResult(manifest, "built")


def _write_version(backbone: Backbone, n_trees: int, stamp: EmbeddingStamp) -> IndexManifest:
    from annoy import AnnoyIndex

    started = time.monotonic()
    versions = backbone_dir(backbone) / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    version = timezone.now().strftime("%Y%m%dT%H%M%S.%f") + "-" + uuid.uuid4().hex[:6]  # sorts by build time
    partial = versions / f"{version}.partial"
    partial.mkdir()
    try:
        matrix = load_embedding_matrix(backbone, stamp)
        annoy = AnnoyIndex(matrix.vectors.shape[1], METRIC)
        for row, vector in enumerate(matrix.vectors):
            annoy.add_item(row, vector)
        annoy.build(n_trees, n_jobs=-1)
        annoy.save(str(partial / INDEX_FILE))
        annoy.unload()
        np.save(partial / IDS_FILE, matrix.image_ids)
        np.save(partial / VECTORS_FILE, matrix.vectors)
        manifest = IndexManifest(
            version=version,
            backbone=backbone.name,
            dimension=int(matrix.vectors.shape[1]),
            items=len(matrix),
            n_trees=n_trees,
            metric=METRIC,
            built_at=timezone.now().isoformat(),
            build_seconds=round(time.monotonic() - started, 3),
            embeddings_until=stamp.latest.isoformat() if stamp.latest else None,
            checksums={name: file_checksum(partial / name) for name in (INDEX_FILE, IDS_FILE, VECTORS_FILE)},
        )
        (partial / MANIFEST_FILE).write_text(json.dumps(asdict(manifest), indent=2))
        for path in partial.iterdir():
            _fsync(path)
        final = versions / version
        os.rename(partial, final)
        _fsync(versions)
        return manifest
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _switch(backbone: Backbone, version: str) -> None:
    link = current_link(backbone)
    temporary = link.with_name(f".current-{uuid.uuid4().hex}")
    os.symlink(Path("versions") / version, temporary)
    os.replace(temporary, link)  # atomic: readers see the old or the new version, never neither
    _fsync(link.parent)


def _remove_old_versions(backbone: Backbone) -> None:
    """Keep the newest INDEX_KEEP_VERSIONS complete versions; drop leftovers of crashed builds.

    Processes still reading a removed version keep their open files until they switch.
    """
    versions = backbone_dir(backbone) / "versions"
    current = current_version_dir(backbone)
    complete = sorted((p for p in versions.iterdir() if not p.name.endswith(".partial")), reverse=True)
    keep = set(complete[: max(settings.INDEX_KEEP_VERSIONS, 1)]) | {current}
    for path in versions.iterdir():
        if path.resolve() not in {k.resolve() for k in keep if k}:
            shutil.rmtree(path, ignore_errors=True)
