"""Staff add a product in admin and watch its "What shoppers see" panel fill in once a real worker
has embedded the photo, without reloading; under the Content-Security-Policy, and accessible."""

import pytest
from playwright.sync_api import expect

from catalog.models import Product
from recommender.models import ImageEmbedding
from tests.helpers import DATASET, log_in_to_admin

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("indexed_catalogue"),
]


def test_a_new_products_panel_fills_in_once_the_worker_embeds_its_photo(
    page, admin_url, celery_worker, csp_violations, assert_accessible
):
    log_in_to_admin(page, admin_url)

    page.goto(admin_url + "catalog/product/add/")
    expect(page.locator("#recommender-panel")).to_have_count(0)
    page.fill("#id_sku", "NEW-001")
    page.fill("#id_name", "Linen Summer Shirt")
    page.set_input_files("#id_images-0-image", str(DATASET / "images" / "10020.jpg"))
    with page.expect_navigation():
        page.get_by_role("button", name="Save and continue editing").click()

    # The photo's task waits in the queue: no worker runs yet.
    panel = page.locator("#recommender-panel")
    expect(panel.get_by_role("heading", name="What shoppers see")).to_be_visible()
    expect(panel.locator(".embedding-state")).to_have_text(["pending"])
    expect(panel).to_contain_text("Pending: they appear once a photo of this product is embedded")
    expect(panel.get_by_text("This panel updates by itself")).to_be_visible()
    expect(panel.get_by_text("Reload the page")).to_be_hidden()
    assert csp_violations() == []
    assert_accessible(page, "#recommender-panel")
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads

    celery_worker.start()

    similar = panel.locator(".recommender-panel__similar tbody tr")
    expect(similar).to_have_count(5, timeout=120_000)
    expect(panel.locator(".embedding-state")).to_have_text(["embedded"])
    expect(panel.get_by_role("status")).to_have_text("Updated. Photos: 1 embedded; 5 similar items.")
    assert page.evaluate("window.__sameDocument") is True
    product = Product.objects.get(sku="NEW-001")
    assert ImageEmbedding.objects.filter(image__product=product, status="done").count() == 1
    scores = [float(text) for text in panel.locator(".recommender-panel__score").all_inner_texts()]
    assert scores == sorted(scores, reverse=True) and all(0 < score <= 1 for score in scores)
    first = similar.first.get_by_role("link")
    assert first.get_attribute("href").startswith("/admin/catalog/product/")

    assert csp_violations() == [], "the script, its fetches and the new panel are all allowed"
    assert_accessible(page, "#recommender-panel")

    # Re-embed: the button posts its own form (it sits inside the product form), and the worker embeds the photo again.
    first_embedded_at = ImageEmbedding.objects.get(image__product=product).computed_at
    with page.expect_navigation():
        panel.get_by_role("button", name="Re-embed photo 1").click()
    expect(page.get_by_text("The photo is queued for embedding")).to_be_visible()
    assert page.url.endswith(f"/admin/catalog/product/{product.pk}/change/#recommender-panel")
    expect(panel.locator(".embedding-state")).to_have_text(["embedded"], timeout=60_000)
    expect(similar).to_have_count(5)
    again = ImageEmbedding.objects.get(image__product=product)
    assert again.status == "done" and again.computed_at > first_embedded_at
    assert csp_violations() == []


def test_without_javascript_the_panel_asks_for_a_reload(browser, admin_url):
    product = Product.objects.get(sku="10007")
    ImageEmbedding.objects.filter(image__product=product).delete()
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    try:
        log_in_to_admin(page, admin_url)
        page.goto(admin_url + f"catalog/product/{product.pk}/change/")
        panel = page.locator("#recommender-panel")
        expect(panel.get_by_text("Reload the page to see the result once the photo is embedded.")).to_be_visible()
        expect(panel.get_by_text("This panel updates by itself")).to_be_hidden()
    finally:
        context.close()
