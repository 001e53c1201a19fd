"""Bulk upload in admin: photos (and a CSV in the import layout) become products or extra photos, with a
per-file report; large batches run in a real Celery worker, and a batch that stops can be finished."""

import csv
import functools
import io
import json
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from PIL import Image

from catalog.bulk_upload import match_sku, process_bulk_upload, sku_candidates
from catalog.images import normalise_image
from catalog.models import BulkUpload, BulkUploadEntry, Product, ProductImage
from catalog.tasks import resume_bulk_uploads
from tests.helpers import DATASET, decompression_bomb
from tests.processes import wait_until

ADD = reverse("admin:catalog_bulkupload_add")


@pytest.fixture(autouse=True)
def bulk_upload_dir(settings, tmp_path) -> Path:
    settings.BULK_UPLOAD_DIR = tmp_path / "bulk-uploads"
    return settings.BULK_UPLOAD_DIR


def photo(sku: str, name: str | None = None) -> SimpleUploadedFile:
    """The shared dataset's photo of `sku`, uploaded as `name`."""
    content = (DATASET / "images" / f"{sku}.jpg").read_bytes()
    return SimpleUploadedFile(name or f"{sku}.jpg", content, content_type="image/jpeg")


def styles_csv(*skus: str, edit=lambda row: row, extra_lines: tuple[str, ...] = ()) -> SimpleUploadedFile:
    """A CSV in the import layout with the shared dataset's rows of `skus`, each passed through `edit`."""
    with (DATASET / "styles.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = {row["id"]: row for row in reader}
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=reader.fieldnames, lineterminator="\n")
    writer.writeheader()
    writer.writerows(edit(dict(rows[sku])) for sku in skus)
    text.write("".join(f"{line}\n" for line in extra_lines))
    return SimpleUploadedFile("products.csv", text.getvalue().encode(), content_type="text/csv")


def existing_product(sku: str, photo_of: str, **fields) -> Product:
    product = Product.objects.create(sku=sku, name=fields.pop("name", f"Product {sku}"), **fields)
    with (DATASET / "images" / f"{photo_of}.jpg").open("rb") as file:
        ProductImage.objects.create(product=product, position=0, image=normalise_image(file).as_file(sku))
    return product


def upload(client, photos, csv_file=None, follow=False):
    form = {"photos": photos, **({"csv_file": csv_file} if csv_file else {})}
    return client.post(ADD, form, follow=follow)


def report(batch: BulkUpload) -> dict[str, BulkUploadEntry]:
    """The batch's entries by file name, or "line N" for a CSV row."""
    return {entry.file_name or f"line {entry.csv_line}": entry for entry in batch.entries.all()}


def photo_positions(sku: str) -> list[tuple[int, str]]:
    return list(ProductImage.objects.filter(product__sku=sku).order_by("position").values_list("position", "checksum"))


def checksum_of(sku: str) -> str:
    with (DATASET / "images" / f"{sku}.jpg").open("rb") as file:
        return normalise_image(file).checksum


def media_files(media_root: Path) -> set[Path]:
    return {path for path in media_root.rglob("*") if path.is_file()}


# --- Matching a photo to its SKU ------------------------------------------------------------------------------


def test_the_sku_is_the_stem_or_the_stem_before_a_suffix_and_the_longest_known_one_wins():
    assert sku_candidates("15970_2.jpg") == ["15970_2", "15970"]
    assert sku_candidates("NEW-001-back side.JPG") == ["NEW-001-back side", "NEW-001-back", "NEW-001", "NEW"]
    assert match_sku("15970.jpg", {"15970"}) == "15970"
    assert match_sku("15970_2.jpg", {"15970"}) == "15970"
    assert match_sku("15970-back.jpg", {"15970"}) == "15970"
    assert match_sku("15970 side.png", {"15970"}) == "15970"
    assert match_sku("15970_2.jpg", {"15970", "15970_2"}) == "15970_2", "a whole stem that is a SKU is that SKU"
    assert match_sku("NEW-001-back.jpg", {"NEW", "NEW-001"}) == "NEW-001", "the longest known SKU wins"
    assert match_sku("15971_2.jpg", {"15970"}) is None
    assert match_sku("_2.jpg", {""}) is None


# --- Small batches, processed in the request ---------------------------------------------------------------


