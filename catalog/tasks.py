"""Celery tasks of the catalogue: thin wrappers around catalog.bulk_upload (default queue, "celery")."""

import logging
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from .bulk_upload import process_bulk_upload
from .models import BulkUpload

logger = logging.getLogger(__name__)


@shared_task(
    acks_late=True,  # a batch whose worker dies is delivered again, and resumes where it stopped
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=5,
    retry_backoff_max=120,
    max_retries=10,
)
def process_bulk_upload_task(batch_id: int) -> str:
    """Process a bulk upload; a batch already done, or being processed elsewhere, is left alone."""
    return process_bulk_upload(batch_id).status


def queue_bulk_upload(batch: BulkUpload) -> bool:
    """Publish the batch's task; False (and a log line) when the broker is unreachable."""
    try:
        process_bulk_upload_task.apply_async((batch.pk,))
    except Exception as exc:  # kombu raises several types for a missing broker
        logger.warning("Could not queue bulk upload %s (%s); beat queues it once the broker is back", batch.pk, exc)
        return False
    BulkUpload.objects.filter(pk=batch.pk).update(queued_at=timezone.now())
    return True


@shared_task
def resume_bulk_uploads() -> int:
    """Queue the batches that met a stopped queue and those whose worker died (beat runs this every
    BULK_UPLOAD_RESUME_SECONDS)."""
    never_queued = BulkUpload.objects.never_queued(older_than=timedelta(seconds=settings.BULK_UPLOAD_RESUME_SECONDS))
    return sum(queue_bulk_upload(batch) for batch in never_queued | BulkUpload.objects.stalled())
