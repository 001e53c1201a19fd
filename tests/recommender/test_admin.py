import json
from pathlib import Path

import pytest
from django.urls import reverse

from catalog.models import ProductImage
from recommender.embedding import embed_images
from recommender.encoding.backbones import get_backbone
from recommender.models import ImageEmbedding
from recommender.retrieval import build_index

pytestmark = pytest.mark.django_db
CHANGELIST = reverse("admin:recommender_imageembedding_changelist")


@pytest.fixture
def embedded_with_one_failure(embedded_catalogue, lite2):
    broken = ProductImage.objects.order_by("pk")[2]
    Path(broken.image.path).write_bytes(b"not a photo any more")
    ImageEmbedding.objects.filter(image=broken).delete()
    assert embed_images([broken.pk], lite2).failed == 1
    return broken


def test_status_panel_counts_and_index(staff_client, embedded_with_one_failure):
    page = staff_client.get(CHANGELIST)
    [status] = page.context["recommender_status"]
    assert (status.backbone, status.active, status.embedded, status.failed, status.pending) == (
        "efficientnet_lite2",
        True,
        59,
        1,
        0,
    )
    assert status.index is None
    assert b"no index yet: searches are exact" in page.content

    build_index(get_backbone("efficientnet_lite2"))
    page = staff_client.get(CHANGELIST)
    [status] = page.context["recommender_status"]
    assert status.index.items == 59 and status.index_bytes > 59 * 1280 * 4
    assert status.index.version.encode() in page.content


def test_failed_images_show_their_reason(staff_client, embedded_with_one_failure):
    page = staff_client.get(CHANGELIST, {"status__exact": "failed"})
    rows = list(page.context["cl"].result_list)
    assert [row.image_id for row in rows] == [embedded_with_one_failure.pk]
    assert b"not an image we can read" in page.content


def test_re_embed_action_queues_the_selected_images(staff_client, embedded_with_one_failure, redis_server):
    redis_server.flush()
    failed = ImageEmbedding.objects.get(status="failed")

    response = staff_client.post(CHANGELIST, {"action": "re_embed", "_selected_action": [failed.pk]}, follow=True)

    assert b"1 images queued for embedding" in response.content
    assert not ImageEmbedding.objects.filter(pk=failed.pk).exists()
    [message] = redis_server.client.lrange("embeddings", 0, -1)
    assert json.loads(message)["headers"]["task"] == "recommender.tasks.embed_images_task"


def test_rebuild_button_queues_a_forced_rebuild(staff_client, embedded_with_one_failure, redis_server):
    redis_server.flush()
    response = staff_client.post(
        reverse("admin:recommender_rebuild_index"), {"backbone": "efficientnet_lite2"}, follow=True
    )

    assert b"Index rebuild queued" in response.content
    [message] = redis_server.client.lrange("celery", 0, -1)
    assert json.loads(message)["headers"]["task"] == "recommender.tasks.rebuild_index"


@pytest.mark.slow
def test_status_page_lists_other_backbones_with_embeddings(staff_client, catalogue, settings):
    settings.EMBEDDING_RUNTIME = "keras"  # no LiteRT conversion of a second model just for this
    embed_images(ProductImage.objects.values_list("pk", flat=True)[:5], get_backbone("efficientnet_lite0"))
    page = staff_client.get(CHANGELIST)
    statuses = {s.backbone: s for s in page.context["recommender_status"]}
    assert statuses["efficientnet_lite2"].pending == 60
    assert (statuses["efficientnet_lite0"].embedded, statuses["efficientnet_lite0"].active) == (5, False)
