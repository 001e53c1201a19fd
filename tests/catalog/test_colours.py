"""Colour families: every colour of the shared catalogue belongs to one, and products are found by family."""

import csv
from collections import Counter

import pytest

from catalog.colours import FAMILIES, UNKNOWN, colour_family, colours_in_family, family_label
from catalog.models import Product


@pytest.fixture(scope="module")
def dataset_colours(fashion_dataset) -> Counter:
    with (fashion_dataset / "styles.csv").open(newline="") as handle:
        return Counter(row["baseColour"] for row in csv.DictReader(handle))


def test_every_colour_of_the_shared_catalogue_has_a_family(dataset_colours):
    assert len(dataset_colours) > 40
    known = {colour for colour in dataset_colours if colour not in UNKNOWN}
    assert {colour: colour_family(colour) for colour in known if colour_family(colour) not in FAMILIES} == {}
    assert {colour_family(colour) for colour in dataset_colours if colour in UNKNOWN} <= {""}


def test_families_are_disjoint_and_list_colours_as_stored():
    listed = [colour.casefold() for colours in FAMILIES.values() for colour in colours]
    assert len(listed) == len(set(listed))
    for family, colours in FAMILIES.items():
        assert family == family.casefold() and colours_in_family(family) == list(colours)
        assert all(colour_family(colour) == family for colour in colours)


def test_colour_family():
    assert colour_family("Navy Blue") == colour_family("navy blue ") == colour_family("Blue") == "blue"
    assert colour_family("Off White") == "white" and colour_family("Charcoal") == "black"
    assert colour_family("") == colour_family("NA") == colour_family("  ") == ""
    assert colour_family("Fuchsia") == "fuchsia"  # outside every family: its own
    assert colours_in_family("fuchsia") == ["fuchsia"] and colours_in_family("") == []


def test_family_labels():
    assert family_label("blue") == "Blue" and family_label("multi") == "Multicolour"
    assert family_label("fuchsia") == "Fuchsia"


@pytest.mark.django_db
def test_products_of_a_colour_family(catalogue):
    blue = Product.objects.of_colour("blue")
    assert {p.base_colour for p in blue} == {"Blue", "Navy Blue", "Turquoise Blue"}
    assert blue.count() == 12 == sum(colour_family(p.base_colour) == "blue" for p in catalogue)

    first, second, unknown = catalogue[:3]
    Product.objects.filter(pk=first.pk).update(base_colour="Fuchsia")
    Product.objects.filter(pk=second.pk).update(base_colour="fuchsia")  # staff typed it differently
    Product.objects.filter(pk=unknown.pk).update(base_colour="NA")
    assert set(Product.objects.of_colour("fuchsia")) == {first, second}
    assert not Product.objects.of_colour("turquoise").exists()

    families = Product.objects.colour_families()
    assert families == sorted(families) and "fuchsia" in families and "blue" in families
    assert "" not in families and "na" not in families
