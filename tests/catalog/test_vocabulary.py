import csv
from io import StringIO

import pytest
from django.contrib.messages import get_messages
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from catalog.importing import KAGGLE_COLUMNS
from catalog.models import Product
from catalog.vocabulary import CLASSIFICATION_FIELDS, Vocabulary, merge_spellings, spelling_key
from tests.catalog.test_admin import photo
from tests.catalog.test_import import read_rows, run_import, write_rows
from tests.helpers import add_product_form


def make_products(field: str, *values: str) -> None:
    start = Product.objects.count()
    Product.objects.bulk_create(
        Product(sku=f"V{start + number}", name=f"Product {number}", slug="product", **{field: value})
        for number, value in enumerate(values)
    )


@pytest.mark.parametrize(
    "spellings",
    [
        ("Tshirts", "T-shirt", "t shirts", "TSHIRT"),
        ("Dresses", "Dress", "dress "),
        ("Accessories", "accessory"),
        ("Navy Blue", "navy  blue", "Navy-Blue"),
        ("Watches", "Watch"),
        ("Flip Flops", "flip-flop"),
    ],
)
def test_spellings_of_one_value_share_a_key(spellings):
    assert len({spelling_key(spelling) for spelling in spellings}) == 1


@pytest.mark.parametrize("different", [("Kurtas", "Kurtis"), ("Grey", "Grey Melange"), ("Dress", "Dresses Set")])
def test_different_values_keep_different_keys(different):
    assert len({spelling_key(value) for value in different}) == 2


def test_the_shared_catalogues_values_are_all_distinct(fashion_dataset):
    """No false merges on a real vocabulary: 75 article types, 44 colours and the rest stay apart."""
    with (fashion_dataset / "styles.csv").open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    for column in (name for name, field in KAGGLE_COLUMNS.items() if field in CLASSIFICATION_FIELDS):
        values = {row[column] for row in rows if row[column]}
        assert len({spelling_key(value) for value in values}) == len(values), column


@pytest.mark.django_db
def test_a_new_spelling_becomes_the_one_most_products_use():
    make_products("base_colour", "White", "White", "white")
    vocabulary = Vocabulary.in_use()

    normalised = vocabulary.normalise({"base_colour": " WHITE ", "article_type": "Ponchos", "name": "x"})
    assert normalised == {"base_colour": "White", "article_type": "Ponchos", "name": "x"}
    assert vocabulary.normalise({"article_type": "poncho"})["article_type"] == "Ponchos"  # learnt from the row before
    assert vocabulary.values("base_colour") == ["White", "white"]


@pytest.mark.django_db
def test_near_duplicates_are_reported_and_merged_without_losing_products():
    make_products("article_type", "Tshirts", "Tshirts", "T-shirt", "tshirts", "Shirts")
    make_products("base_colour", "Navy Blue", "navy blue", "Blue")
    count = Product.objects.count()

    groups = Vocabulary.in_use().near_duplicates()
    assert [(group.field, group.spellings) for group in groups] == [
        ("article_type", [("Tshirts", 2), ("T-shirt", 1), ("tshirts", 1)]),
        ("base_colour", [("Navy Blue", 1), ("navy blue", 1)]),
    ]

    assert merge_spellings("article_type", ["T-shirt", "tshirts", "Tshirts"], "Tshirts") == 2
    assert Product.objects.count() == count
    assert Product.objects.filter(article_type="Tshirts").count() == 4
    assert Product.objects.filter(article_type="Shirts").count() == 1
    assert [group.field for group in Vocabulary.in_use().near_duplicates()] == ["base_colour"]
    with pytest.raises(ValueError, match="not spellings of one value"):
        merge_spellings("base_colour", ["navy blue"], "Blue")


@pytest.mark.django_db
def test_tidy_vocabulary_command_reports_then_merges():
    make_products("season", "Summer", "summer", "Winter")

    out = StringIO()
    call_command("tidy_vocabulary", stdout=out)
    assert "Season: “Summer” (1), “summer” (1)" in out.getvalue()
    assert Product.objects.filter(season="summer").exists()

    call_command("tidy_vocabulary", "--merge", stdout=out)
    assert "Season: merged into “Summer”, 1 products changed" in out.getvalue()
    assert Product.objects.filter(season="Summer").count() == 2 and Product.objects.filter(season="Winter").count() == 1