@pytest.mark.django_db
def test_photos_and_a_csv_make_new_products_and_extra_photos(staff_client, media_root, bulk_upload_dir):
    existing_product("10003", photo_of="10003", base_colour="White", article_type="Tshirts")
    csv_file = styles_csv("10000", "10001", "10002", edit=lambda row: {**row, "baseColour": " white "})

    response = upload(
        staff_client,
        [
            photo("10020", "10000 back.jpg"),
            photo("10000"),
            photo("10001", "10001-back.jpg"),
            photo("10005", "99999.jpg"),
        ],
        csv_file,
    )

    batch = BulkUpload.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse(
        "admin:catalog_bulkupload_change", args=[batch.pk]
    )
    assert batch.status == "done" and batch.created_by.username == "staff" and batch.csv_name == "products.csv"
    entries = report(batch)
    assert list(entries) == ["10000.jpg", "10000 back.jpg", "10001-back.jpg", "99999.jpg", "line 4"], (
        "a product's photos together, the one named by the SKU alone first"
    )
    assert (entries["10000.jpg"].outcome, entries["10000.jpg"].message) == (
        "created",
        "product created from CSV line 2; photo added as photo 1",
    )
    assert (entries["10000 back.jpg"].outcome, entries["10000 back.jpg"].message) == (
        "added",
        "photo added as photo 2",
    )
    assert entries["10001-back.jpg"].outcome == "created"
    assert entries["99999.jpg"].outcome == "skipped"
    assert entries["99999.jpg"].message == "no product or CSV row for SKU “99999”"
    assert entries["line 4"].outcome == "skipped" and "no photo for this new product" in entries["line 4"].message

    skirt = Product.objects.get(sku="10000")
    assert skirt.name == "Palm Tree Girls Sp Jace Sko White Skirts"
    assert (skirt.gender, skirt.article_type, skirt.year) == ("Women", "Skirts", 2011)
    assert skirt.base_colour == "White", "spelt as the catalogue already spells it, like an import"
    assert photo_positions("10000") == [(0, checksum_of("10000")), (1, checksum_of("10020"))]
    assert entries["10000 back.jpg"].product == skirt
    assert photo_positions("10001") == [(0, checksum_of("10001"))]
    assert not Product.objects.filter(sku__in=["10002", "99999"]).exists()
    assert len(media_files(media_root)) == ProductImage.objects.count() == 4
    assert not (bulk_upload_dir / str(batch.pk)).exists(), "staged photos are deleted once the batch is done"

    page = staff_client.get(response["Location"])
    assert page.status_code == 200
    assert f'href="{reverse("admin:catalog_product_change", args=[skirt.pk])}"'.encode() in page.content
    assert "No product or CSV row for SKU “99999”".encode() in page.content


@pytest.mark.django_db
def test_extra_photos_of_an_existing_product_take_the_next_positions_in_file_name_order(staff_client):
    existing_product("P-1", photo_of="10000")

    upload(staff_client, [photo("10030", "P-1_10.jpg"), photo("10020", "P-1_2.jpg"), photo("10000", "P-1.jpg")])

    assert photo_positions("P-1") == [(0, checksum_of("10000")), (1, checksum_of("10020")), (2, checksum_of("10030"))]
    entries = report(BulkUpload.objects.get())
    assert [entry.file_name for entry in entries.values()] == ["P-1.jpg", "P-1_2.jpg", "P-1_10.jpg"]
    assert entries["P-1.jpg"].outcome == "unchanged", "the product already has this very photo"
    assert entries["P-1.jpg"].message == "the product already has this photo"


@pytest.mark.django_db
def test_a_csv_row_updates_an_existing_product_like_an_import(staff_client):
    existing_product("10001", photo_of="10001", name="Old name", base_colour="Blue")

    upload(staff_client, [photo("10000")], styles_csv("10000", "10001"))

    product = Product.objects.get(sku="10001")
    assert product.name == "Palm Tree Kids Girls Sp Jema Skt Blue Skirts" and product.article_type == "Skirts"
    entry = report(BulkUpload.objects.get())["line 3"]
    assert (entry.outcome, entry.message, entry.product) == ("updated", "fields updated from CSV line 3", product)


