"""Turning images into L2-normalised embeddings, and storing them for catalogue images.

The catalogue pipeline runs in stages: fetch rows (main thread, database) -> read and decode files
(thread pool, the next batch while the model works on this one) -> embed (one model call per batch)
-> write (one upsert per batch). Each stage's time is reported.
"""

import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from django.core.exceptions import ValidationError
from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone

from catalog.images import upright_rgb
from catalog.models import ProductImage

from .backbones import Backbone, get_backbone
from .models import ImageEmbedding
from .preprocessing import load_pixels, square_pixels

logger = logging.getLogger(__name__)


class Embedder:
    """A backbone's model, built once, called directly on whole batches."""

    def __init__(self, backbone: Backbone):
        import tensorflow as tf

        self.backbone = backbone
        self.model = backbone.build()
        size = backbone.input_size
        self._forward = tf.function(
            lambda batch: self.model(batch, training=False),
            input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32)],
        )
        self._lock = threading.Lock()

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(n, size, size, 3) uint8 RGB -> (n, dimension) float32, each row of unit length."""
        if len(pixels) == 0:
            return np.zeros((0, self.backbone.dimension), dtype=np.float32)
        with self._lock:  # one batch at a time per process: TensorFlow already uses every core
            features = self._forward(self.backbone.preprocess(pixels)).numpy()
        return normalise_rows(features)


def normalise_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


_embedders: dict[str, Embedder] = {}
_embedders_lock = threading.Lock()


def get_embedder(backbone_name: str | None = None) -> Embedder:
    """The process's embedder for a backbone (the configured one by default), built on first use."""
    backbone = get_backbone(backbone_name)
    with _embedders_lock:  # a warm-up thread and a request may ask at once: build it only once
        if backbone.name not in _embedders:
            started = time.monotonic()
            _embedders[backbone.name] = Embedder(backbone)
            logger.info("Loaded %s in %.1fs", backbone.name, time.monotonic() - started)
        return _embedders[backbone.name]


def images_missing_embeddings(backbone_name: str) -> QuerySet:
    """Images with no embedding (done or failed) for this backbone and their current content."""
    current = ImageEmbedding.objects.filter(
        image=OuterRef("pk"), backbone=backbone_name, image_checksum=OuterRef("checksum")
    )
    return ProductImage.objects.filter(~Exists(current))


@dataclass
class EmbedReport:
    embedded: int = 0
    failed: int = 0
    skipped: int = 0  # already embedded, or gone
    seconds: dict[str, float] = field(default_factory=lambda: {"fetch": 0.0, "decode": 0.0, "embed": 0.0, "write": 0.0})

    def add(self, other: "EmbedReport") -> None:
        self.embedded += other.embedded
        self.failed += other.failed
        self.skipped += other.skipped
        for stage, seconds in other.seconds.items():
            self.seconds[stage] += seconds


@dataclass(frozen=True)
class _Job:
    image_id: int
    checksum: str
    path: str


@dataclass
class _Decoded:
    jobs: list[_Job]
    pixels: np.ndarray
    failures: list[tuple[_Job, str]]  # and why each could not be read
    seconds: float


def _decode(jobs: list[_Job], size: int, pool: ThreadPoolExecutor | None) -> _Decoded:
    started = time.monotonic()

    def read(job: _Job):
        try:
            with open(job.path, "rb") as file:
                return load_pixels(file, size)
        except ValidationError as exc:
            return " ".join(exc.messages)
        except OSError as exc:
            return f"cannot read the file: {exc}"

    results = list(pool.map(read, jobs) if pool else map(read, jobs))
    good = [(job, result) for job, result in zip(jobs, results) if not isinstance(result, str)]
    failures = [(job, result) for job, result in zip(jobs, results) if isinstance(result, str)]
    pixels = np.stack([p for _, p in good]) if good else np.zeros((0, size, size, 3), np.uint8)
    return _Decoded([job for job, _ in good], pixels, failures, time.monotonic() - started)


def _fetch_jobs(image_ids: Iterable[int], backbone_name: str) -> list[_Job]:
    rows = images_missing_embeddings(backbone_name).filter(pk__in=list(image_ids)).order_by("pk")
    return [_Job(row.pk, row.checksum, row.image.path) for row in rows.only("pk", "checksum", "image")]


