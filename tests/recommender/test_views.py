"""Similar items on product pages, search by photo, and the JSON API, through Django's test client."""

import io
from collections import Counter
from html import unescape
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from PIL import Image

from catalog.colours import colour_family, family_label
from catalog.models import Product, ProductImage
from recommender.encoding.backbones import get_backbone
from recommender.retrieval import build_index
from recommender.retrieval import search as search_module
from tests.helpers import decompression_bomb, photo_upload

pytestmark = pytest.mark.django_db
SEARCH = reverse("recommender:visual-search")
API_SEARCH = reverse("api:search")
LITE2 = get_backbone("efficientnet_lite2")


def common_value(field: str, at_least: int = 5) -> str:
    value, count = Counter(Product.objects.values_list(field, flat=True)).most_common(1)[0]
    assert count >= at_least + 1
    return value


# --- Product page --------------------------------------------------------------------------------


def test_product_page_shows_five_other_products(client, indexed_catalogue):
    product = Product.objects.get(sku="10007")

    response = client.get(product.get_absolute_url())

    assert response.status_code == 200
    neighbours = response.context["similar"].neighbours
    assert len(neighbours) == 5 and product not in [n.product for n in neighbours]
    html = response.content.decode()
    assert html.count('class="product-card"') == 5
    for neighbour in neighbours:
        assert neighbour.product.get_absolute_url() in html and neighbour.image.image.url in html
        assert neighbour.product.name in html and neighbour.product.article_type in html
    assert "similar;dur=" in response["Server-Timing"]


@pytest.mark.slow  # runs the model
def test_one_card_per_product_and_never_another_photo_of_itself(client, indexed_catalogue, fashion_dataset):
    from recommender.embedding import embed_catalogue

    product = Product.objects.get(sku="10007")
    neighbour = client.get(product.get_absolute_url()).context["similar"].neighbours[0].product
    for sku, owner in (("10007", product), (neighbour.sku, neighbour)):  # a near-duplicate second photo each
        ProductImage.objects.create(
            product=owner,
            position=1,
            image=ContentFile((fashion_dataset / "images" / f"{sku}.jpg").read_bytes(), name="x.jpg"),
        )
    embed_catalogue(LITE2)

    response = client.get(product.get_absolute_url())

    products = [n.product.pk for n in response.context["similar"].neighbours]
    assert len(products) == len(set(products)) == 5
    assert product.pk not in products and products[0] == neighbour.pk


def test_same_gender_and_same_type_options(client, indexed_catalogue):
    article_type = common_value("article_type")
    product = Product.objects.filter(article_type=article_type).first()

    same_type = client.get(product.get_absolute_url(), {"same_type": "1"}).context["similar"].neighbours
    assert len(same_type) == 5 and all(n.product.article_type == article_type for n in same_type)

    both = client.get(product.get_absolute_url(), {"same_type": "1", "same_gender": "1"})
    assert both.context["similar"].neighbours and all(
        n.product.article_type == article_type and n.product.gender == product.gender
        for n in both.context["similar"].neighbours
    )
    assert b'aria-current="true">Only ' in both.content


def test_same_colour_chip_narrows_to_the_colour_family(client, indexed_catalogue):
    product = Product.objects.get(sku="10008")  # Navy Blue: the family is blue
    page = client.get(product.get_absolute_url())
    unfiltered = page.context["similar"].neighbours
    assert not all(colour_family(n.product.base_colour) == "blue" for n in unfiltered)
    assert b'<a class="chip" href="?same_colour=1">Only Blue</a>' in page.content

    narrowed = client.get(product.get_absolute_url(), {"same_colour": "1"})  # after the unfiltered page: cached apart

    neighbours = narrowed.context["similar"].neighbours
    assert len(neighbours) == 5 and all(colour_family(n.product.base_colour) == "blue" for n in neighbours)
    assert b'<a class="chip is-on" href="?" aria-current="true">Only Blue</a>' in narrowed.content
    with_type = client.get(product.get_absolute_url(), {"same_colour": "1", "same_type": "1"})
    assert all(
        colour_family(n.product.base_colour) == "blue" and n.product.article_type == "Tshirts"
        for n in with_type.context["similar"].neighbours
    )


