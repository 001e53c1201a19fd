"""What a shopper does, in a real browser: browse to a product and its similar items, search by photo."""

import re

import pytest
from playwright.sync_api import expect

from catalog.models import Product

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def shop(indexed_catalogue, live_server):
    return live_server.url


def test_open_a_product_see_five_similar_items_and_follow_one(page, shop, screenshot):
    page.goto(shop + "/")
    cards = page.locator(".product-grid .product-card")
    assert cards.count() == 24
    cards.first.locator("a").first.click()
    page.wait_for_url(re.compile(r"/products/\d+/[-\w]+/$"))
    first_product = page.locator("h1").inner_text()

    similar = page.locator(".similar .product-card")
    assert similar.count() == 5
    for index in range(5):
        card = similar.nth(index)
        assert card.locator("img").evaluate("img => img.complete && img.naturalWidth > 0")
        assert card.locator(".product-card__name").inner_text().strip()
    page.wait_for_load_state("networkidle")
    screenshot(page, "product-page")

    target = similar.nth(2).locator(".product-card__name").inner_text()
    similar.nth(2).locator("a").first.click()
    page.wait_for_load_state()
    assert page.locator("h1").inner_text() == target != first_product
    assert page.locator(".similar .product-card").count() == 5


def test_only_same_article_type(page, shop):
    product = Product.objects.get(sku="10007")
    page.goto(shop + product.get_absolute_url())
    page.get_by_role("link", name=f"Only {product.article_type}").click()
    page.wait_for_url(re.compile(r"same_type=1"))
    metas = page.locator(".similar .product-card__meta").all_inner_texts()
    assert metas and all(meta.startswith(product.article_type) for meta in metas)


def test_only_same_colour_family(page, shop):
    product = Product.objects.get(sku="10008")  # Navy Blue
    family = set(Product.objects.of_colour("blue").values_list("base_colour", flat=True))
    page.goto(shop + product.get_absolute_url())
    page.get_by_role("link", name="Only Blue").click()
    page.wait_for_url(re.compile(r"same_colour=1"))
    expect(page.get_by_role("link", name="Only Blue")).to_have_attribute("aria-current", "true")
    metas = page.locator(".similar .product-card__meta").all_inner_texts()
    assert len(metas) == 5 and all(meta.split(" · ")[1] in family for meta in metas)


def test_search_by_photo_finds_the_product_first(page, shop, fashion_dataset, screenshot):
    page.goto(shop + "/")
    page.get_by_role("link", name="Search by photo").click()
    page.wait_for_url("**/search/photo/")
    page.wait_for_load_state()  # the page script runs after parsing
    page.set_input_files("#id_image", str(fashion_dataset / "images" / "10007.jpg"))
    expect(page.locator("[data-preview]")).to_be_visible()  # the chosen photo is previewed
    expect(page.locator("[data-file-name]")).to_have_text("10007.jpg")
    with page.expect_navigation():
        page.get_by_role("button", name="Find similar products").click()

    results = page.locator(".search-results .product-card")
    assert results.count() == 5
    expected = Product.objects.get(sku="10007")
    assert results.first.locator(".product-card__name").inner_text() == expected.name
    assert float(results.first.locator(".score").inner_text()) > 0.95
    page.wait_for_load_state("networkidle")
    screenshot(page, "search-results")


def test_a_text_file_gets_an_error_message(page, shop, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("milk, eggs, a new jacket\n")
    page.goto(shop + "/search/photo/")
    page.set_input_files("#id_image", str(notes))
    with page.expect_response(lambda response: response.request.method == "POST") as posted:
        page.get_by_role("button", name="Find similar products").click()
    assert posted.value.status == 400
    alert = page.get_by_role("alert")
    assert "not an image we can read" in alert.inner_text()
    assert page.locator(".search-results").count() == 0