def _write(decoded: _Decoded, vectors: np.ndarray, backbone: Backbone) -> None:
    now = timezone.now()
    rows = [
        ImageEmbedding(
            image_id=job.image_id,
            backbone=backbone.name,
            image_checksum=job.checksum,
            status=ImageEmbedding.Status.DONE,
            vector=vector.astype(np.float32).tobytes(),
            dimension=backbone.dimension,
            error="",
            computed_at=now,
        )
        for job, vector in zip(decoded.jobs, vectors)
    ]
    rows += [
        ImageEmbedding(
            image_id=job.image_id,
            backbone=backbone.name,
            image_checksum=job.checksum,
            status=ImageEmbedding.Status.FAILED,
            vector=None,
            dimension=None,
            error=error,
            computed_at=now,
        )
        for job, error in decoded.failures
    ]
    ImageEmbedding.objects.bulk_create(
        rows,
        update_conflicts=True,
        unique_fields=["image", "backbone"],
        update_fields=["image_checksum", "status", "vector", "dimension", "error", "computed_at"],
    )


def embed_images(image_ids: Iterable[int], backbone_name: str | None = None) -> EmbedReport:
    """Embed the given catalogue images that lack an up-to-date embedding; safe to repeat."""
    return embed_in_batches([list(image_ids)], backbone_name)


def embed_in_batches(
    batches: Iterable[list[int]],
    backbone_name: str | None = None,
    *,
    on_batch: Callable[[EmbedReport], None] = lambda report: None,
) -> EmbedReport:
    """Embed image ids batch by batch; each batch is committed before the next, so a killed run resumes.

    While the model works on one batch, the next one is read and decoded in the background.
    """
    embedder = get_embedder(backbone_name)
    backbone = embedder.backbone
    total = EmbedReport()
    batches = iter(batches)
    with ThreadPoolExecutor(max_workers=1) as prefetch, ThreadPoolExecutor(max_workers=2) as decoders:

        def start(image_ids: list[int] | None):
            if image_ids is None:
                return None
            started = time.monotonic()
            jobs = _fetch_jobs(image_ids, backbone.name)  # database work stays on this thread
            report = EmbedReport(skipped=len(image_ids) - len(jobs))
            report.seconds["fetch"] = time.monotonic() - started
            return report, prefetch.submit(_decode, jobs, backbone.input_size, decoders)

        upcoming = start(next(batches, None))
        while upcoming:
            report, decoding = upcoming
            decoded = decoding.result()
            upcoming = start(next(batches, None))
            report.seconds["decode"] = decoded.seconds
            started = time.monotonic()
            vectors = embedder.embed_pixels(decoded.pixels)
            report.seconds["embed"] = time.monotonic() - started
            started = time.monotonic()
            _write(decoded, vectors, backbone)
            report.seconds["write"] = time.monotonic() - started
            report.embedded, report.failed = len(decoded.jobs), len(decoded.failures)
            for job, error in decoded.failures:
                logger.warning("Image %s cannot be embedded: %s", job.image_id, error)
            total.add(report)
            on_batch(report)
    return total


def embed_catalogue(
    backbone_name: str | None = None,
    *,
    batch_size: int = 32,
    on_batch: Callable[[EmbedReport], None] = lambda report: None,
) -> EmbedReport:
    """Embed every catalogue image that lacks an embedding for the backbone."""
    backbone = get_backbone(backbone_name)
    image_ids = list(images_missing_embeddings(backbone.name).order_by("pk").values_list("pk", flat=True))
    batches = (image_ids[start : start + batch_size] for start in range(0, len(image_ids), batch_size))
    return embed_in_batches(batches, backbone.name, on_batch=on_batch)


def embed_uploaded_image(image, backbone_name: str | None = None) -> np.ndarray:
    """The embedding of one decoded PIL image (a shopper's photo), prepared like catalogue images."""
    embedder = get_embedder(backbone_name)
    pixels = square_pixels(upright_rgb(image), embedder.backbone.input_size)
    return embedder.embed_pixels(pixels[None])[0]
