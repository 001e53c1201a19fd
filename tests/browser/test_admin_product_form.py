"""Staff add a product in admin as a new member of staff would: suggested values, a respelt
near-duplicate, and a form that fits a 1366-pixel screen."""

import pytest
from playwright.sync_api import expect

from catalog.models import Product
from tests.helpers import DATASET, log_in_to_admin

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

FITS_THE_WINDOW = "() => document.documentElement.scrollWidth <= window.innerWidth"


@pytest.fixture
def admin_page(browser, catalogue, admin_url):
    """Staff signed in on a common laptop screen."""
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    page = context.new_page()
    page.set_default_timeout(30_000)
    log_in_to_admin(page, admin_url)
    yield page
    context.close()


def test_classification_fields_suggest_values_in_use_and_a_near_duplicate_is_respelt(admin_page, live_server):
    page = admin_page
    page.goto(live_server.url + "/admin/catalog/product/add/")
    assert page.evaluate(FITS_THE_WINDOW)

    colour = page.get_by_label("Base colour:")
    suggested = colour.evaluate("input => [...input.list.options].map(option => option.value)")
    assert {"Black", "White", "Navy Blue"} <= set(suggested)
    assert suggested == sorted(set(Product.objects.values_list("base_colour", flat=True)), key=str.casefold)
    article_types = page.get_by_label("Article type:").evaluate("input => [...input.list.options].map(o => o.value)")
    assert "Tshirts" in article_types

    page.get_by_label("SKU:").fill("NEW-TEE-1")
    page.get_by_label("Name:").fill("Plain white tee")
    page.get_by_label("Gender:").fill("Men")
    page.get_by_label("Article type:").fill("T-shirt")
    colour.fill("white")
    page.locator("input[type=file][name='images-0-image']").set_input_files(DATASET / "images" / "10017.jpg")
    page.get_by_role("button", name="Save and continue editing").click()

    expect(page.locator(".messagelist")).to_contain_text("Base colour “white” was saved as “White”")
    expect(page.locator(".messagelist")).to_contain_text("Article type “T-shirt” was saved as “Tshirts”")
    product = Product.objects.get(sku="NEW-TEE-1")
    assert (product.base_colour, product.article_type) == ("White", "Tshirts")
    # the change page, its photo inline included, fits the screen; the full checksum is on hover
    expect(page.locator(".inline-group img.admin-thumbnail")).to_have_count(1)
    checksum = page.locator(".inline-group abbr")
    assert checksum.get_attribute("title") == f"SHA-256 {product.images.get().checksum}"
    assert page.evaluate(FITS_THE_WINDOW)


def test_a_catalogue_products_change_page_fits_the_screen(admin_page, live_server):
    product = Product.objects.get(sku="10007")
    admin_page.goto(live_server.url + f"/admin/catalog/product/{product.pk}/change/")
    expect(admin_page.locator(".inline-group img.admin-thumbnail")).to_have_count(1)
    assert admin_page.evaluate(FITS_THE_WINDOW)


def test_the_product_list_fits_the_screen(admin_page, live_server):
    admin_page.goto(live_server.url + "/admin/catalog/product/")
    expect(admin_page.locator("#result_list img.admin-thumbnail")).to_have_count(50)
    assert admin_page.evaluate(FITS_THE_WINDOW)
