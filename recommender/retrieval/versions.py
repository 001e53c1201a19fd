"""Index versions on disk: their layout, manifest and verified loading.

Layout under INDEX_DIR/<backbone>/:

    versions/<version>/items.ann       Annoy index (angular), row i = image_ids[i]
    versions/<version>/image_ids.npy   row -> ProductImage id
    versions/<version>/vectors.npy     row -> the stored unit vector (for exact re-ranking)
    versions/<version>/manifest.json   IndexManifest, with a SHA-256 of each file
    current -> versions/<version>      symlink, replaced atomically

`build` writes versions and switches `current`; `reader` follows it in each process.
"""

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from django.conf import settings
from django.utils import timezone

from ..encoding.backbones import Backbone

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

    def __post_init__(self) -> None:
        # A manifest comes from disk: anything odd is refused here rather than failing in every search.
        checks = {
            "version": isinstance(self.version, str),
            "backbone": isinstance(self.backbone, str),
            "dimension": _is_count(self.dimension, least=1),
            "items": _is_count(self.items, least=0),
            "n_trees": _is_count(self.n_trees, least=1),
            "metric": self.metric == METRIC,
            "built_at": _is_timestamp(self.built_at),
            "build_seconds": type(self.build_seconds) in (int, float),
            "embeddings_until": self.embeddings_until is None or _is_timestamp(self.embeddings_until),
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
    link = current_link(backbone)
    try:
        return (link.parent / os.readlink(link)).resolve()
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


def file_checksum(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


@dataclass
class LoadedIndex:
    directory: Path
    manifest: IndexManifest
    annoy: object
    image_ids: np.ndarray
    vectors: np.ndarray  # memory-mapped

    def __len__(self) -> int:
        return len(self.image_ids)


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
        for name in (INDEX_FILE, IDS_FILE, VECTORS_FILE):
            if file_checksum(directory / name) != manifest.checksums.get(name):
                raise UnusableIndex(f"{directory / name} does not match its checksum")
        image_ids = np.load(directory / IDS_FILE, allow_pickle=False)
        vectors = np.load(directory / VECTORS_FILE, mmap_mode="r", allow_pickle=False)
        annoy = AnnoyIndex(manifest.dimension, manifest.metric)
        annoy.load(str(directory / INDEX_FILE), prefault=False)
    except (OSError, ValueError, EOFError) as exc:  # missing or unreadable files, Annoy's own refusals
        raise UnusableIndex(f"cannot read {directory}: {exc}") from exc
    expected = (np.int64, (manifest.items,), np.float32, (manifest.items, manifest.dimension))
    if (image_ids.dtype, image_ids.shape, vectors.dtype, vectors.shape) != expected:
        raise UnusableIndex(f"{directory} holds arrays of the wrong type or shape")
    # Annoy only checks that the file size fits the dimension: compare one of its vectors too.
    if annoy.get_n_items() != manifest.items or (
        manifest.items and not np.array_equal(np.array(annoy.get_item_vector(0), np.float32), vectors[0])
    ):
        raise UnusableIndex(f"{directory / INDEX_FILE} does not hold the version's vectors")
    return LoadedIndex(directory, manifest, annoy, image_ids, vectors)