@pytest.mark.django_db
def test_uploading_the_same_batch_twice_changes_nothing(staff_client, media_root):
    existing_product("10003", photo_of="10003")

    def batch():
        return [photo("10000"), photo("10020", "10000_2.jpg"), photo("10001"), photo("10007", "10003_2.jpg")]

    upload(staff_client, batch(), styles_csv("10000", "10001"))
    products = {(p.sku, p.updated_at) for p in Product.objects.all()}
    photos = set(ProductImage.objects.values_list("pk", "image", "checksum", "position"))
    files = media_files(media_root)

    upload(staff_client, batch(), styles_csv("10000", "10001"))

    second = BulkUpload.objects.order_by("pk").last()
    assert {entry.outcome for entry in second.entries.all()} == {"unchanged"}
    assert {(p.sku, p.updated_at) for p in Product.objects.all()} == products
    assert set(ProductImage.objects.values_list("pk", "image", "checksum", "position")) == photos
    assert media_files(media_root) == files


@pytest.mark.django_db
def test_bad_photos_and_bad_csv_rows_are_reported_while_the_others_land(staff_client, settings, media_root):
    settings.IMAGE_UPLOAD_MAX_BYTES = 200_000
    jpeg = (DATASET / "images" / "10002.jpg").read_bytes()
    noise = io.BytesIO()
    Image.effect_noise((400, 400), 60).convert("RGB").save(noise, format="PNG")
    photos = [
        photo("10000"),
        SimpleUploadedFile("10001.jpg", jpeg[: len(jpeg) // 3]),
        SimpleUploadedFile("10002.jpg", b"<html>not a photo</html>"),
        SimpleUploadedFile("10003.png", decompression_bomb()),
        SimpleUploadedFile("10004.png", noise.getvalue()),
        SimpleUploadedFile("10005.jpg", b""),
        photo("10006"),
    ]
    csv_file = styles_csv(
        "10000",
        "10001",
        "10002",
        "10003",
        "10004",
        "10005",
        "10006",
        edit=lambda row: {**row, "year": "last year"} if row["id"] == "10006" else row,
        extra_lines=("10000,Women,Apparel,Bottomwear,Skirts,White,Summer,2011,Casual,Twice",),
    )

    response = upload(staff_client, photos, csv_file)

    assert response.status_code == 302
    entries = report(BulkUpload.objects.get())
    assert entries["10000.jpg"].outcome == "created"
    assert "damaged or incomplete" in entries["10001.jpg"].message
    assert "not an image we can read" in entries["10002.jpg"].message
    assert "megapixels" in entries["10003.png"].message
    assert "the limit is 195.3" in entries["10004.png"].message.replace("\xa0", " ")
    assert "empty" in entries["10005.jpg"].message
    assert entries["10006.jpg"].message == "no product or CSV row for SKU “10006”"
    assert "year 'last year' is not a year" in entries["line 8"].message
    assert "duplicate id '10000', first on line 2" in entries["line 9"].message
    assert {name for name, entry in entries.items() if entry.outcome == "skipped"} == {
        "10001.jpg",
        "10002.jpg",
        "10003.png",
        "10004.png",
        "10005.jpg",
        "10006.jpg",
        "line 8",
        "line 9",
    }
    assert list(Product.objects.values_list("sku", flat=True)) == ["10000"]
    assert len(media_files(media_root)) == 1


@pytest.mark.django_db
def test_a_failure_mid_file_leaves_nothing_half_written_and_running_again_finishes(
    staff_client, monkeypatch, media_root, settings
):
    settings.BULK_UPLOAD_INLINE_MAX_FILES = 0  # staged and queued, processed here by hand
    upload(
        staff_client,
        [photo(sku) for sku in ("10000", "10001", "10002", "10003")],
        styles_csv("10000", "10001", "10002", "10003"),
    )
    batch = BulkUpload.objects.get()
    save = BulkUploadEntry.save

    def fail_on_the_third_photo(entry, *args, **kwargs):
        if entry.file_name == "10002.jpg":
            raise RuntimeError("the disk went away")
        save(entry, *args, **kwargs)

    monkeypatch.setattr(BulkUploadEntry, "save", fail_on_the_third_photo)
    batch = process_bulk_upload(batch.pk)

    assert batch.status == "failed" and batch.error == "RuntimeError: the disk went away"
    assert {name: entry.outcome for name, entry in report(batch).items()} == {
        "10000.jpg": "created",
        "10001.jpg": "created",
        "10002.jpg": "pending",
        "10003.jpg": "pending",
    }
    assert set(Product.objects.values_list("sku", flat=True)) == {"10000", "10001"}, "product 10002 rolled back"
    assert ProductImage.objects.count() == 2
    assert len(media_files(media_root)) == 2, "the failed file's photo is not left in media"
    page = staff_client.get(batch.get_absolute_url())
    assert b"The batch stopped: RuntimeError: the disk went away" in page.content and b"Run again" in page.content

    monkeypatch.setattr(BulkUploadEntry, "save", save)
    settings.BULK_UPLOAD_INLINE_MAX_FILES = 10
    response = staff_client.post(reverse("admin:catalog_bulkupload_run_again", args=[batch.pk]))

    assert response.status_code == 302
    batch.refresh_from_db()
    assert batch.status == "done"
    assert {entry.outcome for entry in batch.entries.all()} == {"created"}
    assert Product.objects.count() == 4 and ProductImage.objects.count() == 4 == len(media_files(media_root))


# --- What the page accepts ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_more_photos_than_the_limit_is_a_clear_error_and_other_pages_keep_their_limit(staff_client, settings):
    settings.BULK_UPLOAD_MAX_FILES = 3

    too_many = upload(staff_client, [photo("10000", f"10000_{n}.jpg") for n in range(5)])
    one_too_many = upload(staff_client, [photo("10000", f"10000_{n}.jpg") for n in range(4)])

    assert too_many.status_code == 400
    assert b"Choose at most 3 photos per batch; upload the rest in another." in too_many.content
    assert one_too_many.status_code == 400
    assert b"Choose at most 3 photos per batch (these are 4)." in one_too_many.content
    assert not BulkUpload.objects.exists()
    files = {"images": [photo("10000", f"{n}.jpg") for n in range(settings.UPLOAD_MAX_FILES + 1)]}
    assert staff_client.post(reverse("admin:catalog_product_add"), files).status_code == 400


@pytest.mark.django_db
def test_an_upload_too_large_or_a_csv_without_the_import_columns_is_refused(staff_client, settings):
    bad_csv = SimpleUploadedFile("products.csv", b"id,name\n10000,Skirt\n")
    response = upload(staff_client, [photo("10000")], bad_csv)
    assert response.status_code == 400
    assert b"products.csv lacks the columns" in response.content and b"productDisplayName" in response.content

    settings.BULK_UPLOAD_MAX_CSV_ROWS = 2
    response = upload(staff_client, [photo("10000")], styles_csv("10000", "10001", "10002"))
    assert b"products.csv has more than 2 rows" in response.content

    settings.BULK_UPLOAD_MAX_BYTES = 1000
    response = upload(staff_client, [photo("10000")])
    assert response.status_code == 400 and b"A batch may be at most 1000" in response.content.replace(b"\xc2\xa0", b" ")
    assert not BulkUpload.objects.exists()


@pytest.mark.django_db
def test_the_drop_page_and_the_list_of_past_batches(staff_client):
    page = staff_client.get(ADD)
    assert page.status_code == 200
    assert b'type="file" name="photos" accept="image/*"' in page.content and b"multiple" in page.content
    assert b'<label for="id_photos"' in page.content and b'<label for="id_csv_file"' in page.content
    assert b"js/admin-bulk-upload.js" in page.content
    assert (
        reverse("admin:catalog_bulkupload_add").encode()
        in staff_client.get(reverse("admin:catalog_product_changelist")).content
    )

    upload(staff_client, [photo("10000"), photo("10001")], styles_csv("10000"))
    listing = staff_client.get(reverse("admin:catalog_bulkupload_changelist"))
    [batch] = listing.context["cl"].result_list
    assert (batch.photo_count, batch.created_by.username) == (2, "staff")
    assert b'<td class="field-results">1 created, 1 skipped</td>' in listing.content

    progress = staff_client.get(reverse("admin:catalog_bulkupload_progress", args=[batch.pk])).json()
    assert progress == {"state": "done", "status": "Done", "done": 2, "total": 2}


@pytest.mark.django_db
def test_the_upload_needs_its_csrf_token(client, django_user_model):
    client.handler.enforce_csrf_checks = True
    client.force_login(django_user_model.objects.create_superuser("staff", "staff@example.com", "a-long-password"))

    response = upload(client, [photo("10000")], styles_csv("10000"))

    assert response.status_code == 403
    assert not BulkUpload.objects.exists() and not Product.objects.exists()


# --- Large batches, in the background ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_large_batch_is_processed_by_a_worker(staff_client, celery_worker, bulk_upload_dir, settings):
    settings.BULK_UPLOAD_INLINE_MAX_FILES = 5
    skus = ["10000", "10001", "10002", "10003", "10004", "10005", "10006", "10007"]
    celery_worker.start(BULK_UPLOAD_DIR=str(bulk_upload_dir))

    response = upload(staff_client, [photo(sku) for sku in skus], styles_csv(*skus), follow=True)

    assert b"is being processed in the background" in response.content
    batch = BulkUpload.objects.get()
    progress_url = reverse("admin:catalog_bulkupload_progress", args=[batch.pk])
    wait_until(lambda: staff_client.get(progress_url).json()["state"] == "done", 60, "the worker to finish")
    assert staff_client.get(progress_url).json()["done"] == 8
    assert set(Product.objects.values_list("sku", flat=True)) == set(skus)
    assert {entry.outcome for entry in batch.entries.all()} == {"created"}
    assert not (bulk_upload_dir / str(batch.pk)).exists()
    assert "Task catalog.tasks.process_bulk_upload_task" in celery_worker.log()


@functools.cache
def large_jpeg() -> bytes:
    """A 3000x3000 photo: over half a second to decode, shrink and re-encode, so that a worker can be killed
    mid-batch (made once: making it takes as long)."""
    buffer = io.BytesIO()
    Image.effect_noise((3000, 3000), 40).convert("RGB").save(buffer, format="JPEG", quality=75)
    return buffer.getvalue()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_batch_whose_worker_dies_keeps_its_finished_files_and_run_again_finishes_it(
    staff_client, celery_worker, bulk_upload_dir, settings, media_root
):
    settings.BULK_UPLOAD_INLINE_MAX_FILES = 0
    settings.BULK_UPLOAD_STALE_SECONDS = 2
    skus = [str(sku) for sku in range(10000, 10016) if (DATASET / "images" / f"{sku}.jpg").exists()]
    upload(staff_client, [SimpleUploadedFile(f"{sku}.jpg", large_jpeg()) for sku in skus], styles_csv(*skus))
    batch = BulkUpload.objects.get()
    celery_worker.start(BULK_UPLOAD_DIR=str(bulk_upload_dir))
    wait_until(lambda: batch.entries.exclude(outcome="pending").count() >= 2, 60, "the worker to finish two files")

    celery_worker.kill()

    finished = set(batch.entries.exclude(outcome="pending").values_list("sku", flat=True))
    assert 2 <= len(finished) < len(skus), "killed mid-batch"
    assert set(Product.objects.values_list("sku", flat=True)) == finished, "finished files complete, the rest untouched"
    assert ProductImage.objects.count() == len(finished)
    wait_until(lambda: BulkUpload.objects.stalled().filter(pk=batch.pk).exists(), 10, "the batch to be seen stalled")
    assert b"its worker is gone" in staff_client.get(batch.get_absolute_url()).content

    celery_worker.start(BULK_UPLOAD_DIR=str(bulk_upload_dir), BULK_UPLOAD_STALE_SECONDS="2")
    staff_client.post(reverse("admin:catalog_bulkupload_run_again", args=[batch.pk]))

    wait_until(lambda: BulkUpload.objects.get(pk=batch.pk).status == "done", 90, "the batch to be finished")
    assert {entry.outcome for entry in batch.entries.all()} == {"created"}
    assert set(Product.objects.values_list("sku", flat=True)) == set(skus)
    assert ProductImage.objects.count() == len(skus), "every photo stored once"


@pytest.mark.django_db
def test_with_the_queue_stopped_the_upload_is_saved_and_queued_once_it_is_back(
    staff_client, redis_server, settings, bulk_upload_dir
):
    settings.BULK_UPLOAD_INLINE_MAX_FILES = 1
    redis_server.flush()
    redis_server.stop()
    try:
        response = upload(staff_client, [photo("10000"), photo("10001")], styles_csv("10000", "10001"), follow=True)
    finally:
        redis_server.start()

    assert b"The task queue is unreachable. Bulk upload" in response.content
    assert b"is saved and will be processed as soon as the queue is back" in response.content
    batch = BulkUpload.objects.get()
    assert batch.status == "waiting" and batch.queued_at is None
    assert len(list((bulk_upload_dir / str(batch.pk)).iterdir())) == 2, "the photos are kept"
    assert resume_bulk_uploads() == 0, "a batch is given a moment before beat queues it"

    BulkUpload.objects.filter(pk=batch.pk).update(created_at=batch.created_at - timedelta(minutes=2))
    assert resume_bulk_uploads() == 1

    [message] = redis_server.client.lrange("celery", 0, -1)  # the queue the workers consume
    assert json.loads(message)["headers"]["task"] == "catalog.tasks.process_bulk_upload_task"
    assert process_bulk_upload(batch.pk).status == "done"
    assert Product.objects.count() == 2
