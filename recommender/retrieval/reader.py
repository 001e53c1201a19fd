"""Each process's view of the current index version, and of the embeddings written since it was built.

A reader checks where `current` points on every search (one readlink) and loads a new version
before letting go of the old one; while one thread loads it, the others keep searching the old
one. A version that is missing or fails any of `load_version`'s checks is never used, and is tried
only once. With INDEX_SYNC_SECONDS set, each reader also runs an `IndexSync` thread that keeps
this host's copy on the version published for every host (publishing.py), and loads it there.
"""

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from django.conf import settings

from ..encoding.backbones import Backbone
from ..models import ImageEmbedding
from .publishing import IndexSync
from .versions import (
    DELTA_OVERLAP,
    IndexManifest,
    LoadedIndex,
    UnusableIndex,
    current_link,
    current_version_dir,
    load_version,
)

logger = logging.getLogger(__name__)


class IndexReader:
    """One process's view of a backbone's current index; follows `current` without a restart."""

    def __init__(self, backbone: Backbone):
        self.backbone = backbone
        self.loaded: LoadedIndex | None = None
        self._unusable: Path | None = None  # the last version that failed to load
        self._lock = threading.Lock()

    def get(self) -> LoadedIndex | None:
        target = current_version_dir(self.backbone)
        loaded = self.loaded
        if target is None:
            if loaded is not None or self._unusable != Path():
                logger.warning("No %s index at %s: searching exactly", self.backbone.name, current_link(self.backbone))
                self._unusable = Path()
            self.loaded = None
            return None
        if loaded is not None and loaded.directory == target:
            return loaded
        if target == self._unusable:
            return loaded
        # Another thread is loading: keep answering from the version in hand, if there is one.
        if not self._lock.acquire(blocking=loaded is None):
            return loaded
        try:
            if self.loaded is not None and self.loaded.directory == target:
                return self.loaded
            try:
                self.loaded = load_version(target, self.backbone)
                self._unusable = None
                logger.info("Using %s index %s (%d items)", self.backbone.name, target.name, len(self.loaded))
            except UnusableIndex as exc:
                self._unusable = target
                logger.error(
                    "Cannot use index %s (%s); %s",
                    target,
                    exc,
                    "keeping the previous one" if self.loaded else "searching exactly",
                )
            return self.loaded
        finally:
            self._lock.release()


_readers: dict[str, IndexReader] = {}
_readers_lock = threading.Lock()


def index_reader(backbone: Backbone) -> IndexReader:
    with _readers_lock:
        if backbone.name not in _readers:
            reader = _readers[backbone.name] = IndexReader(backbone)
            if settings.INDEX_SYNC_SECONDS > 0:
                IndexSync(backbone, on_switch=reader.get).start(settings.INDEX_SYNC_SECONDS)
        return _readers[backbone.name]


def index_in_use(backbone: Backbone) -> IndexManifest | None:
    """The manifest of the index this process answers from; None while it searches exactly."""
    loaded = index_reader(backbone).get()
    return loaded.manifest if loaded else None


@dataclass(frozen=True)
class RecentEmbeddings:
    """Embeddings written after an index was built."""

    image_ids: np.ndarray
    product_ids: np.ndarray
    vectors: np.ndarray
    withdrawn: np.ndarray  # images whose newest embedding failed: not searchable any more


@dataclass
class _RecentCheck:
    latest: datetime | None  # the newest computed_at when last read
    at: float  # time.monotonic() of the last check
    recent: RecentEmbeddings


_recent: dict[tuple, _RecentCheck] = {}
_recent_lock = threading.Lock()


def recent_embeddings(index: LoadedIndex, backbone: Backbone) -> RecentEmbeddings:
    """What changed since `index` was built. Checked at most every RECENT_EMBEDDINGS_CHECK_SECONDS
    (one indexed query), and re-read only when a newer embedding exists."""
    key = (backbone.name, index.directory)
    with _recent_lock:
        checked = _recent.get(key)
    if checked is not None and time.monotonic() - checked.at < settings.RECENT_EMBEDDINGS_CHECK_SECONDS:
        return checked.recent
    rows = ImageEmbedding.objects.for_backbone(backbone)
    if index.manifest.until is not None:
        rows = rows.filter(computed_at__gt=index.manifest.until - DELTA_OVERLAP)
    checked_at = time.monotonic()
    latest = rows.order_by("-computed_at").values_list("computed_at", flat=True).first()
    if checked is None or checked.latest != latest:
        checked = _RecentCheck(latest, checked_at, _read_recent(rows, index, backbone))
    checked.at = checked_at
    with _recent_lock:
        for older in [other for other in _recent if other[0] == backbone.name]:
            del _recent[older]  # only the newest state of a space is ever asked for again
        _recent[key] = checked
    return checked.recent


def _read_recent(rows, index: LoadedIndex, backbone: Backbone) -> RecentEmbeddings:
    """The embeddings `index` does not hold as they are. The rows read again for DELTA_OVERLAP
    are mostly in it already: left out, they cost searches nothing."""
    fresh_ids, product_ids, vectors, withdrawn = [], [], [], []
    for image_id, product_id, status, vector in rows.values_list("image_id", "image__product_id", "status", "vector"):
        if status == ImageEmbedding.Status.DONE:
            fresh_ids.append(image_id)
            product_ids.append(product_id)
            vectors.append(vector)
        else:
            withdrawn.append(image_id)
    fresh_ids, product_ids = np.array(fresh_ids, dtype=np.int64), np.array(product_ids, dtype=np.int64)
    vectors = np.vstack(vectors) if vectors else np.zeros((0, backbone.dimension), np.float32)
    new = ~index.holds(fresh_ids, product_ids, vectors)
    withdrawn = np.array(withdrawn, dtype=np.int64)
    return RecentEmbeddings(fresh_ids[new], product_ids[new], vectors[new], withdrawn[index.contains(withdrawn)])