@pytest.mark.parametrize("colour", ["", "NA"])
def test_no_colour_chip_for_a_product_of_unknown_colour(client, indexed_catalogue, colour):
    product = Product.objects.get(sku="10008")
    Product.objects.filter(pk=product.pk).update(base_colour=colour)

    response = client.get(product.get_absolute_url(), {"same_colour": "1"})

    assert b"same_colour" not in response.content and b"Only Men" in response.content
    assert b'<a class="chip is-on" href="?" aria-current="true">All</a>' in response.content
    assert len(response.context["similar"].neighbours) == 5


def test_filters_widen_the_search_until_five_products_match(client, indexed_catalogue, monkeypatch):
    monkeypatch.setattr(search_module, "CANDIDATES_PER_RESULT", 1)
    article_type = common_value("article_type")
    product = Product.objects.exclude(article_type=article_type).first()

    response = client.get(reverse("api:similar", args=[product.pk]), {"article_type": article_type})

    results = response.json()["results"]
    assert len(results) == 5 and all(r["article_type"] == article_type for r in results)


def test_product_without_an_embedding_says_so(client, catalogue):
    product = Product.objects.first()
    response = client.get(product.get_absolute_url())
    assert response.context["similar"].pending
    assert b"We are still looking at this product" in response.content
    assert b'class="product-card"' not in response.content


def test_similar_items_are_cached_until_the_index_changes(client, indexed_catalogue):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def page_queries() -> tuple[list, int]:
        with CaptureQueriesContext(connection) as queries:
            neighbours = client.get(product.get_absolute_url()).context["similar"].neighbours
        return [n.product.pk for n in neighbours], len(queries)

    product = Product.objects.get(sku="10007")
    first, computed = page_queries()
    again, cached = page_queries()
    assert again == first and cached < computed
    build_index(LITE2, force=True)
    after_rebuild, recomputed = page_queries()
    assert after_rebuild == first and recomputed > cached


# --- Search by photo -----------------------------------------------------------------------------


def test_search_page_has_an_upload_form(client, catalogue):
    response = client.get(SEARCH)
    html = response.content.decode()
    assert response.status_code == 200
    assert 'enctype="multipart/form-data"' in html and 'accept="image/*"' in html and 'capture="environment"' in html
    assert "csrfmiddlewaretoken" in html
    assert reverse("recommender:visual-search").encode() in client.get("/").content, "linked from the header"


@pytest.mark.slow  # runs the model
def test_a_catalogue_photo_finds_its_own_product_first(
    client, indexed_catalogue, fashion_dataset, media_root, settings
):
    files_before = sorted(media_root.rglob("*"))

    response = client.post(SEARCH, {"image": photo_upload()})

    assert response.status_code == 200
    neighbours = response.context["result"].neighbours
    assert len(neighbours) == 5 and neighbours[0].product.sku == "10007" and neighbours[0].score > 0.95
    assert response.content.count(b'class="score"') == 5
    assert b"data:image/jpeg;base64," in response.content, "the shopper sees their photo"
    assert {"decode", "embed", "search"} <= {part.split(";")[0] for part in response["Server-Timing"].split(", ")}
    assert sorted(media_root.rglob("*")) == files_before, "the photo is not kept"
    assert not Path(settings.VISUAL_SEARCH_UPLOAD_DIR).exists()


@pytest.mark.slow  # runs the model
def test_search_filters(client, indexed_catalogue, fashion_dataset):
    gender = common_value("gender")
    response = client.post(SEARCH, {"image": photo_upload(), "gender": gender})
    neighbours = response.context["result"].neighbours
    assert len(neighbours) == 5 and all(n.product.gender == gender for n in neighbours)


@pytest.mark.slow  # runs the model
@pytest.mark.slow  # runs the model
def test_search_by_colour(client, indexed_catalogue, fashion_dataset):
    page = client.post(SEARCH, {"image": photo_upload(), "colour": "blue"})
    neighbours = page.context["result"].neighbours
    assert len(neighbours) == 5 and all(colour_family(n.product.base_colour) == "blue" for n in neighbours)
    assert b'<option value="blue" selected>Blue</option>' in page.content

    api = client.post(API_SEARCH, {"image": photo_upload(), "colour": "blue", "k": "12"})
    results = api.json()["results"]
    assert {r["base_colour"] for r in results} == {"Blue", "Navy Blue", "Turquoise Blue"}
    assert {r["sku"] for r in results} == set(Product.objects.of_colour("blue").values_list("sku", flat=True))


