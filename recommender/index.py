"""The Annoy index: versioned builds on disk, an atomic switch, and readers that follow it.

Layout under INDEX_DIR/<backbone>/:

    versions/<version>/items.ann       Annoy index (angular), row i = image_ids[i]
    versions/<version>/image_ids.npy   row -> ProductImage id
    versions/<version>/vectors.npy     row -> the stored unit vector (for exact re-ranking)
    versions/<version>/manifest.json   IndexManifest, with a SHA-256 of each file
    current -> versions/<version>      symlink, replaced atomically

A build writes into versions/<version>.partial/, renames it when complete, then swaps `current`;
a crash at any point leaves the live index untouched. Builds are serialised with a PostgreSQL
advisory lock. A reader checks where `current` points on every search (one readlink) and loads
a new version before letting go of the old one; a version that is missing or fails its
checksums is never used.
"""

import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import connection
from django.utils import timezone

from .backbones import get_backbone
from .models import ImageEmbedding
from .vectors import embeddings_stamp, load_embedding_matrix

logger = logging.getLogger(__name__)

INDEX_FILE = "items.ann"
IDS_FILE = "image_ids.npy"
VECTORS_FILE = "vectors.npy"
MANIFEST_FILE = "manifest.json"
METRIC = "angular"
# An embedding's computed_at is taken just before its transaction commits, so one may miss a
# build's snapshot yet be older than it: the reader's delta looks this far back, and duplicates
# are merged by image id.
DELTA_OVERLAP = timedelta(seconds=5)


