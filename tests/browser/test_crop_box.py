"""The crop box on the search-by-photo results page: the shopper moves it with a mouse or the
keyboard, and the search runs again for the area chosen."""

import pytest
from playwright.sync_api import expect

from catalog.models import Product

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

UPDATED = "Results updated for the area you chose."


@pytest.fixture
def shop(indexed_catalogue, live_server):
    return live_server.url


@pytest.fixture
def searched(page, shop, side_by_side_photo):
    """The results page for the photo of a red T-shirt (left) beside grey track pants (right)."""
    page.goto(shop + "/search/photo/")
    page.wait_for_load_state()  # the page scripts run after parsing
    page.set_input_files("#id_image", str(side_by_side_photo))
    with page.expect_navigation():
        page.get_by_role("button", name="Find similar products").click()
    expect(page.locator("[data-crop-box]")).to_be_visible()
    return page


def product_name(sku: str) -> str:
    return Product.objects.get(sku=sku).name


def first_result(page) -> str:
    return page.locator("[data-search-results] .product-card__name").first.inner_text()


def shown_box(page) -> list[float]:
    """The box drawn on the photo, as fractions x0, y0, x1, y1 of the photo's size."""
    return page.locator("[data-crop-box]").evaluate(
        "box => ['--x0', '--y0', '--x1', '--y1'].map((name) => parseFloat(box.style.getPropertyValue(name)))"
    )


def searched_area(page) -> list[float]:
    """The box the last search used, as the server reported it."""
    expect(page.locator("[data-search-results]")).not_to_have_attribute("aria-busy", "true")
    expect(page.locator("[data-crop-caption]")).to_have_text("We searched the area you chose.")
    return shown_box(page)


def centre(locator) -> tuple[float, float]:
    box = locator.bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def test_drag_the_box_over_the_other_garment_and_resize_it(searched):
    page = searched
    assert first_result(page) == product_name("10009")  # the box starts on the T-shirt, on the left
    x0, y0, x1, y1 = shown_box(page)
    assert x1 <= 0.55

    photo_width = page.locator("[data-crop-frame]").bounding_box()["width"]
    start_x, start_y = centre(page.locator("[data-crop-box]"))
    page.mouse.move(start_x, start_y)
    page.mouse.down()
    page.mouse.move(start_x + photo_width / 2, start_y, steps=8)
    page.mouse.up()
    expect(page.locator("[data-crop-status]")).to_have_text(UPDATED)
    assert first_result(page) == product_name("10011")  # now the track pants, on the right
    assert searched_area(page) == pytest.approx([x0 + 0.5, y0, x1 + 0.5, y1], abs=0.02)
    assert page.locator("[data-search-results] .product-card").count() == 5

    handle_x, handle_y = centre(page.locator("[data-handle=nw]"))  # the top left corner, a fifth in
    page.mouse.move(handle_x, handle_y)
    page.mouse.down()
    page.mouse.move(handle_x + photo_width / 10, handle_y, steps=4)
    with page.expect_response(lambda response: response.request.method == "POST"):
        page.mouse.up()
    left, top, right, bottom = searched_area(page)
    assert left == pytest.approx(x0 + 0.6, abs=0.02)
    assert [top, right, bottom] == pytest.approx([y0, x1 + 0.5, y1], abs=0.02)


def test_drag_the_box_with_a_finger(browser, shop, side_by_side_photo):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    try:
        page.goto(shop + "/search/photo/")
        page.wait_for_load_state()
        page.set_input_files("#id_image", str(side_by_side_photo))
        with page.expect_navigation():
            page.get_by_role("button", name="Find similar products").click()
        page.locator("[data-crop-view]").scroll_into_view_if_needed()
        photo_width = page.locator("[data-crop-frame]").bounding_box()["width"]
        x, y = centre(page.locator("[data-crop-box]"))
        touch = context.new_cdp_session(page)  # Playwright taps, but has no touch drag of its own
        touch.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x, "y": y}]})
        for step in range(1, 9):
            point = {"x": x + photo_width / 2 * step / 8, "y": y}
            touch.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [point]})
        touch.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        expect(page.locator("[data-crop-status]")).to_have_text(UPDATED)
        assert first_result(page) == product_name("10011")
    finally:
        context.close()


def test_move_the_box_with_the_keyboard(searched):
    page = searched
    box = page.locator("[data-crop-box]")
    box.focus()
    expect(box).to_have_accessible_name("Area of your photo to search")
    posts = []
    page.on("request", lambda request: request.method == "POST" and posts.append(request))
    for _ in range(10):  # 5% a key press: half the photo's width
        page.keyboard.press("ArrowRight")

    expect(page.locator("[data-crop-status]")).to_have_text(UPDATED)
    assert first_result(page) == product_name("10011")
    assert len(posts) == 1  # one search when the shopper stops pressing keys, not one a key
    expect(box).to_be_focused()  # the results changed under the box, which keeps the focus

    x0, y0, x1, y1 = shown_box(page)
    with page.expect_response(lambda response: response.request.method == "POST"):
        page.keyboard.press("Shift+ArrowLeft")  # narrower by 5%: the top left corner stays put
    assert searched_area(page) == pytest.approx([x0, y0, x1 - 0.05, y1], abs=0.001)
    assert len(posts) == 2


def test_choose_a_garment_found_or_the_whole_photo(searched):
    page = searched
    garments = page.get_by_role("group", name="Garments we found").get_by_role("button")
    expect(garments).to_have_text(["Garment 1", "Garment 2"])
    expect(garments.first).to_have_attribute("aria-pressed", "true")  # the one searched
    garments.nth(1).click()
    expect(garments.nth(1)).to_have_attribute("aria-pressed", "true")
    expect(page.locator("[data-crop-status]")).to_have_text(UPDATED)
    assert first_result(page) == product_name("10011")

    # a filter or this box changed with no new photo chosen: the same photo is searched again
    page.get_by_label("Use the whole photo").check()
    page.get_by_role("button", name="Find similar products").click()
    expect(page.locator("[data-crop-caption]")).to_have_text("We searched the whole photo.")
    assert shown_box(page) == [0, 0, 1, 1]
    expect(page.locator("[data-crop-status]")).to_have_text("Results updated.")
