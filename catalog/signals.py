"""Keep MEDIA_ROOT free of files that no image row points at any more, and tell others (the
recommender) when products are classified anew."""

from django.db import transaction
from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import Signal, receiver

from .models import CLASSIFICATION_FIELDS, Product, ProductImage

# Sent with `product_ids` and the CLASSIFICATION_FIELDS that changed (`fields`), once they are
# written: a product saved, or spellings merged by vocabulary.py.
products_relabelled = Signal()


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


@receiver(pre_save, sender=Product)
def note_relabelling(sender, instance: Product, **kwargs):
    if instance.pk is None or kwargs.get("raw"):
        return
    before = Product.objects.filter(pk=instance.pk).values(*CLASSIFICATION_FIELDS).first() or {}
    instance._relabelled = {field for field, value in before.items() if getattr(instance, field) != value}


@receiver(post_save, sender=Product)
def announce_relabelling(sender, instance: Product, **kwargs):
    fields = instance.__dict__.pop("_relabelled", None)
    if fields:
        products_relabelled.send(sender=Product, product_ids=[instance.pk], fields=fields)
