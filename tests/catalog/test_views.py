import re

import pytest
from django.urls import reverse

from catalog.models import Product

pytestmark = pytest.mark.django_db

LIST = reverse("catalog:product-list")


def names(response) -> list[str]:
    return [product.name for product in response.context["products"]]


def test_home_page_lists_products_with_images(client, catalogue):
    response = client.get(LIST)

    assert response.status_code == 200
    assert response.context["paginator"].count == 60
    assert len(response.context["products"]) == 24
    html = response.content.decode()
    assert html.count('class="product-card"') == 24
    assert re.search(r'<img src="/media/products/[0-9a-f]{2}/[0-9a-f]{32}\.jpg"', html)


def test_pagination_walks_every_product_once(client, catalogue):
    seen = []
    url = LIST
    while url:
        response = client.get(url)
        seen += [product.pk for product in response.context["products"]]
        url = response.context["page_urls"]["next"]
    assert len(seen) == 60 == len(set(seen))
    assert client.get(LIST, {"page": "99"}).status_code == 404


def test_facet_filters_combine(client, catalogue):
    response = client.get(LIST, {"gender": "Men", "type": "Tshirts"})

    products = list(response.context["paginator"].object_list)
    expected = Product.objects.filter(gender="Men", article_type="Tshirts")
    assert products and set(products) == set(expected)
    facets = {block.facet.param: block for block in response.context["facets"]}
    # Counts for one facet are taken under the other facets' filters.
    genders = {option.value: option.count for option in facets["gender"].options}
    assert genders["Men"] == expected.count()
    assert genders.get("Women", 0) == Product.objects.filter(gender="Women", article_type="Tshirts").count()
    selected = [option for option in facets["type"].options if option.selected]
    assert [option.value for option in selected] == ["Tshirts"]
    assert "type=" not in selected[0].url, "clicking a selected value removes it"


def test_colour_filter_and_its_removal_link(client, catalogue):
    response = client.get(LIST, {"colour": "Blue", "gender": "Men"})
    products = list(response.context["paginator"].object_list)
    assert products and all(p.base_colour == "Blue" and p.gender == "Men" for p in products)
    removals = dict(response.context["browse"].removable_choices())
    assert removals["Blue"] == f"{LIST}?gender=Men"


def test_keyword_search_uses_full_text_and_ranks_names(client, catalogue):
    response = client.get(LIST, {"q": "skirts"})
    found = names(response)
    assert found and all("skirt" in name.lower() for name in found)

    stemmed = client.get(LIST, {"q": "skirt"})
    assert names(stemmed) == found, "English stemming: skirt matches Skirts"

    nothing = client.get(LIST, {"q": "zzzzunknownword"})
    assert nothing.context["paginator"].count == 0
    assert b"No products match" in nothing.content


def test_search_syntax_never_errors(client, catalogue):
    for text in ['"white', "shirt -nike", "or", "!!&|", "a" * 300]:
        assert client.get(LIST, {"q": text}).status_code == 200


def test_search_combines_with_filters(client, catalogue):
    response = client.get(LIST, {"q": "shirt", "gender": "Women"})
    products = list(response.context["paginator"].object_list)
    assert products and all(product.gender == "Women" for product in products)
    assert set(products) == set(Product.objects.matching("shirt").filter(gender="Women"))


def test_product_page_shows_images_attributes_and_breadcrumbs(client, catalogue):
    product = Product.objects.get(sku="10000")

    response = client.get(product.get_absolute_url())

    assert response.status_code == 200
    html = response.content.decode()
    assert product.name in html and product.primary_image.image.url in html
    for value in ("Skirts", "Women", "Apparel", "Bottomwear", "White", "Summer 2011", "Casual", "10000"):
        assert value in html
    crumbs = response.context["breadcrumbs"]
    assert [label for label, _ in crumbs] == ["All products", "Women", "Apparel", "Skirts"]
    assert crumbs[-1][1] == f"{LIST}?gender=Women&category=Apparel&type=Skirts"


def test_old_or_missing_slug_redirects_to_the_canonical_url(client, catalogue):
    product = Product.objects.first()
    for url in (f"/products/{product.pk}/", f"/products/{product.pk}/an-old-name/"):
        response = client.get(url)
        assert response.status_code == 301
        assert response["Location"] == product.get_absolute_url()
    kept = client.get(f"/products/{product.pk}/an-old-name/?same_colour=1&same_type=1")
    assert kept.status_code == 301 and kept["Location"] == product.get_absolute_url() + "?same_colour=1&same_type=1"


def test_unknown_product_is_404(client, catalogue):
    response = client.get("/products/987654321/nothing/")
    assert response.status_code == 404
    assert b"We could not find that page" in response.content
