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
from recommender.embedding import embed_catalogue, embed_images, images_missing_embeddings
from recommender.models import ImageEmbedding
from tests.conftest import ROOT

LITE2 = "efficientnet_lite2"


@pytest.mark.django_db
def test_embed_catalog_stores_unit_vectors_with_their_backbone(catalogue):
    out = StringIO()
    call_command("embed_catalog", "--batch-size", "16", stdout=out, verbosity=0)

    assert "60 embedded, 0 failed" in out.getvalue() and "images/s" in out.getvalue()
    embeddings = ImageEmbedding.objects.filter(backbone=LITE2)
    assert embeddings.count() == 60 == ProductImage.objects.count()
    for embedding in embeddings[:5]:
        assert embedding.status == "done" and embedding.dimension == 1280
        assert embedding.image_checksum == embedding.image.checksum
        assert np.isclose(np.linalg.norm(embedding.array), 1.0, atol=1e-5)
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
def test_an_undecodable_image_is_marked_failed_and_not_retried(catalogue):
    broken = ProductImage.objects.order_by("pk")[4]
    Path(broken.image.path).write_bytes(b"\xff\xd8\xff\xe0 this used to be a JPEG")

    report = embed_catalogue(LITE2)

    assert (report.embedded, report.failed) == (59, 1)
    failure = ImageEmbedding.objects.get(image=broken, backbone=LITE2)
    assert failure.status == "failed" and failure.vector is None
    assert "damaged or incomplete" in failure.error
    assert not images_missing_embeddings(LITE2).exists(), "failed images are not pending forever"
    assert embed_catalogue(LITE2).failed == 0


@pytest.mark.django_db
def test_a_replaced_image_is_embedded_again(catalogue, fashion_dataset):
    embed_catalogue(LITE2)
    image = ProductImage.objects.order_by("pk").first()
    old_vector = ImageEmbedding.objects.get(image=image).array.copy()
    image.image = ContentFile((fashion_dataset / "images" / "10020.jpg").read_bytes(), name="new.jpg")
    image.save()

    assert list(images_missing_embeddings(LITE2)) == [image]
    assert embed_catalogue(LITE2).embedded == 1
    embedding = ImageEmbedding.objects.get(image=image)
    assert embedding.image_checksum == image.checksum
    assert float(embedding.array @ old_vector) < 0.99


@pytest.mark.django_db
def test_backbones_keep_separate_embeddings(catalogue):
    some = list(ProductImage.objects.values_list("pk", flat=True)[:10])
    embed_images(some, "efficientnet_lite0")
    embed_catalogue(LITE2)

    assert ImageEmbedding.objects.filter(backbone="efficientnet_lite0").count() == 10
    assert ImageEmbedding.objects.filter(backbone=LITE2).count() == 60
    assert images_missing_embeddings("efficientnet_lite0").count() == 50


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
