"""Every saved product image gets an embedding task once its transaction commits."""

from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import receiver

from catalog.models import ProductImage

from .tasks import queue_embeddings


@receiver(post_save, sender=ProductImage)
def embed_saved_image(sender, instance: ProductImage, raw=False, **kwargs):
    if raw:
        return
    image_id = instance.pk
    transaction.on_commit(lambda: queue_embeddings([image_id]))
