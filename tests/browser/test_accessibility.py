"""The shop's pages pass axe-core with no violations (every rule it runs by default)."""

import pytest
from playwright.sync_api import expect

from catalog.models import Product
from tests.helpers import DATASET

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def shop(indexed_catalogue, live_server):
    return live_server.url


def search(page, photo):
    page.set_input_files("#id_image", str(photo))
    with page.expect_navigation():
        page.get_by_role("button", name="Find similar products").click()


def test_browsing_pages(page, shop, assert_accessible):
    for path in ("/", "/?q=shirt&gender=Men", Product.objects.get(sku="10007").get_absolute_url(), "/no-such-page/"):
        page.goto(shop + path)
        assert_accessible(page)


def test_search_by_photo_pages(page, shop, assert_accessible, side_by_side_photo, tmp_path):
    page.goto(shop + "/search/photo/")
    page.wait_for_load_state()
    assert_accessible(page)

    search(page, DATASET / "images" / "10007.jpg")  # one garment: the box, no garments to choose from
    expect(page.locator("[data-crop-box]")).to_be_visible()
    assert page.locator("[data-search-results] .product-card").count() == 5
    assert_accessible(page)

    search(page, side_by_side_photo)  # two garments to choose from
    expect(page.get_by_role("button", name="Garment 2")).to_be_visible()
    assert_accessible(page)
    page.get_by_role("button", name="Garment 2").click()  # results replaced by the page script
    expect(page.locator("[data-crop-status]")).to_have_text("Results updated for the area you chose.")
    page.locator("[data-crop-box]").focus()
    assert_accessible(page)

    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo\n")
    search(page, notes)
    expect(page.get_by_role("alert").first).to_contain_text("not an image we can read")
    assert_accessible(page)


def test_search_by_photo_on_a_phone(browser, shop, assert_accessible):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    try:
        page.goto(shop + "/search/photo/")
        expect(page.get_by_text("Take a photo")).to_be_visible()  # the camera button, on phones only
        assert_accessible(page)
    finally:
        context.close()


def test_without_javascript_the_box_is_an_outline(browser, shop, side_by_side_photo):
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    try:
        page.goto(shop + "/search/photo/")
        search(page, side_by_side_photo)
        assert page.locator("[data-search-results] .product-card").count() == 5
        expect(page.locator("[data-crop-outline] rect")).to_be_visible()
        expect(page.locator("[data-crop-box]")).to_be_hidden()
        expect(page.get_by_role("button", name="Garment 1")).to_be_hidden()  # they need the script
    finally:
        context.close()
