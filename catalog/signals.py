"""Keep MEDIA_ROOT free of files that no image row points at any more."""

from django.db import transaction
from django.db.models.signals import post_delete, pre_save
from django.dispatch import receiver

from .models import ProductImage


def _delete_file_after_commit(storage, name: str) -> None:
    if name:
        transaction.on_commit(lambda: storage.delete(name))


@receiver(pre_save, sender=ProductImage)
def delete_replaced_file(sender, instance: ProductImage, **kwargs):
    if instance.pk is None or kwargs.get("raw"):
        return
    old_name = ProductImage.objects.filter(pk=instance.pk).values_list("image", flat=True).first()
    if old_name and old_name != instance.image.name:
        _delete_file_after_commit(instance.image.storage, old_name)


@receiver(post_delete, sender=ProductImage)
def delete_removed_file(sender, instance: ProductImage, **kwargs):
    _delete_file_after_commit(instance.image.storage, instance.image.name)
