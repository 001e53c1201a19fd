import signal
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.management import call_command

from catalog.models import ProductImage
from recommender.embedding import embed_catalogue, embed_images
from recommender.encoding.backbones import get_backbone
from recommender.models import ImageEmbedding
from tests.helpers import ROOT

LITE2 = get_backbone("efficientnet_lite2")
LITE0 = get_backbone("efficientnet_lite0")
pytestmark = pytest.mark.slow


def missing(backbone):
    return ImageEmbedding.objects.missing_images(backbone)


@pytest.mark.django_db
def test_embed_catalog_stores_unit_vectors_with_their_backbone(catalogue, catalogue_vectors):
    out = StringIO()
    call_command("embed_catalog", "--batch-size", "16", stdout=out, verbosity=0)

    assert "60 embedded, 0 failed" in out.getvalue() and "images/s" in out.getvalue()
    embeddings = ImageEmbedding.objects.for_backbone(LITE2)
    assert embeddings.count() == 60 == ProductImage.objects.count()
    for embedding in embeddings[:5]:
        assert embedding.status == "done" and embedding.dimension == 1280
        assert embedding.image_checksum == embedding.image.checksum
        assert np.isclose(np.linalg.norm(embedding.vector), 1.0, atol=1e-5)
        # the suite's session cache (conftest.catalogue_vectors) holds what the pipeline stores
        assert np.allclose(embedding.vector, catalogue_vectors[embedding.image_checksum], atol=1e-5)
    again = StringIO()
    call_command("embed_catalog", stdout=again, verbosity=0)
    assert "already has" in again.getvalue()


@pytest.mark.django_db
def test_embedding_twice_stores_one_embedding(catalogue):
    image_ids = list(ProductImage.objects.values_list("pk", flat=True)[:3])
    first = embed_images(image_ids, LITE2)
    stamps = dict(ImageEmbedding.objects.values_list("image_id", "computed_at"))
    second = embed_images(image_ids, LITE2)

    assert (first.embedded, second.embedded, second.skipped) == (3, 0, 3)
    assert dict(ImageEmbedding.objects.values_list("image_id", "computed_at")) == stamps


@pytest.mark.django_db
def test_an_undecodable_image_is_marked_failed_and_not_retried(embedded_catalogue):
    unembedded = ProductImage.objects.order_by("pk")[2:5]
    ImageEmbedding.objects.filter(image__in=unembedded).delete()
    broken = unembedded[2]
    Path(broken.image.path).write_bytes(b"\xff\xd8\xff\xe0 this used to be a JPEG")

    report = embed_catalogue(LITE2)

    assert (report.embedded, report.failed) == (2, 1)
    failure = ImageEmbedding.objects.for_backbone(LITE2).get(image=broken)
    assert failure.status == "failed" and failure.vector is None
    assert "damaged or incomplete" in failure.error
    assert not missing(LITE2).exists(), "failed images are not pending forever"
    assert embed_catalogue(LITE2).failed == 0


@pytest.mark.django_db
def test_a_replaced_image_is_embedded_again(embedded_catalogue, fashion_dataset):
    image = ProductImage.objects.order_by("pk").first()
    old_vector = ImageEmbedding.objects.get(image=image).vector
    image.image = ContentFile((fashion_dataset / "images" / "10020.jpg").read_bytes(), name="new.jpg")
    image.save()

    assert list(missing(LITE2)) == [image]
    assert embed_catalogue(LITE2).embedded == 1
    embedding = ImageEmbedding.objects.get(image=image)
    assert embedding.image_checksum == image.checksum
    assert float(embedding.vector @ old_vector) < 0.99


@pytest.mark.django_db
def test_backbones_keep_separate_embeddings(embedded_catalogue):
    some = list(ProductImage.objects.values_list("pk", flat=True)[:10])
    embed_images(some, LITE0)

    assert ImageEmbedding.objects.for_backbone(LITE0).count() == 10
    assert ImageEmbedding.objects.for_backbone(LITE2).count() == 60
    assert missing(LITE0).count() == 50


@pytest.mark.django_db(transaction=True)
def test_killed_run_resumes_without_recomputing(catalogue, subprocess_env):
    command = [sys.executable, "manage.py", "embed_catalog", "--batch-size", "4", "-v", "0"]
    run = subprocess.Popen(command, cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while ImageEmbedding.objects.count() < 8:
        assert run.poll() is None, run.stdout.read().decode()
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait()
    done_before = dict(ImageEmbedding.objects.values_list("image_id", "computed_at"))
    assert 8 <= len(done_before) < 60

    out = StringIO()
    call_command("embed_catalog", stdout=out, verbosity=0)

    assert f"{60 - len(done_before)} embedded" in out.getvalue()
    after = dict(ImageEmbedding.objects.values_list("image_id", "computed_at"))
    assert len(after) == 60
    assert {image_id: after[image_id] for image_id in done_before} == done_before, "finished work is kept"
