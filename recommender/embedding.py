"""Embedding catalogue images and storing the vectors.

The catalogue pipeline runs in stages: fetch rows (main thread, database) -> read and decode files
(thread pool, the next batch while the model works on this one) -> embed (one model call per batch)
-> write (one upsert per batch). Each stage's time is reported.
"""

import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from django.core.exceptions import ValidationError
from django.utils import timezone

from .encoding.backbones import Backbone
from .encoding.embedder import get_embedder
from .encoding.preprocessing import file_pixels
from .labels import PRODUCT_LABEL_FIELDS, product_labels, vector_labels
from .models import ImageEmbedding

logger = logging.getLogger(__name__)


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
    labels: tuple[str, ...]  # the product's PRODUCT_LABEL_FIELDS


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
                return file_pixels(file, size)
        except ValidationError as exc:
            return " ".join(exc.messages)
        except OSError as exc:
            return f"cannot read the file: {exc}"

    results = list(pool.map(read, jobs) if pool else map(read, jobs))
    good = [(job, result) for job, result in zip(jobs, results) if not isinstance(result, str)]
    failures = [(job, result) for job, result in zip(jobs, results) if isinstance(result, str)]
    pixels = np.stack([p for _, p in good]) if good else np.zeros((0, size, size, 3), np.uint8)
    return _Decoded([job for job, _ in good], pixels, failures, time.monotonic() - started)


def _fetch_jobs(image_ids: Iterable[int], backbone: Backbone) -> list[_Job]:
    rows = ImageEmbedding.objects.missing_images(backbone).filter(pk__in=list(image_ids)).order_by("pk")
    fields = [f"product__{name}" for name in PRODUCT_LABEL_FIELDS]
    return [
        _Job(row.pk, row.checksum, row.image.path, tuple(getattr(row.product, name) for name in PRODUCT_LABEL_FIELDS))
        for row in rows.select_related("product").only("pk", "checksum", "image", *fields)
    ]


def _write(decoded: _Decoded, vectors: np.ndarray, backbone: Backbone) -> None:
    now = timezone.now()

    def row(job: _Job, **outcome) -> ImageEmbedding:
        labels = vector_labels(job.labels) if backbone.trained is not None else ""
        return ImageEmbedding(
            image_id=job.image_id,
            backbone=backbone.name,
            image_checksum=job.checksum,
            labels=labels,
            computed_at=now,
            **outcome,
        )

    done = ImageEmbedding.Status.DONE
    rows = [
        row(job, status=done, vector=vector, dimension=backbone.dimension, error="")
        for job, vector in zip(decoded.jobs, vectors)
    ]
    failed = ImageEmbedding.Status.FAILED
    rows += [row(job, status=failed, vector=None, dimension=None, error=error) for job, error in decoded.failures]
    ImageEmbedding.objects.bulk_create(
        rows,
        update_conflicts=True,
        unique_fields=["image", "backbone"],
        update_fields=["image_checksum", "labels", "status", "vector", "dimension", "error", "computed_at"],
    )


def embed_images(image_ids: Iterable[int], backbone: Backbone) -> EmbedReport:
    """Embed the given catalogue images that lack an up-to-date embedding; safe to repeat."""
    return embed_in_batches([list(image_ids)], backbone)


def embed_in_batches(
    batches: Iterable[list[int]],
    backbone: Backbone,
    *,
    on_batch: Callable[[EmbedReport], None] = lambda report: None,
) -> EmbedReport:
    """Embed image ids batch by batch; each batch is committed before the next, so a killed run resumes.

    While the model works on one batch, the next one is read and decoded in the background.
    """
    total = EmbedReport()
    batches = iter(batches)
    with ThreadPoolExecutor(max_workers=1) as prefetch, ThreadPoolExecutor(max_workers=2) as decoders:

        def start(image_ids: list[int] | None):
            if image_ids is None:
                return None
            started = time.monotonic()
            jobs = _fetch_jobs(image_ids, backbone)  # database work stays on this thread
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
            # the model is loaded only when a batch has something to embed
            labels = product_labels(job.labels for job in decoded.jobs)
            vectors = get_embedder(backbone).embed_catalogue_pixels(decoded.pixels, labels) if decoded.jobs else []
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
    backbone: Backbone,
    *,
    batch_size: int = 32,
    on_batch: Callable[[EmbedReport], None] = lambda report: None,
) -> EmbedReport:
    """Embed every catalogue image that lacks an embedding for the backbone."""
    image_ids = list(ImageEmbedding.objects.missing_images(backbone).order_by("pk").values_list("pk", flat=True))
    batches = (image_ids[start : start + batch_size] for start in range(0, len(image_ids), batch_size))
    return embed_in_batches(batches, backbone, on_batch=on_batch)
