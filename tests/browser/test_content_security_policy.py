"""Every kind of page works under the Content-Security-Policy: header sent, nothing blocked, images shown."""

import pytest
from playwright.sync_api import expect

from catalog.models import Product
from tests.helpers import DATASET

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Chromium reports a blocked resource both on the console and as an event; record both.
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  const blocked = event.blockedURI || "inline";
  window.__cspViolations.push(`${event.effectiveDirective} blocked ${blocked} in ${event.sourceFile}`);
}, true);
"""


@pytest.fixture
def shop(indexed_catalogue, live_server):
    return live_server.url


@pytest.fixture
def csp_console(page):
    messages = []
    page.on("console", lambda message: "Content Security Policy" in message.text and messages.append(message.text))
    page.add_init_script(RECORD_VIOLATIONS)
    return messages


def assert_policy_header(response):
    assert response is not None and response.ok, response and response.status
    policy = response.headers.get("content-security-policy", "")
    assert "script-src 'self';" in policy + ";", policy
    assert "'unsafe-eval'" not in policy


def assert_nothing_blocked(page, csp_console):
    page.wait_for_load_state("networkidle")
    assert page.evaluate("window.__cspViolations") == []
    assert csp_console == []


def assert_images_rendered(page, selector: str, count: int | None = None):
    images = page.locator(selector)
    found = images.count()
    assert found == count if count is not None else found > 0, f"{found} images match {selector}"
    for index in range(found):  # product cards load lazily: bring each one near the viewport
        images.nth(index).scroll_into_view_if_needed()
    page.wait_for_function(
        "selector => [...document.querySelectorAll(selector)].every(img => img.complete && img.naturalWidth > 0)",
        arg=selector,
    )


def visit(page, url: str):
    response = page.goto(url)
    assert_policy_header(response)
    return response


def test_shop_pages_and_search_by_photo(page, csp_console, shop):
    visit(page, shop + "/")
    assert_images_rendered(page, ".product-grid .product-card img", 24)
    assert_nothing_blocked(page, csp_console)

    visit(page, shop + Product.objects.get(sku="10007").get_absolute_url())
    assert_images_rendered(page, "#gallery-main", 1)
    assert_images_rendered(page, ".similar .product-card img", 5)
    assert_nothing_blocked(page, csp_console)

    visit(page, shop + "/search/photo/")
    page.wait_for_load_state()  # the page script runs after parsing
    page.set_input_files("#id_image", str(DATASET / "images" / "10007.jpg"))
    expect(page.locator("[data-preview]")).to_be_visible()  # a blob: URL made by the page script
    assert_images_rendered(page, "[data-preview]", 1)
    with page.expect_navigation() as navigation:
        page.get_by_role("button", name="Find similar products").click()
    assert_policy_header(navigation.value)
    assert_images_rendered(page, ".search-results .product-card img", 5)
    assert page.locator("[data-query-photo]").get_attribute("src").startswith("data:image/")
    assert_images_rendered(page, "[data-query-photo]", 1)
    assert_nothing_blocked(page, csp_console)

    # the crop box is placed through the CSSOM, and the new search posts the photo from the page
    page.locator("[data-crop-box]").focus()
    with page.expect_response(lambda response: response.request.method == "POST") as searched:
        page.keyboard.press("Shift+ArrowUp")
    assert searched.value.ok
    expect(page.locator("[data-crop-status]")).not_to_be_empty()
    assert_images_rendered(page, ".search-results .product-card img", 5)
    assert_nothing_blocked(page, csp_console)


def test_admin_pages(page, csp_console, shop, django_user_model):
    django_user_model.objects.create_superuser("admin", "admin@example.com", "a-long-password")
    visit(page, shop + "/admin/")  # redirected to the login page
    assert "/admin/login/" in page.url
    assert_nothing_blocked(page, csp_console)
    page.fill("#id_username", "admin")
    page.fill("#id_password", "a-long-password")
    with page.expect_navigation() as navigation:
        page.get_by_role("button", name="Log in").click()
    assert_policy_header(navigation.value)
    assert_nothing_blocked(page, csp_console)

    visit(page, shop + "/admin/catalog/product/")
    assert_images_rendered(page, "#result_list img.admin-thumbnail", 50)
    # the thumbnails' style now comes from static/css/admin.css
    thumbnail = page.locator("#result_list img.admin-thumbnail").first
    assert thumbnail.evaluate("img => getComputedStyle(img).objectFit") == "contain"
    assert thumbnail.bounding_box()["width"] == 48
    assert_nothing_blocked(page, csp_console)

    product = Product.objects.get(sku="10007")
    visit(page, shop + f"/admin/catalog/product/{product.pk}/change/")
    assert_images_rendered(page, ".inline-group img.admin-thumbnail", 1)
    assert_nothing_blocked(page, csp_console)

    visit(page, shop + "/admin/recommender/imageembedding/")
    assert_images_rendered(page, "#result_list img.admin-thumbnail", 60)
    status_cell = page.locator("#recommender-status td").first
    assert status_cell.evaluate("td => getComputedStyle(td).paddingLeft") == "10px"
    assert_nothing_blocked(page, csp_console)


def test_api_docs(page, csp_console, shop):
    visit(page, shop + "/api/docs")
    operations = page.locator(".swagger-ui .opblock")
    expect(operations.first).to_be_visible()
    operations.first.locator(".opblock-summary").click()  # renders parameters and example responses
    expect(page.locator(".swagger-ui .opblock-body").first).to_be_visible()
    assert_nothing_blocked(page, csp_console)
