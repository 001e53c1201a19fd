"""Index versions shared between hosts through Django's storage API (STORAGES["indexes"]).

The host that builds a version uploads its files to the index storage, then records the version
in PostgreSQL: from then on it is the current version of its space for every host. Each process
runs an `IndexSync` thread that polls PostgreSQL; when a newer version is published it downloads
the files into the host's own INDEX_DIR (checking each against the manifest's SHA-256 as it
arrives), switches that host's `current` link and loads the version, while searches keep
answering from the old one. A version that fails its checks is never switched to; a storage or
database outage leaves the current version serving and is retried at the next poll.
"""

import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import asdict
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.core.files.storage import Storage, storages
from django.db import close_old_connections

from ..encoding.backbones import Backbone
from ..models import IndexVersion
from .versions import (
    MANIFEST_FILE,
    IndexManifest,
    UnusableIndex,
    backbone_dir,
    current_manifest,
    current_version,
    fsync,
    record_verified,
    remove_old_versions,
    switch_current,
)

logger = logging.getLogger(__name__)
CHUNK_BYTES = 1 << 20


def index_storage() -> Storage:
    return storages["indexes"]


def _key(space: str, version: str, name: str) -> str:
    return f"{space}/{version}/{name}"


def publish(directory: Path, manifest: IndexManifest) -> IndexVersion:
    """Upload a complete version's files (the manifest last), then make it the current version for every host."""
    storage = index_storage()
    for name in (*manifest.files, MANIFEST_FILE):
        key = _key(manifest.backbone, manifest.version, name)
        if storage.exists(key):  # a publication cut short before: its files may be incomplete
            storage.delete(key)
        with (directory / name).open("rb") as file:
            saved = storage.save(key, File(file, name=name))
        if saved != key:
            raise OSError(f"the index storage saved {key} as {saved}")
    record = IndexVersion.objects.create(space=manifest.backbone, version=manifest.version, manifest=asdict(manifest))
    _remove_old_publications(manifest.backbone)
    return record


def _remove_old_publications(space: str) -> None:
    """Keep the newest INDEX_KEEP_VERSIONS published versions; hosts still serving an older one keep their copy."""
    keep = max(settings.INDEX_KEEP_VERSIONS, 1)
    old = list(IndexVersion.objects.filter(space=space).order_by("-published_at", "-pk")[keep:])
    storage = index_storage()
    for record in old:
        for name in (*record.manifest.get("checksums", {}), MANIFEST_FILE):
            storage.delete(_key(space, record.version, name))
        record.delete()


def published_manifest(backbone: Backbone) -> IndexManifest | None:
    """The manifest of the version every host serves; before the first publication, this host's own."""
    record = IndexVersion.objects.current(backbone.name)
    if record is None:
        return current_manifest(backbone)
    try:
        return IndexManifest(**record.manifest)
    except (TypeError, ValueError) as exc:
        logger.error(
            "The published %s index %s is invalid (%s): the next build replaces it", backbone.name, record.version, exc
        )
        return None


def fetch(record: IndexVersion, backbone: Backbone) -> Path:
    """The version's directory in this host's INDEX_DIR, downloading and checking it first if need be.

    Raises UnusableIndex when a file does not match the manifest (nothing is kept), and the
    storage's own errors when it cannot be read."""
    manifest = IndexManifest(**record.manifest)
    versions = backbone_dir(backbone) / "versions"
    final = versions / manifest.version
    if final.is_dir():
        return final
    partial = versions / f"{manifest.version}.partial-{uuid.uuid4().hex[:8]}"
    partial.mkdir(parents=True)
    storage = index_storage()
    try:
        for name in manifest.files:
            digest = hashlib.sha256()
            with storage.open(_key(manifest.backbone, manifest.version, name), "rb") as source:
                with (partial / name).open("wb") as target:
                    while chunk := source.read(CHUNK_BYTES):
                        digest.update(chunk)
                        target.write(chunk)
            if digest.hexdigest() != manifest.checksums.get(name):
                raise UnusableIndex(f"{name} of index {manifest.version} does not match its checksum")
        (partial / MANIFEST_FILE).write_text(json.dumps(record.manifest, indent=2))
        for path in partial.iterdir():
            fsync(path)
        record_verified(partial, manifest)  # checked as it arrived: this host's processes load it without hashing again
        try:
            os.rename(partial, final)
        except OSError:  # another process on this host fetched it first
            if not final.is_dir():
                raise
            shutil.rmtree(partial, ignore_errors=True)
        return final
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


class IndexSync:
    """Keeps this host's copy of a space's index on the published version; one per process and space."""

    def __init__(self, backbone: Backbone, on_switch=lambda: None):
        self.backbone = backbone
        self.on_switch = on_switch  # loads the new version (the reader), here rather than in a search
        self.refused: set[str] = set()  # versions that failed their checks: not fetched again

    def sync(self) -> str:
        """One poll: what happened, for logs and tests."""
        try:
            record = IndexVersion.objects.current(self.backbone.name)
        except Exception as exc:  # the database is away: keep serving what we have
            logger.warning("Cannot read the published %s index version: %s", self.backbone.name, exc)
            return "database unreachable"
        if record is None or record.version == current_version(self.backbone):
            return "up to date"
        if record.version in self.refused:
            return "refused"
        try:
            directory = fetch(record, self.backbone)
        except UnusableIndex as exc:
            self.refused.add(record.version)
            logger.error("Not serving index %s: %s", record.version, exc)
            return "refused"
        except Exception as exc:  # storage backends raise their own types
            logger.warning("Cannot fetch index %s (keeping the current one): %s", record.version, exc)
            return "storage unreachable"
        switch_current(self.backbone, directory.name)
        self.on_switch()
        remove_old_versions(self.backbone)
        logger.info("Switched to the published %s index %s", self.backbone.name, record.version)
        return "switched"

    def start(self, interval: float) -> threading.Thread:
        def poll_forever():
            while True:
                try:
                    self.sync()
                except Exception:  # a bad poll must not end the polling
                    logger.exception("Index sync of %s failed", self.backbone.name)
                close_old_connections()  # as after a request: a broken or expired connection is dropped
                time.sleep(interval)

        thread = threading.Thread(target=poll_forever, name=f"index-sync-{self.backbone.name}", daemon=True)
        thread.start()
        return thread