def test_search_form_offers_the_catalogues_colour_families(client, catalogue):
    response = client.get(SEARCH)

    choices = response.context["form"].fields["colour"].choices
    assert choices[0] == ("", "Any colour")
    assert choices[1:] == [(family, family_label(family)) for family in Product.objects.colour_families()]
    assert {"blue", "black", "white"} <= dict(choices).keys() and "navy blue" not in dict(choices)
    html = response.content.decode()
    assert '<select name="colour" id="id_colour">' in html and '<option value="blue">Blue</option>' in html


def test_an_unknown_colour_is_a_400(client, indexed_catalogue):
    message = "There is no colour 'metallic' in the catalogue."  # a family, but no product of it here

    page = client.post(SEARCH, {"image": photo_upload(), "colour": "metallic"})
    assert page.status_code == 400 and message in unescape(page.content.decode())

    api = client.post(API_SEARCH, {"image": photo_upload(), "colour": "metallic"})
    assert api.status_code == 400
    error = api.json()["error"]
    assert (error["code"], error["message"]) == ("invalid_choice", message) and "colour" in error["details"]

    product = Product.objects.get(sku="10008")
    similar = client.get(reverse("api:similar", args=[product.pk]), {"colour": "Blue"})  # family names only
    assert similar.status_code == 400
    assert similar.json()["error"] == {
        "status": 400,
        "code": "invalid_choice",
        "message": "There is no colour 'Blue' in the catalogue.",
        "details": {"colour": [{"message": "There is no colour 'Blue' in the catalogue.", "code": "invalid_choice"}]},
    }


def test_kept_uploads_go_to_a_private_folder(
    client, indexed_catalogue, fashion_dataset, settings, tmp_path, media_root
):
    settings.VISUAL_SEARCH_KEEP_UPLOADS = True
    settings.VISUAL_SEARCH_UPLOAD_DIR = tmp_path / "private-uploads"
    client.post(SEARCH, {"image": photo_upload()})
    kept = list((tmp_path / "private-uploads").rglob("*.jpg"))
    assert len(kept) == 1
    assert not str(kept[0]).startswith(str(media_root))


