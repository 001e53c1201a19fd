"""Finding the garment in a shopper's photo: the box, the regions, the crop the API takes, and the
shopper-photo set it is measured on."""

import json
from io import StringIO

import numpy as np
import pytest
from django.core.management import call_command
from django.urls import reverse
from PIL import Image

from recommender.encoding import garment
from recommender.encoding.garment import Box, InvalidBox
from recommender.evaluation.metrics import CatalogueVectors, photo_search_scores
from recommender.evaluation.shopper_photos import shopper_photo
from recommender.locator_training import box_iou
from tests.helpers import DATASET, photo_upload

API_SEARCH = reverse("api:search")
SEARCH = reverse("recommender:visual-search")


def catalogue_photo(sku: str) -> Image.Image:
    return Image.open(DATASET / "images" / f"{sku}.jpg").convert("RGB")


def test_a_crop_box_is_four_fractions_inside_the_photo():
    assert Box.parse(" 0.1,0.2 ,0.5,0.9") == Box(0.1, 0.2, 0.5, 0.9)
    assert Box.parse("0,0,1,1") == Box.WHOLE
    assert Box.parse("0.25,0,0.75,0.5").param == "0.2500,0.0000,0.7500,0.5000"
    for bad in [
        "",
        "0.1,0.2,0.5",
        "a,b,c,d",
        "0.1,0.2,0.5,0.9,1",
        "nan,0,1,1",
        "0.5,0,0.4,1",
        "0,0,1.2,1",
        "-0.1,0,1,1",
    ]:
        with pytest.raises(InvalidBox):
            Box.parse(bad)
    with pytest.raises(InvalidBox, match="too small"):
        Box.parse("0.5,0.5,0.51,0.9")


def test_a_box_crops_the_photo_by_fractions():
    photo = Image.new("RGB", (400, 200))
    assert Box(0.25, 0.5, 0.75, 1.0).crop(photo).size == (200, 100)
    assert Box.WHOLE.crop(photo) is photo


def test_regions_are_the_map_blobs_most_probable_first_in_photo_fractions():
    cells = garment.MAP_CELLS
    assert cells == 40
    probabilities = np.zeros((cells, cells), np.float32)
    probabilities[2:14, 2:14] = 0.8  # smaller, weaker
    probabilities[16:36, 20:36] = 0.9  # large, strong
    probabilities[0, 39] = 0.5  # a speck: far below a quarter of the best region's mass

    found = garment.regions(probabilities, garment.INPUT_SIZE, garment.INPUT_SIZE)

    assert found == [Box(0.5, 0.4, 0.9, 0.9), Box(0.05, 0.05, 0.35, 0.35)]


def test_regions_of_a_wide_photo_account_for_the_padding():
    # A 2:1 photo is padded above and below to a square: its rows start a quarter of the way down.
    probabilities = np.zeros((garment.MAP_CELLS, garment.MAP_CELLS), np.float32)
    probabilities[10:30, 0:20] = 0.9  # the left half of the photo, all its height

    (box,) = garment.regions(probabilities, 400, 200)

    assert (box.x0, box.y0, box.x1, box.y1) == pytest.approx((0.0, 0.0, 0.5, 1.0))
    assert garment.regions(np.zeros_like(probabilities), 400, 200) == []


def test_shopper_photos_are_reproducible_and_not_on_white():
    photo, clutter = catalogue_photo("10007"), [catalogue_photo("10012"), catalogue_photo("10020")]

    first, again = shopper_photo(photo, seed=3, clutter=clutter), shopper_photo(photo, seed=3, clutter=clutter)
    other = shopper_photo(photo, seed=4, clutter=clutter)

    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))
    assert not np.array_equal(np.asarray(first.image), np.asarray(other.image))
    x0, y0, x1, y1 = first.box
    assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 and (x1 - x0) * (y1 - y0) > 0.1, "the product is big in it"
    outside = np.asarray(first.image)[np.asarray(first.mask) == 0]
    assert (outside.min(axis=1) > 235).mean() < 0.05, "the background is not white"


def test_photo_search_scores_on_a_worked_example():
    # Three products, one image each; labels: a, a, b.
    vectors = np.eye(3, dtype=np.float32)
    data = CatalogueVectors(
        np.array([10, 11, 12]), vectors, vectors, np.arange(3), {"article type": np.array(["a", "a", "b"])}
    )
    queries = np.array([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8]], np.float32)  # photos of products 0 and 1

    scores = photo_search_scores(queries, np.array([0, 1]), data, k=2)

    assert scores["recall@1"] == 0.5 and scores["recall@2"] == 1.0
    assert scores["type_precision@2"] == pytest.approx((1.0 + 0.5) / 2)
    clean = photo_search_scores(vectors[:2], np.array([0, 1]), data, k=1, exclude_truth=True)
    assert clean == {"photos": 2, "type_precision@1": 1.0}, "each finds the other 'a', never itself"


@pytest.mark.slow  # runs the locator
def test_the_locator_finds_the_product_on_a_busy_background():
    locator = garment.get_locator()
    hits = []
    for seed, sku in enumerate(["10007", "10012", "10020", "10034"]):
        shot = shopper_photo(catalogue_photo(sku), seed=seed, clutter=[catalogue_photo("10041")])
        found = locator.locate(shot.image)
        hits.append(bool(found) and box_iou(found[0], Box(*shot.box)) > 0.5)
    assert sum(hits) >= 3, hits