class UnusableIndex(Exception):
    """An index version on disk is incomplete or damaged."""


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

    @classmethod
    def read(cls, directory: Path) -> "IndexManifest":
        try:
            return cls(**json.loads((directory / MANIFEST_FILE).read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise UnusableIndex(f"no readable manifest in {directory}: {exc}") from exc

    @property
    def until(self) -> datetime | None:
        return datetime.fromisoformat(self.embeddings_until) if self.embeddings_until else None

    @property
    def age_seconds(self) -> float:
        return (timezone.now() - datetime.fromisoformat(self.built_at)).total_seconds()


def backbone_dir(backbone: str) -> Path:
    return Path(settings.INDEX_DIR) / backbone


def current_link(backbone: str) -> Path:
    return backbone_dir(backbone) / "current"


def current_version_dir(backbone: str) -> Path | None:
    link = current_link(backbone)
    try:
        return (link.parent / os.readlink(link)).resolve()
    except OSError:
        return None


def current_manifest(backbone: str) -> IndexManifest | None:
    directory = current_version_dir(backbone)
    if directory is None:
        return None
    try:
        return IndexManifest.read(directory)
    except UnusableIndex:
        return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def index_is_stale(backbone: str) -> bool:
    manifest = current_manifest(backbone)
    count, latest = embeddings_stamp(backbone)
    if manifest is None:
        return count > 0
    return (manifest.items, manifest.until) != (count, latest)


def build_index(backbone: str | None = None, *, n_trees: int | None = None, force: bool = False) -> BuildResult:
    """Build a new index version from the stored embeddings and switch to it, if they changed."""
    backbone = get_backbone(backbone).name
    n_trees = n_trees or settings.INDEX_TREES
    with advisory_lock(f"annoy-index:{backbone}") as acquired:
        if not acquired:
            return BuildResult(None, "another build is running")
        if not force and not index_is_stale(backbone):
            return BuildResult(current_manifest(backbone), "up to date")
        count, latest = embeddings_stamp(backbone)
        if count == 0:
            return BuildResult(None, "no embeddings yet")
        manifest = _write_version(backbone, n_trees, (count, latest))
        _switch(backbone, manifest.version)
        _remove_old_versions(backbone)
        logger.info(
            "Index %s/%s: %d items, %d trees, %.1fs",
            backbone,
            manifest.version,
            manifest.items,
            n_trees,
            manifest.build_seconds,
        )
        return BuildResult(manifest, "built")


def _write_version(backbone: str, n_trees: int, stamp: tuple) -> IndexManifest:
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
        latest = stamp[1]
        manifest = IndexManifest(
            version=version,
            backbone=backbone,
            dimension=int(matrix.vectors.shape[1]),
            items=len(matrix),
            n_trees=n_trees,
            metric=METRIC,
            built_at=timezone.now().isoformat(),
            build_seconds=round(time.monotonic() - started, 3),
            embeddings_until=latest.isoformat() if latest else None,
            checksums={name: _sha256(partial / name) for name in (INDEX_FILE, IDS_FILE, VECTORS_FILE)},
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


def _switch(backbone: str, version: str) -> None:
    link = current_link(backbone)
    temporary = link.with_name(f".current-{uuid.uuid4().hex}")
    os.symlink(Path("versions") / version, temporary)
    os.replace(temporary, link)  # atomic: readers see the old or the new version, never neither
    _fsync(link.parent)


def _remove_old_versions(backbone: str) -> None:
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


# --- Reading -------------------------------------------------------------------------------


@dataclass
class LoadedIndex:
    directory: Path
    manifest: IndexManifest
    annoy: object
    image_ids: np.ndarray
    vectors: np.ndarray  # memory-mapped

    def __len__(self) -> int:
        return len(self.image_ids)


def load_version(directory: Path) -> LoadedIndex:
    """Open a version after checking every file against its manifest (raises UnusableIndex)."""
    from annoy import AnnoyIndex

    manifest = IndexManifest.read(directory)
    for name in (INDEX_FILE, IDS_FILE, VECTORS_FILE):
        path = directory / name
        if not path.is_file():
            raise UnusableIndex(f"{path} is missing")
        if _sha256(path) != manifest.checksums.get(name):
            raise UnusableIndex(f"{path} does not match its checksum")
    annoy = AnnoyIndex(manifest.dimension, manifest.metric)
    try:
        annoy.load(str(directory / INDEX_FILE), prefault=False)
    except OSError as exc:
        raise UnusableIndex(f"Annoy cannot load {directory / INDEX_FILE}: {exc}") from exc
    image_ids = np.load(directory / IDS_FILE)
    vectors = np.load(directory / VECTORS_FILE, mmap_mode="r")
    if not (annoy.get_n_items() == len(image_ids) == len(vectors) == manifest.items):
        raise UnusableIndex(f"{directory} holds inconsistent item counts")
    return LoadedIndex(directory, manifest, annoy, image_ids, vectors)


class IndexReader:
    """One process's view of a backbone's current index; follows `current` without a restart."""

    def __init__(self, backbone: str):
        self.backbone = backbone
        self.loaded: LoadedIndex | None = None
        self._unusable: Path | None = None  # the last version that failed to load
        self._lock = threading.Lock()

    def get(self) -> LoadedIndex | None:
        target = current_version_dir(self.backbone)
        loaded = self.loaded
        if target is None:
            if loaded is not None or self._unusable != Path():
                logger.warning("No %s index at %s: searching exactly", self.backbone, current_link(self.backbone))
                self._unusable = Path()
            self.loaded = None
            return None
        if loaded is not None and loaded.directory == target:
            return loaded
        if target == self._unusable:
            return loaded
        with self._lock:
            if self.loaded is not None and self.loaded.directory == target:
                return self.loaded
            try:
                self.loaded = load_version(target)
                self._unusable = None
                logger.info("Using %s index %s (%d items)", self.backbone, target.name, len(self.loaded))
            except UnusableIndex as exc:
                self._unusable = target
                logger.error(
                    "Cannot use index %s (%s); %s",
                    target,
                    exc,
                    "keeping the previous one" if self.loaded else "searching exactly",
                )
            return self.loaded


_readers: dict[str, IndexReader] = {}
_readers_lock = threading.Lock()


def index_reader(backbone: str) -> IndexReader:
    with _readers_lock:
        if backbone not in _readers:
            _readers[backbone] = IndexReader(backbone)
        return _readers[backbone]


@dataclass(frozen=True)
class RecentEmbeddings:
    """Embeddings written after an index was built."""

    image_ids: np.ndarray
    vectors: np.ndarray
    withdrawn: np.ndarray  # images whose newest embedding failed: not searchable any more


_recent: dict[tuple, RecentEmbeddings] = {}
_recent_lock = threading.Lock()


def recent_embeddings(backbone: str, since: datetime | None) -> RecentEmbeddings:
    """What changed since `since`; re-read only when a newer embedding exists (one indexed query)."""
    rows = ImageEmbedding.objects.filter(backbone=backbone)
    if since is not None:
        rows = rows.filter(computed_at__gt=since - DELTA_OVERLAP)
    latest = rows.order_by("-computed_at").values_list("computed_at", flat=True).first()
    key = (backbone, since, latest)
    with _recent_lock:
        if key in _recent:
            return _recent[key]
    fresh_ids, vectors, withdrawn = [], [], []
    for image_id, status, vector in rows.values_list("image_id", "status", "vector"):
        if status == ImageEmbedding.Status.DONE:
            fresh_ids.append(image_id)
            vectors.append(np.frombuffer(vector, dtype=np.float32))
        else:
            withdrawn.append(image_id)
    dimension = get_backbone(backbone).dimension
    recent = RecentEmbeddings(
        np.array(fresh_ids, dtype=np.int64),
        np.vstack(vectors) if vectors else np.zeros((0, dimension), np.float32),
        np.array(withdrawn, dtype=np.int64),
    )
    with _recent_lock:
        _recent.clear()  # only the newest state is ever asked for again
        _recent[key] = recent
    return recent
