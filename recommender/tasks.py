"""Celery tasks: thin wrappers around embedding and index functions.

TensorFlow is imported by the first embedding task inside each worker process, never in the
parent before it forks.
"""

import logging

from amqp.exceptions import ChannelError
from celery import shared_task
from django.db import InterfaceError, OperationalError

from .embedding import embed_images
from .encoding.backbones import get_backbone
from .models import ImageEmbedding
from .retrieval import build_index

logger = logging.getLogger(__name__)

EMBEDDINGS_QUEUE = "embeddings"
SWEEP_CHUNK = 32


@shared_task(
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=5,
    retry_backoff_max=300,
    max_retries=10,
    soft_time_limit=600,
)
def embed_images_task(image_ids: list[int], backbone: str | None = None) -> dict:
    """Embed these images (those already embedded are skipped; undecodable ones are marked failed)."""
    report = embed_images(image_ids, get_backbone(backbone))
    return {"embedded": report.embedded, "failed": report.failed, "skipped": report.skipped}


def queue_embeddings(image_ids: list[int], backbone: str | None = None) -> bool:
    """Publish an embedding task; False (and a log line) when the broker is unreachable."""
    try:
        embed_images_task.apply_async((list(image_ids), backbone), queue=EMBEDDINGS_QUEUE)
        return True
    except Exception as exc:  # kombu raises several types for a missing broker
        logger.warning("Could not queue embeddings for images %s (%s); the sweep will pick them up", image_ids, exc)
        return False


def waiting_embedding_tasks() -> int:
    with embed_images_task.app.connection_for_read() as connection:
        try:
            return connection.default_channel.queue_declare(queue=EMBEDDINGS_QUEUE, passive=True).message_count
        except ChannelError:  # the queue was never declared: nothing is waiting
            return 0


@shared_task(autoretry_for=(OperationalError, InterfaceError), retry_backoff=5, max_retries=3)
def sweep_missing_embeddings(backbone: str | None = None) -> int:
    """Queue every image without an embedding for the backbone (added while Redis was down, say).

    Skipped while embedding tasks are still waiting: the workers are busy with a backlog that
    probably holds these images already, and the next sweep will look again.
    """
    backbone = get_backbone(backbone)
    waiting = waiting_embedding_tasks()
    if waiting:
        logger.info("Sweep skipped: %d embedding tasks still waiting", waiting)
        return 0
    image_ids = list(ImageEmbedding.objects.missing_images(backbone).order_by("pk").values_list("pk", flat=True))
    for start in range(0, len(image_ids), SWEEP_CHUNK):
        queue_embeddings(image_ids[start : start + SWEEP_CHUNK], backbone.name)
    if image_ids:
        logger.info("Sweep queued %d images for %s", len(image_ids), backbone.name)
    return len(image_ids)


@shared_task(autoretry_for=(OperationalError, InterfaceError), retry_backoff=5, max_retries=3)
def rebuild_index(backbone: str | None = None, force: bool = False) -> str:
    """Rebuild the Annoy index when embeddings changed since the last build (or always, with force)."""
    result = build_index(get_backbone(backbone), force=force)
    return result.reason
