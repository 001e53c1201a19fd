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


def load_version(directory: Path) -> LoadedIndex:
    """Open a version after checking every file against its manifest (raises UnusableIndex)."""
    from annoy import AnnoyIndex

    manifest = IndexManifest.read(directory)
    for name in (INDEX_FILE, IDS_FILE, VECTORS_FILE):
        path = directory / name
        if not path.is_file():
            raise UnusableIndex(f"{path} is missing")
        if file_checksum(path) != manifest.checksums.get(name):
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
