"""Celery tasks: thin wrappers around embedding and index functions.

TensorFlow is imported by the first embedding task inside each worker process, never in the
parent before it forks.
"""

import logging

from amqp.exceptions import ChannelError
from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError

from .active import embedding_spaces, space_by_name
from .encoding.backbones import get_backbone
from .models import EmbeddingModel, ImageEmbedding
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
    """Embed these images (those already embedded are skipped; undecodable ones are marked failed):
    for one backbone, or by default in every live space (the frozen backbone's, and the active or
    activating trained model's)."""
    from .trained_models import embed_in_spaces

    report = embed_in_spaces(image_ids, [space_by_name(backbone)] if backbone else embedding_spaces())
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
    """Queue every image without an embedding in a live space (added while Redis was down, say).

    Skipped while embedding tasks are still waiting: the workers are busy with a backlog that
    probably holds these images already, and the next sweep will look again.
    """
    waiting = waiting_embedding_tasks()
    if waiting:
        logger.info("Sweep skipped: %d embedding tasks still waiting", waiting)
        return 0
    queued = 0
    for space in [space_by_name(backbone)] if backbone else embedding_spaces():
        image_ids = list(ImageEmbedding.objects.missing_images(space).order_by("pk").values_list("pk", flat=True))
        for start in range(0, len(image_ids), SWEEP_CHUNK):
            queue_embeddings(image_ids[start : start + SWEEP_CHUNK], space.name)
        if image_ids:
            logger.info("Sweep queued %d images for %s", len(image_ids), space.name)
        queued += len(image_ids)
    return queued


@shared_task(autoretry_for=(OperationalError, InterfaceError), retry_backoff=5, max_retries=3)
def rebuild_index(backbone: str | None = None, force: bool = False) -> str:
    """Rebuild the Annoy index of one space, or of every live space, when its embeddings changed
    since the last build (or always, with force)."""
    spaces = [space_by_name(backbone)] if backbone else embedding_spaces()
    return "; ".join(f"{space.name}: {build_index(space, force=force).reason}" for space in spaces)


@shared_task(soft_time_limit=3600, acks_late=False)
def train_embedding_task(activate: bool = False) -> str:
    """Train a model on the catalogue (the admin's button, or beat when due); activate it if asked,
    or on its own when EMBEDDING_AUTO_ACTIVATE and it beats the active one on the test split."""
    from .trained_models import activate_model, better_than_active
    from .training import train_embedding

    report = train_embedding(get_backbone())
    record = EmbeddingModel.objects.get(version=report.model.version)
    if activate or (settings.EMBEDDING_AUTO_ACTIVATE and better_than_active(record)):
        activate_model(record.version)
        return f"{record.version}: trained and active"
    return f"{record.version}: trained"


@shared_task
def activate_model_task(version: str) -> str:
    from .trained_models import activate_model

    return activate_model(version).get_status_display()


@shared_task
def train_embedding_when_due() -> bool:
    from .trained_models import training_due

    if not training_due():
        return False
    train_embedding_task.delay()
    return True
