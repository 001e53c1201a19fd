"""Every saved product image gets an embedding task once its transaction commits, and so do the
photos of a product whose labels change (a trained model's vectors carry them).

The images saved in one transaction (an import batch, a bulk upload, a product with its photos)
are queued together, SWEEP_CHUNK images per task: a worker embeds a batch about 2.5 times faster
than the same photos one task each.
"""

import threading

from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import receiver

from catalog.models import ProductImage
from catalog.signals import products_relabelled

from .labels import PRODUCT_LABEL_FIELDS
from .tasks import SWEEP_CHUNK, queue_embeddings
from .trained_models import forget_trained_vectors


class QueueAfterCommit:
    """The images saved in one transaction; called once it commits."""

    def __init__(self, image_ids: list[int] | None = None):
        self.image_ids = image_ids or []

    def __call__(self):
        for start in range(0, len(self.image_ids), SWEEP_CHUNK):
            queue_embeddings(self.image_ids[start : start + SWEEP_CHUNK])


_pending = threading.local()


def _pending_queue(connection) -> QueueAfterCommit:
    queue = getattr(_pending, "queue", None)
    # Django forgets the callbacks of a rolled-back savepoint and of a finished transaction: when
    # ours is gone, start another. (An image of a rolled-back savepoint may stay in a queue that
    # still runs; the task skips images that do not exist.)
    if queue is None or not any(callback is queue for _, callback, _ in connection.run_on_commit):
        queue = _pending.queue = QueueAfterCommit()
        transaction.on_commit(queue)
    return queue


def queue_after_commit(image_ids: list[int]) -> None:
    connection = transaction.get_connection()
    if connection.in_atomic_block:
        _pending_queue(connection).image_ids.extend(image_ids)
    else:
        QueueAfterCommit(image_ids)()


@receiver(post_save, sender=ProductImage)
def embed_saved_image(sender, instance: ProductImage, raw=False, **kwargs):
    if not raw:
        queue_after_commit([instance.pk])


@receiver(products_relabelled)
def embed_relabelled_products(sender, product_ids: list[int], fields: set[str], **kwargs):
    if set(fields) & set(PRODUCT_LABEL_FIELDS):
        queue_after_commit(forget_trained_vectors(product_ids))
