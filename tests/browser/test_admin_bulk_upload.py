"""Staff upload many photos and a CSV on one admin page and follow the batch to its per-file report: a large
batch through a real Celery worker with live progress, a small one dropped on the page and processed at once;
under the Content-Security-Policy, and accessible."""

import base64
import csv
import functools
import io
import json
import re
import shutil

import pytest
from PIL import Image
from playwright.sync_api import expect

from catalog.images import normalise_image
from catalog.models import BulkUpload, Product, ProductImage
from tests.helpers import log_in_to_admin

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SKUS = ["10000", "10001", "10002", "10003", "10004", "10005", "10006", "10007", "10008", "10009"]

# Every value the progress line shows, kept in sessionStorage across the reloads of the report page.
RECORD_PROGRESS = """
document.addEventListener("DOMContentLoaded", () => {
  const text = document.querySelector("[data-progress-text]");
  if (!text) return;
  const record = () => {
    const seen = JSON.parse(sessionStorage.getItem("progress") || "[]");
    sessionStorage.setItem("progress", JSON.stringify([...seen, text.textContent]));
  };
  record();
  new MutationObserver(record).observe(text, { childList: true, characterData: true, subtree: true });
});
"""


@pytest.fixture(autouse=True)
def bulk_upload_dir(settings, tmp_path):
    settings.BULK_UPLOAD_DIR = tmp_path / "bulk-uploads"


@functools.cache
def large_jpeg() -> bytes:
    """A 3000x3000 photo, over half a second to process: a few of them make progress visible."""
    buffer = io.BytesIO()
    Image.effect_noise((3000, 3000), 40).convert("RGB").save(buffer, format="JPEG", quality=75)
    return buffer.getvalue()


def test_a_large_batch_with_a_csv_runs_in_the_worker_with_live_progress_and_a_report(
    page, admin_url, fashion_dataset, celery_worker, settings, tmp_path, csp_violations, assert_accessible
):
    photos = tmp_path / "photos"
    photos.mkdir()
    for sku in SKUS:
        shutil.copyfile(fashion_dataset / "images" / f"{sku}.jpg", photos / f"{sku}.jpg")
    for sku in SKUS:
        (photos / f"{sku}-back.jpg").write_bytes(large_jpeg())
    shutil.copyfile(fashion_dataset / "images" / "10011.jpg", photos / "99999.jpg")
    with (fashion_dataset / "styles.csv").open(newline="") as handle:
        rows = [row for row in csv.reader(handle) if row[0] in ("id", *SKUS)]
    with (tmp_path / "products.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    chosen = sorted(photos.iterdir())
    assert len(chosen) > settings.BULK_UPLOAD_INLINE_MAX_FILES, "a batch for the worker"
    page.add_init_script(RECORD_PROGRESS)
    log_in_to_admin(page, admin_url)

    page.goto(admin_url + "catalog/product/")
    page.get_by_role("link", name="Bulk upload photos").click()
    expect(page.get_by_role("heading", name="Upload photos")).to_be_visible()
    assert csp_violations() == []
    assert_accessible(page)
    page.get_by_label("Photos").set_input_files([str(path) for path in chosen])
    expect(page.get_by_text(f"{len(chosen)} photos chosen.")).to_be_visible()
    page.get_by_label("Product details (CSV, optional)").set_input_files(str(tmp_path / "products.csv"))
    with page.expect_navigation():
        page.get_by_role("button", name="Upload").click()

    # No worker yet: the batch waits, and the page says so.
    expect(page.get_by_text("is being processed in the background")).to_be_visible()
    expect(page.get_by_text("Waiting for a worker.")).to_be_visible()
    before = f"1 of {len(chosen)} files and rows done"  # 99999.jpg, of no SKU, is reported at once
    expect(page.locator("[data-progress-text]")).to_have_text(before)
    assert csp_violations() == []
    assert_accessible(page)

    celery_worker.start(BULK_UPLOAD_DIR=str(settings.BULK_UPLOAD_DIR))

    expect(page.locator(".bulk-upload-status")).to_contain_text("every file and row is below", timeout=90_000)
    seen = json.loads(page.evaluate("sessionStorage.getItem('progress')"))
    between = set(seen) - {before, f"{len(chosen)} of {len(chosen)} files and rows done"}
    assert between, f"the page showed the batch under way, not only before and after: {seen}"
    report = page.locator("#bulk-upload-report tbody tr")
    expect(report).to_have_count(len(chosen))
    skirt = Product.objects.get(sku="10000")
    expect(report.filter(has_text="10000.jpg")).to_contain_text("Product created")
    expect(report.filter(has_text="10000-back.jpg")).to_contain_text("Photo added")
    expect(report.filter(has_text="99999.jpg")).to_contain_text("No product or CSV row for SKU “99999”")
    link = report.filter(has_text="10000.jpg").get_by_role("link", name=f"10000: {skirt.name}")
    assert link.get_attribute("href") == f"/admin/catalog/product/{skirt.pk}/change/"
    assert ProductImage.objects.filter(product=skirt).count() == 2
    assert Product.objects.count() == len(SKUS)
    assert csp_violations() == []
    assert_accessible(page)

    page.goto(admin_url + "catalog/bulkupload/")
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    expect(page.locator("#result_list tbody tr")).to_contain_text("staff")


def test_photos_dropped_on_the_page_make_a_small_batch_processed_at_once(
    page, admin_url, fashion_dataset, csp_violations, assert_accessible
):
    product = Product.objects.create(sku="P-1", name="Linen Summer Shirt")
    with (fashion_dataset / "images" / "10020.jpg").open("rb") as file:
        ProductImage.objects.create(product=product, position=0, image=normalise_image(file).as_file("P-1"))
    dropped = {
        "P-1_2.jpg": (fashion_dataset / "images" / "10021.jpg").read_bytes(),
        "P-1_3.jpg": (fashion_dataset / "images" / "10022.jpg").read_bytes(),
        "unknown.jpg": (fashion_dataset / "images" / "10023.jpg").read_bytes(),
    }
    log_in_to_admin(page, admin_url)
    page.goto(admin_url + "catalog/bulkupload/add/")

    files = page.evaluate_handle(
        """(files) => {
          const transfer = new DataTransfer();
          for (const [name, data] of Object.entries(files)) {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
          }
          return transfer;
        }""",
        {name: base64.b64encode(data).decode() for name, data in dropped.items()},
    )
    page.dispatch_event("[data-drop-zone]", "dragenter", {"dataTransfer": files})
    expect(page.locator("[data-drop-zone]")).to_have_class("bulk-upload-drop-zone is-dragging")
    page.dispatch_event("[data-drop-zone]", "drop", {"dataTransfer": files})
    expect(page.get_by_text("3 photos chosen.")).to_be_visible()
    assert page.evaluate("document.getElementById('id_photos').files.length") == 3
    with page.expect_navigation():
        page.get_by_role("button", name="Upload").click()

    batch = BulkUpload.objects.get()
    assert batch.status == "done", "a small batch is processed in the request"
    report = page.locator("#bulk-upload-report tbody tr")
    expect(report).to_have_text(
        [
            re.compile(rf"{re.escape(name)}.*{result}", re.S)
            for name, result in [("P-1_2.jpg", "Photo added"), ("P-1_3.jpg", "Photo added"), ("unknown.jpg", "Skipped")]
        ]
    )
    assert list(product.images.values_list("position", flat=True)) == [0, 1, 2]
    assert csp_violations() == []
    assert_accessible(page)