@pytest.mark.slow  # runs the locator
def test_two_garments_side_by_side_are_offered_as_two_regions():
    canvas = Image.new("RGB", (640, 320), (90, 110, 140))
    canvas.paste(catalogue_photo("10007").resize((260, 260)), (20, 30))
    canvas.paste(catalogue_photo("10012").resize((260, 260)), (360, 30))

    found = garment.get_locator().locate(canvas)

    assert len(found) >= 2
    centres = sorted((box.x0 + box.x1) / 2 for box in found[:2])
    assert centres[0] < 0.5 < centres[1], found


@pytest.mark.slow  # runs the model
def test_the_api_searches_the_crop_it_is_given_and_reports_it(client, indexed_catalogue, fashion_dataset):
    left, right = catalogue_photo("10007"), catalogue_photo("10012")
    pair = Image.new("RGB", (448, 224), "white")
    pair.paste(left, (0, 0))
    pair.paste(right, (224, 0))
    upload = photo_upload()
    upload.file.seek(0)
    upload.file.truncate()
    pair.save(upload.file, format="JPEG", quality=92)

    def search(**fields):
        upload.file.seek(0)
        response = client.post(API_SEARCH, {"image": upload, **fields})
        assert response.status_code == 200, response.content
        return response.json()

    on_right = search(crop="0.5,0,1,1")
    on_left = search(crop="0,0,0.5,1")
    automatic = search()
    whole = search(whole_photo="true")

    assert on_right["crop"] == {"x0": 0.5, "y0": 0.0, "x1": 1.0, "y1": 1.0, "source": "shopper"}
    assert on_right["results"][0]["sku"] == "10012" and on_left["results"][0]["sku"] == "10007"
    assert automatic["crop"]["source"] == "auto" and len(automatic["regions"]) >= 1
    assert {key: automatic["crop"][key] for key in ("x0", "y0", "x1", "y1")} == automatic["regions"][0]
    assert whole["crop"] == {"x0": 0.0, "y0": 0.0, "x1": 1.0, "y1": 1.0, "source": "whole"} and whole["regions"] == []


def test_a_bad_crop_is_a_400_with_its_own_code(client, catalogue):
    for bad in ["0.5,0.5,0.2,0.9", "1,2,3", "0,0,0.01,0.01"]:
        response = client.post(API_SEARCH, {"image": photo_upload(), "crop": bad})
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_crop", response.json()
    page = client.post(SEARCH, {"image": photo_upload(), "crop": "0.5,0.5,0.2,0.9"})
    assert page.status_code == 400 and "The crop must lie inside the photo" in page.content.decode()


@pytest.mark.slow  # trains for one epoch
def test_train_garment_locator_saves_a_head_the_locator_loads(catalogue, tmp_path):
    output = tmp_path / "head.weights.h5"
    out = StringIO()

    call_command("train_garment_locator", "--composites", "40", "--epochs", "1", "--output", str(output), stdout=out)

    assert output.is_file() and "box IoU" in out.getvalue()
    model = garment.build_locator(output)
    assert model.output.shape[1:] == (40, 40, 1)


@pytest.mark.slow  # runs the model over generated photos
def test_evaluate_recommender_reports_search_by_photo(indexed_catalogue, tmp_path):
    report_path = tmp_path / "report.json"
    out = StringIO()

    call_command(
        "evaluate_recommender", "--sample", "10", "--shopper-photos", "20", "--json", str(report_path), stdout=out
    )

    report = json.loads(report_path.read_text())
    shopper = report["shopper_photos"]
    assert set(shopper) == {"whole photo", "garment found", "true box"}
    assert all(0 <= scores["recall@5"] <= 1 and scores["photos"] >= 1 for scores in shopper.values())
    assert set(report["catalogue_photos"]) == {"whole photo", "garment found"}
    assert "Search by photo" in out.getvalue() and "garment found" in out.getvalue()


def test_a_crop_of_exactly_the_smallest_side_is_accepted_anywhere_and_stays_inside_tiny_photos():
    for text in ["0.1,0,0.12,1", "0.3,0,0.32,1", "0,0,0.02,1"]:
        assert Box.parse(text)
    dot = Image.new("RGB", (1, 1), "red")
    assert Box.parse("0.98,0.98,1,1").crop(dot).getpixel((0, 0)) == (255, 0, 0), "never the black beyond the photo"


def test_a_white_or_tiny_product_still_makes_a_shopper_photo_with_a_box():
    for photo in [
        Image.new("RGB", (300, 400), "white"),
        Image.new("RGB", (1, 1), "black"),
        Image.new("RGB", (2, 300), "blue"),
    ]:
        x0, y0, x1, y1 = shopper_photo(photo, seed=1).box
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1


def test_whole_photo_is_a_boolean_for_api_clients(client, catalogue):
    from recommender.forms import FlagField

    field = FlagField(required=False)
    assert [field.clean(value) for value in ["true", "1", "on", "Yes", "false", "0", "off", "no", ""]] == [True] * 4 + [
        False
    ] * 5
    response = client.post(API_SEARCH, {"image": photo_upload(), "whole_photo": "maybe"})
    assert response.status_code == 400 and response.json()["error"]["details"]["whole_photo"][0]["code"] == "invalid"
