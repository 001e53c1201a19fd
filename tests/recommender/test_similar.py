from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from catalog.models import Product, ProductImage
from recommender.encoding.backbones import get_backbone
from recommender.encoding.preprocessing import image_pixels
from recommender.retrieval import nearest_products
from tests.helpers import stored_vector

LITE2 = get_backbone("efficientnet_lite2")

pytestmark = pytest.mark.django_db


@pytest.mark.slow  # runs the model
def test_similar_finds_a_catalogue_photo_first(embedded_catalogue, fashion_dataset):
    out = StringIO()
    call_command("similar", str(fashion_dataset / "images" / "10007.jpg"), "--k", "5", stdout=out)

    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 7 and lines[0].startswith("efficientnet_lite2, searched with the garment found at")
    first = lines[2].split()
    assert first[0] == "1" and first[3] == "10007"
    assert float(first[1]) > 0.95


def test_similar_with_no_embeddings_says_what_to_do(catalogue, fashion_dataset):
    with pytest.raises(CommandError, match="embed_catalog"):
        call_command("similar", str(fashion_dataset / "images" / "10017.jpg"))


def test_similar_rejects_a_non_image(embedded_catalogue, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    with pytest.raises(CommandError, match="not an image"):
        call_command("similar", str(text))


def test_nearest_products_are_distinct_products_best_first(embedded_catalogue):
    image = ProductImage.objects.select_related("product").order_by("pk")[7]
    vector = stored_vector(image.pk, LITE2)

    neighbours = nearest_products(vector, LITE2, k=5, exclude_product_id=image.product_id)

    assert len(neighbours) == 5
    assert image.product not in [n.product for n in neighbours]
    assert len({n.product.pk for n in neighbours}) == 5
    scores = [n.score for n in neighbours]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)


def test_neighbours_share_the_article_type_more_than_chance(embedded_catalogue):
    products = list(Product.objects.with_images())
    same = total = 0
    for product in products:
        vector = stored_vector(product.primary_image.pk, LITE2)
        for neighbour in nearest_products(vector, LITE2, k=5, exclude_product_id=product.pk):
            same += neighbour.product.article_type == product.article_type
            total += 1
    types = [p.article_type for p in products]
    chance = sum(types.count(t) * (types.count(t) - 1) for t in set(types)) / (len(types) * (len(types) - 1))
    assert same / total > 2 * chance


@pytest.mark.parametrize(("mode", "expected_white_rows"), [("pad", True), ("crop", False)])
def test_square_modes_on_a_tall_photo(mode, expected_white_rows):
    from PIL import Image

    tall = Image.new("RGB", (100, 200), (200, 30, 30))
    pixels = image_pixels(tall, 50, mode)
    assert pixels.shape == (50, 50, 3)
    assert (pixels[:, 0] == 255).all() == expected_white_rows  # padding adds white at the sides


def test_trim_mode_crops_the_white_margin():
    from PIL import Image

    photo = Image.new("RGB", (200, 200), (255, 255, 255))
    photo.paste((0, 0, 0), (80, 80, 120, 120))
    pixels = image_pixels(photo, 40, "trim")
    assert pixels.mean() < 30, "the product fills the frame"


def test_colour_filter_means_the_colour_family(embedded_catalogue):
    product = Product.objects.get(sku="10008")  # a Navy Blue T-shirt
    vector = stored_vector(product.primary_image.pk, LITE2)
    family = set(Product.objects.of_colour("blue").exclude(pk=product.pk))

    neighbours = nearest_products(vector, LITE2, k=5, exclude_product_id=product.pk, colour="blue")
    everything = nearest_products(vector, LITE2, k=20, exclude_product_id=product.pk, colour="blue")

    assert len(neighbours) == 5 and {n.product for n in neighbours} <= family
    assert {n.product for n in everything} == family, "every other product of the family, and no more"
    assert {n.product.base_colour for n in everything} == {"Blue", "Navy Blue", "Turquoise Blue"}
    combined = nearest_products(vector, LITE2, k=5, exclude_product_id=product.pk, colour="blue", gender="Women")
    assert combined and all(n.product.gender == "Women" and n.product in family for n in combined)


def test_colour_filter_outside_every_family_ignores_letter_case(embedded_catalogue):
    product, other = Product.objects.exclude(sku="10007").order_by("pk")[:2]
    Product.objects.filter(pk=product.pk).update(base_colour="Fuchsia")
    Product.objects.filter(pk=other.pk).update(base_colour="FUCHSIA")
    vector = stored_vector(Product.objects.get(sku="10007").primary_image.pk, LITE2)

    found = nearest_products(vector, LITE2, k=5, colour="fuchsia")

    assert {n.product.pk for n in found} == {product.pk, other.pk}
    assert nearest_products(vector, LITE2, k=5, colour="turquoise") == []
