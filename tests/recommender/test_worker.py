"""The recommender with a real Redis and real `celery worker` processes (no eager mode, no mocks)."""

import base64
import json
import re
import time

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from catalog.models import Product, ProductImage
from recommender.encoding.backbones import get_backbone
from recommender.models import ImageEmbedding
from recommender.retrieval import build_index, nearest_products
from recommender.retrieval.search import candidate_images
from recommender.retrieval.versions import current_version_dir
from recommender.tasks import queue_embeddings, sweep_missing_embeddings
from tests.helpers import add_product_form, stored_vector
from tests.processes import wait_until

LITE2 = get_backbone("efficientnet_lite2")
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def add_product_in_admin(client, fashion_dataset, sku="NEW-001", image="10020.jpg"):
    upload = SimpleUploadedFile(
        "photo.jpg", (fashion_dataset / "images" / image).read_bytes(), content_type="image/jpeg"
    )
    response = client.post(reverse("admin:catalog_product_add"), add_product_form(upload, sku=sku))
    assert response.status_code == 302, response.content[:2000]
    return ProductImage.objects.get(product__sku=sku)


def embedding_of(image: ProductImage) -> ImageEmbedding | None:
    return ImageEmbedding.objects.for_backbone(LITE2).filter(image=image).first()


def test_an_image_added_in_admin_is_embedded_searchable_and_indexed(
    indexed_catalogue, celery_worker, staff_client, fashion_dataset
):
    celery_worker.start()

    image = add_product_in_admin(staff_client, fashion_dataset)

    embedding = wait_until(lambda: embedding_of(image), 90, "the worker to embed the new image")
    assert embedding.status == "done" and embedding.image_checksum == image.checksum
    query = stored_vector(image.pk, LITE2)
    before_rebuild = candidate_images(query, 5, LITE2)
    assert before_rebuild.source == "index" and before_rebuild.image_ids[0] == image.pk
    assert image.pk not in np.load(current_version_dir(LITE2) / "image_ids.npy")
    assert nearest_products(query, LITE2, k=5)[0].product.sku == "NEW-001"

    assert build_index(LITE2, force=False).reason == "built"
    assert image.pk in np.load(current_version_dir(LITE2) / "image_ids.npy")
    assert nearest_products(query, LITE2, k=5)[0].product.sku == "NEW-001"


def test_a_worker_killed_mid_task_embeds_the_images_exactly_once_after_restart(catalogue, celery_worker, redis_server):
    image_ids = list(ProductImage.objects.values_list("pk", flat=True))
    assert queue_embeddings(image_ids, LITE2.name)
    # With the Keras runtime the task spends seconds loading TensorFlow: time enough to kill it mid-task.
    celery_worker.start(EMBEDDING_RUNTIME="keras")
    celery_worker.wait_for_log("Task recommender.tasks.embed_images_task", 30)
    time.sleep(1.0)  # the task is under way

    celery_worker.kill()

    assert ImageEmbedding.objects.count() == 0, "the task was killed before it could finish"
    assert redis_server.client.hlen("unacked") == 1, "the message is still owned by the dead worker"

    celery_worker.start()
    wait_until(lambda: ImageEmbedding.objects.count() == 60, 120, "the redelivered task to finish")
    time.sleep(2)
    assert ImageEmbedding.objects.for_backbone(LITE2).done().count() == 60
    # A redelivery may overlap (the visibility timeout is short here) but finds nothing left to do.
    results = re.findall(r"succeeded in [0-9.]+s: \{'embedded': (\d+)", celery_worker.log())
    assert results and sum(map(int, results)) == 60, "every image embedded exactly once"
    assert redis_server.client.hlen("unacked") == 0


def test_with_redis_down_products_are_still_added_and_embedded_once_it_is_back(
    embedded_catalogue, celery_worker, staff_client, fashion_dataset, redis_server
):
    redis_server.stop()
    try:
        started = time.monotonic()
        image = add_product_in_admin(staff_client, fashion_dataset, sku="WHILE-REDIS-DOWN")
        assert time.monotonic() - started < 10, "saving does not hang on the broker"
        assert Product.objects.filter(sku="WHILE-REDIS-DOWN").exists()
        assert embedding_of(image) is None
    finally:
        redis_server.start()

    celery_worker.start()
    sweep_missing_embeddings.delay()

    embedding = wait_until(lambda: embedding_of(image), 90, "the sweep to get the image embedded")
    assert embedding.status == "done"
    assert ImageEmbedding.objects.filter(image=image).count() == 1


@pytest.mark.django_db(transaction=True)
def test_an_import_queues_its_images_in_batches(kaggle_folder, redis_server):
    """One task per SWEEP_CHUNK images saved in a transaction, not one task per image."""
    from catalog.importing import import_products, kaggle_rows
    from recommender.tasks import SWEEP_CHUNK

    redis_server.flush()
    import_products(kaggle_rows(kaggle_folder), batch_size=5)  # 12 rows: transactions of 5, 5 and 2

    tasks = [json.loads(message) for message in redis_server.client.lrange("embeddings", 0, -1)]
    queued = [image_id for task in tasks for image_id in json.loads(base64.b64decode(task["body"]))[0][0]]
    assert sorted(queued) == sorted(ProductImage.objects.values_list("pk", flat=True))
    assert len(tasks) == 3 and SWEEP_CHUNK >= 5