@pytest.mark.django_db
def test_an_import_spells_values_as_the_catalogue_does(kaggle_folder):
    make_products("base_colour", "White", "White")
    make_products("article_type", "Tshirts")
    header, rows = read_rows(kaggle_folder)
    colour, article = header.index("baseColour"), header.index("articleType")
    rows[0][colour], rows[0][article] = "white ", "T-Shirt"
    rows[1][colour], rows[1][article] = "Mauve", "Ponchos"
    rows[2][colour], rows[2][article] = "mauve", "poncho"
    write_rows(kaggle_folder, header, rows)

    run_import(kaggle_folder)

    first, second, third = (Product.objects.get(sku=row[0]) for row in rows[:3])
    assert (first.base_colour, first.article_type) == ("White", "Tshirts")
    assert (second.base_colour, second.article_type) == ("Mauve", "Ponchos")
    assert (third.base_colour, third.article_type) == ("Mauve", "Ponchos")
    assert not Vocabulary.in_use().near_duplicates()


@pytest.mark.django_db
def test_the_admin_form_suggests_values_in_use_and_respells_a_near_duplicate(staff_client, fashion_dataset):
    make_products("base_colour", "White", "Black")
    make_products("article_type", "Shirts")

    page = staff_client.get(reverse("admin:catalog_product_add")).content.decode()
    assert 'list="id_base_colour-values"' in page
    assert '<datalist id="id_base_colour-values"><option value="Black"></option><option value="White">' in page

    response = staff_client.post(
        reverse("admin:catalog_product_add"),
        add_product_form(photo(fashion_dataset), base_colour="white", article_type="shirt", usage="Lounging"),
        follow=True,
    )

    product = Product.objects.get(sku="NEW-001")
    assert (product.base_colour, product.article_type, product.usage) == ("White", "Shirts", "Lounging")
    shown = [str(message) for message in get_messages(response.wsgi_request)] or [
        str(message) for message in response.context["messages"]
    ]
    assert "Base colour “white” was saved as “White”, the spelling already in use." in shown
    assert "Article type “shirt” was saved as “Shirts”, the spelling already in use." in shown
    assert "Usage “Lounging” is a new value." in shown


@pytest.mark.django_db
def test_an_unchanged_legacy_spelling_is_left_alone(staff_client, fashion_dataset):
    make_products("base_colour", "White", "White")
    staff_client.post(reverse("admin:catalog_product_add"), add_product_form(photo(fashion_dataset)))
    product = Product.objects.get(sku="NEW-001")
    Product.objects.filter(pk=product.pk).update(base_colour="white")  # written before vocabularies existed
    form = add_product_form("", base_colour="white", name="Renamed shirt")
    form.update({"images-TOTAL_FORMS": "0", "images-0-image": ""})

    staff_client.post(reverse("admin:catalog_product_change", args=[product.pk]), form)

    product.refresh_from_db()
    assert (product.name, product.base_colour) == ("Renamed shirt", "white")


@pytest.mark.django_db
def test_staff_merge_spellings_on_the_vocabulary_page(staff_client):
    make_products("gender", "Men", "Men", "men", "Women")
    url = reverse("admin:catalog_product_vocabulary")

    page = staff_client.get(url).content.decode()
    assert "Keep “Men” (2 products)" in page and "Keep “men” (1 product)" in page and "Women" not in page

    response = staff_client.post(url, {"field": "gender", "spelling": ["Men", "men"], "into": "men"}, follow=True)

    assert "Gender: “Men” merged into “men” (2 products changed)." in response.content.decode()
    assert sorted(Product.objects.values_list("gender", flat=True)) == ["Women", "men", "men", "men"]
    assert "Every classification value has one spelling." in response.content.decode()
    anonymous = Client()
    assert anonymous.get(url).status_code == 302  # to the login page
    assert anonymous.post(url, {"field": "gender", "spelling": ["men"], "into": "Men"}).status_code == 302
    assert set(Product.objects.values_list("gender", flat=True)) == {"Women", "men"}


@pytest.mark.django_db
def test_the_respell_action_changes_only_the_selected_products(staff_client):
    make_products("base_colour", "Black", "Black", "black", "black")
    first, second = Product.objects.filter(base_colour="black").order_by("pk")
    changelist = reverse("admin:catalog_product_changelist")

    response = staff_client.post(changelist, {"action": "respell_values", "_selected_action": [first.pk]}, follow=True)

    assert "Base colour: 1 products now say “Black”." in response.content.decode()
    assert sorted(Product.objects.values_list("base_colour", flat=True)) == ["Black", "Black", "Black", "black"]
    second.refresh_from_db()
    assert second.base_colour == "black"