def _truncated_jpeg(fashion_dataset) -> bytes:
    data = (fashion_dataset / "images" / "10007.jpg").read_bytes()
    return data[: len(data) // 2]


UPLOAD_ERRORS = [
    ("notes.txt", lambda d: b"this is a shopping list, not a photo\n", "not_image", "not an image we can read"),
    ("photo.jpg", lambda d: b"", "empty", "The file is empty"),
    ("huge.png", lambda d: decompression_bomb(), "too_many_pixels", "megapixels"),
    ("broken.jpg", _truncated_jpeg, "corrupt", "damaged or incomplete"),
]


@pytest.mark.parametrize(("name", "content", "code", "message"), UPLOAD_ERRORS)
def test_bad_uploads_get_a_400_with_a_helpful_message(
    client, indexed_catalogue, fashion_dataset, name, content, code, message
):
    upload = SimpleUploadedFile(name, content(fashion_dataset))

    page = client.post(SEARCH, {"image": upload})
    assert page.status_code == 400
    assert message in page.content.decode() and 'role="alert"' in page.content.decode()

    upload.seek(0)
    api = client.post(API_SEARCH, {"image": upload})
    assert api.status_code == 400
    assert api.json()["error"]["code"] == code and message in api.json()["error"]["message"]


def test_too_large_uploads_are_refused(client, indexed_catalogue, fashion_dataset, settings):
    settings.IMAGE_UPLOAD_MAX_BYTES = 5_000
    page = client.post(SEARCH, {"image": photo_upload()})
    assert page.status_code == 400 and b"limit" in page.content

    settings.IMAGE_UPLOAD_MAX_BYTES = 200_000  # the body is small enough to read; the file is checked itself
    big = io.BytesIO()
    Image.effect_noise((400, 400), 80).convert("RGB").save(big, format="PNG")
    api = client.post(API_SEARCH, {"image": SimpleUploadedFile("noise.png", big.getvalue())})
    assert api.status_code == 400 and api.json()["error"]["code"] == "too_large"


def test_missing_photo(client, indexed_catalogue):
    response = client.post(SEARCH, {})
    assert response.status_code == 400 and b"Choose a photo to search with" in response.content


def test_search_form_is_csrf_protected(indexed_catalogue, fashion_dataset):
    strict = Client(enforce_csrf_checks=True)
    assert strict.post(SEARCH, {"image": photo_upload()}).status_code == 403


# --- JSON API ------------------------------------------------------------------------------------


def test_api_similar(client, indexed_catalogue):
    product = Product.objects.get(sku="10007")

    response = client.get(reverse("api:similar", args=[product.pk]), {"k": "3"})

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["product"]["sku"] == "10007" and body["backbone"] == "efficientnet_lite2"
    assert len(body["results"]) == 3
    first = body["results"][0]
    assert set(first) == {
        "id",
        "sku",
        "name",
        "url",
        "gender",
        "master_category",
        "sub_category",
        "article_type",
        "base_colour",
        "season",
        "year",
        "usage",
        "image_url",
        "score",
    }
    assert first["image_url"].startswith("http://testserver/media/products/")
    assert [r["score"] for r in body["results"]] == sorted((r["score"] for r in body["results"]), reverse=True)


def test_api_similar_by_colour(client, indexed_catalogue):
    product = Product.objects.get(sku="10008")
    url = reverse("api:similar", args=[product.pk])

    results = client.get(url, {"colour": "blue", "k": "20"}).json()["results"]

    family = Product.objects.of_colour("blue").exclude(pk=product.pk)
    assert {r["id"] for r in results} == set(family.values_list("pk", flat=True))
    assert {r["base_colour"] for r in results} == {"Blue", "Navy Blue", "Turquoise Blue"}
    women = client.get(url, {"colour": "blue", "gender": "Women"}).json()["results"]
    assert women and all(r["gender"] == "Women" and colour_family(r["base_colour"]) == "blue" for r in women)


def test_api_similar_errors_and_pending(client, catalogue):
    missing = client.get(reverse("api:similar", args=[987654]))
    assert missing.status_code == 404 and missing.json()["error"] == {
        "status": 404,
        "code": "not_found",
        "message": "There is no product 987654.",
    }

    product = Product.objects.first()
    bad_k = client.get(reverse("api:similar", args=[product.pk]), {"k": "500"})
    assert bad_k.status_code == 400 and "k" in bad_k.json()["error"]["details"]

    pending = client.get(reverse("api:similar", args=[product.pk])).json()
    assert pending["status"] == "pending" and pending["results"] == []


@pytest.mark.slow  # runs the model
def test_api_search(client, indexed_catalogue, fashion_dataset):
    response = client.post(API_SEARCH, {"image": photo_upload(), "k": "4"})

    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == 4 and results[0]["sku"] == "10007"
    assert client.get(API_SEARCH).status_code == 405
    assert client.post(API_SEARCH, {}).json()["error"]["code"] == "required"


def test_api_publishes_its_openapi_schema_and_docs(client):
    schema = client.get("/api/openapi.json").json()

    paths = schema["paths"]
    assert set(paths) >= {"/api/products/{pk}/similar", "/api/search", "/api/recommender/status"}
    similar = paths["/api/products/{pk}/similar"]["get"]
    assert {p["name"] for p in similar["parameters"]} >= {"pk", "k", "gender", "article_type", "colour"}
    assert {"200", "400", "404"} <= set(similar["responses"])
    body = paths["/api/search"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["required"] == ["image"] and body["properties"]["image"]["format"] == "binary"
    assert "colour" in body["properties"]
    docs = client.get("/api/docs")
    assert docs.status_code == 200 and b"cdn." not in docs.content, "the docs' JavaScript is served locally"


def test_api_errors_use_one_envelope(client, catalogue):
    product = Product.objects.first()
    not_a_number = client.get(reverse("api:similar", args=[product.pk]), {"k": "many"})
    assert not_a_number.status_code == 400
    error = not_a_number.json()["error"]
    assert (error["status"], error["code"]) == (400, "invalid") and "k" in error["details"]
