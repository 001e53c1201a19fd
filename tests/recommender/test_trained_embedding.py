"""Embeddings trained on the catalogue: the head and its files, training on a slice, activation
(which never mixes vectors and keeps search answering), admin, and a damaged model."""

import hashlib
import json
from io import StringIO

import numpy as np
import pytest
from django.core.management import call_command
from django.urls import reverse

from catalog.colours import FAMILIES, colour_family, colours_in_family
from catalog.models import Product
from recommender import active
from recommender.active import active_backbone, embedding_spaces
from recommender.encoding.projection import (
    COLOUR_FEATURES,
    COLOUR_LAYOUTS,
    HEAD_FILE,
    LAB_STATISTICS,
    BackboneProjection,
    ModelArtifactError,
    ProjectionHead,
    TrainedModel,
    colour_features,
    head_inputs,
    save_model,
)
from recommender.evaluation.metrics import label_precision, query_neighbours
from recommender.models import EmbeddingModel, ImageEmbedding
from recommender.retrieval import current_manifest
from recommender.trained_models import activate_model, better_than_active, training_due
from tests.processes import wait_until


@pytest.fixture(autouse=True)
def fresh_trained_backbones():
    active.load_trained_backbone.cache_clear()
    yield
    active.load_trained_backbone.cache_clear()


def random_head(inputs: int = 1280 + 64, learned: int = 128, seed: int = 0, learned_weight=1.0) -> ProjectionHead:
    """A head of the shape trained before label blocks (a learned half beside kept components), random."""
    rng = np.random.default_rng(seed)
    components, _ = np.linalg.qr(rng.normal(size=(1280, 128)))
    return ProjectionHead(
        [
            (rng.normal(0, 0.05, (inputs, 64)).astype(np.float32), np.zeros(64, np.float32)),
            (rng.normal(0, 0.2, (64, learned)).astype(np.float32), np.zeros(learned, np.float32)),
        ],
        BackboneProjection(np.zeros(1280, np.float32), components.astype(np.float32)),
        learned_weight,
    )


def saved_model(version: str = "20260101-000000", status=EmbeddingModel.Status.READY, **metrics) -> EmbeddingModel:
    save_model(version, random_head(), {"base": "efficientnet_lite2"})
    return EmbeddingModel.objects.create(version=version, base="efficientnet_lite2", status=status, metrics=metrics)


def test_colour_features_see_the_product_not_the_white_around_it():
    photo = np.full((1, 40, 40, 3), 255, np.uint8)
    photo[0, 10:30, 10:30] = (200, 20, 20)  # a red square on white

    (features,) = colour_features(photo)

    histogram, lab_mean, lab_spread = features[:64], features[64:67], features[67:70]
    red_cell = (3 * 4 + 0) * 4 + 0
    assert histogram[red_cell] == pytest.approx(1.0) and histogram.sum() == pytest.approx(1.0)
    assert lab_mean * 100 == pytest.approx([43, 66, 51], abs=3), "CIELAB of (200, 20, 20)"
    assert lab_spread == pytest.approx([0, 0, 0], abs=1e-3), "one colour"
    assert features[70:] == pytest.approx(np.tile(lab_mean, 3), abs=1e-4), "its percentiles are its mean"
    (white,) = colour_features(np.full((1, 8, 8, 3), 255, np.uint8))
    assert white[63] == pytest.approx(1.0) and white[64] == pytest.approx(1.0), "an all-white photo is white"


def test_colour_features_count_every_pixel_of_a_many_coloured_photo_in_its_cell():
    photo = np.random.default_rng(3).integers(0, 256, (1, 30, 30, 3), dtype=np.uint8)
    photo[0, :5] = 255  # a white band: background, not counted

    (features,) = colour_features(photo)

    product = photo[0, 5:].reshape(-1, 3) // 64
    expected = np.bincount((product[:, 0] * 4 + product[:, 1]) * 4 + product[:, 2], minlength=64)
    assert features[:64] ** 2 == pytest.approx(expected / expected.sum(), abs=1e-6)


def test_colour_features_tell_navy_from_black_where_the_histogram_cannot():
    navy, black = np.full((2, 16, 16, 3), 10, np.uint8)
    navy[..., 2] = 60

    navy_features, black_features = colour_features(np.stack([navy, black]))

    assert np.array_equal(navy_features[:64], black_features[:64]), "one histogram cell"
    assert navy_features[66] < black_features[66] - 0.1, "navy is bluer (lower CIELAB b)"


def test_a_head_gives_unit_vectors_of_its_dimension_half_kept_from_the_backbone():
    inputs = np.random.default_rng(1).normal(size=(5, 1344)).astype(np.float32)
    head = random_head()

    vectors = head.apply(inputs)

    assert head.dimension == 256 and vectors.shape == (5, 256)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    kept = head.kept.apply(inputs[:, :1280])
    assert np.allclose(vectors[:, :128] * np.sqrt(2), kept, atol=1e-5), "the kept half, of equal weight"

    lighter = random_head(learned_weight=0.5).apply(inputs)
    assert np.allclose(np.linalg.norm(lighter[:, :128], axis=1), 1 / np.sqrt(1.25), atol=1e-5)
    assert np.allclose(np.linalg.norm(lighter[:, 128:], axis=1), 0.5 / np.sqrt(1.25), atol=1e-5)


def test_a_saved_model_loads_and_a_damaged_one_says_so(settings):
    head = random_head(learned_weight=0.8)
    model = save_model("20260101-000000", head, {"base": "efficientnet_lite2", "labels": {"gender": ["Men"]}})

    loaded = TrainedModel.load(model.directory)
    assert loaded.base == "efficientnet_lite2" and loaded.manifest["labels"] == {"gender": ["Men"]}
    x = np.ones((2, 1344), np.float32)
    assert loaded.head.learned_weight == pytest.approx(0.8)
    assert np.allclose(loaded.head.apply(x), head.apply(x))

    (model.directory / HEAD_FILE).write_bytes(b"not the weights")
    with pytest.raises(ModelArtifactError, match="damaged"):
        TrainedModel.load(model.directory)
    with pytest.raises(ModelArtifactError, match="Cannot read"):
        TrainedModel.load(settings.TRAINED_MODEL_DIR / "missing")


@pytest.mark.parametrize("colour_columns", COLOUR_LAYOUTS)
def test_a_head_trained_on_either_colour_layout_takes_todays_inputs(colour_columns, settings):
    from recommender.encoding.backbones import trained_backbone

    model = save_model("20260101-000000", random_head(inputs=1280 + colour_columns), {"base": "efficientnet_lite2"})
    photos = np.random.default_rng(4).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    vectors = np.random.default_rng(5).normal(size=(3, 1280)).astype(np.float32)

    embedded = model.head.apply(head_inputs(vectors, colour_features(photos)))

    assert trained_backbone(model).dimension == 256
    assert np.allclose(np.linalg.norm(embedded, axis=1), 1, atol=1e-5)


def test_a_head_of_any_other_input_width_is_refused(settings):
    from recommender.encoding.backbones import trained_backbone

    model = save_model(
        "20260101-000000", random_head(inputs=1280 + COLOUR_FEATURES + 1), {"base": "efficientnet_lite2"}
    )

    with pytest.raises(ModelArtifactError, match="does not take"):
        trained_backbone(model)


def test_split_precision_on_a_worked_example():
    vectors = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = np.array(["a", "a", "b", "a"])

    neighbours = query_neighbours(vectors, np.array([0, 2]), k=1)

    assert neighbours[:, 0].tolist() == [1, 3], "never itself"
    assert label_precision(neighbours, np.array([0, 2]), labels) == {"micro": 0.5, "macro": 0.5, "queries": 2}


def test_colour_families_cover_the_shared_catalogue_and_do_not_overlap(fashion_dataset):
    import csv

    with (fashion_dataset / "styles.csv").open(newline="") as handle:
        colours = {row["baseColour"] for row in csv.DictReader(handle)} - {"", "NA"}
    listed = [colour for members in FAMILIES.values() for colour in members]
    assert len(listed) == len(set(listed)), "a colour is in one family"
    assert colours <= set(listed), colours - set(listed)
    assert colour_family("Navy Blue") == colour_family("teal") == "blue" and colour_family("NA") == ""
    assert "Navy Blue" in colours_in_family("blue")


@pytest.mark.django_db
def test_without_an_active_model_the_frozen_backbone_answers(lite2):
    saved_model()  # ready, not active
    assert active_backbone() == lite2
    assert [space.name for space in embedding_spaces()] == [lite2.name]


@pytest.mark.slow  # embeds shopper-like photos of the slice with the real backbone
@pytest.mark.django_db
def test_training_on_a_slice_beats_the_frozen_model_on_its_held_back_products(shared_slice, lite2):
    from recommender.encoding import garment
    from recommender.training import (
        FeatureCache,
        TrainingSettings,
        catalogue_data,
        shopper_view_inputs,
        shopper_view_kind,
        train_embedding,
    )

    report = train_embedding(lite2, TrainingSettings(epochs=30, shopper_views=60, test_photos=20))

    frozen, trained = report.evaluation["frozen"], report.evaluation["trained"]
    assert report.evaluation["test_products"] >= 30, "the slice's test split is held back"
    assert trained["colour"]["micro"] > frozen["colour"]["micro"] + 0.05
    assert trained["colour family"]["micro"] > frozen["colour family"]["micro"] + 0.05
    assert trained["article type"]["micro"] > frozen["article type"]["micro"] - 0.05
    record = EmbeddingModel.objects.get(version=report.model.version)
    assert record.status == EmbeddingModel.Status.READY and record.products == report.products
    manifest = json.loads((report.model.directory / "model.json").read_text())
    assert manifest["evaluation"] == report.evaluation and len(manifest["fingerprint"]) == 64
    assert report.trained_on + report.evaluation["test_products"] == report.products

    # Retraining reads the backbone's features of the shopper-like photos from the cache.
    again = train_embedding(lite2, TrainingSettings(epochs=1, shopper_views=60, test_photos=20))
    assert again.seconds["shopper views"] < report.seconds["shopper views"] / 3
    # ... kept per locator head, so views cropped by another locator are never reused.
    cache, kind = FeatureCache(lite2), shopper_view_kind(0)
    assert garment.get_locator().fingerprint in kind
    assert len(list(cache.directory.glob(f"*/*-{kind}.npy"))) >= 60
    # A view is the same photo whichever run, order or thread makes it.
    data = catalogue_data(lite2, cache)
    rows = [row for row in range(len(data.skus)) if cache.get(data.checksums[row], kind) is not None][:6]
    cached = shopper_view_inputs(data, rows, lite2, cache, seed=0)
    for row in rows:
        cache.path(data.checksums[row], kind).unlink()
    remade = shopper_view_inputs(data, rows[::-1], lite2, cache, seed=0)[::-1]
    np.testing.assert_allclose(remade, cached, atol=1e-5)

    out = StringIO()
    call_command(
        "evaluate_recommender", "--trained", report.model.version, "--sample", "5", "--shopper-photos", "0", stdout=out
    )
    assert "trained   colour family" in out.getvalue() and "frozen    shopper photos" in out.getvalue()

    # --validate: the test split left out altogether, the validation split held back; nothing saved.
    models, out = EmbeddingModel.objects.count(), StringIO()
    options = ["--epochs", "1", "--shopper-views", "20", "--test-photos", "5"]
    call_command("train_embedding", "--validate", *options, stdout=out)
    assert "Validation split:" in out.getvalue() and "trained   article type" in out.getvalue()
    assert EmbeddingModel.objects.count() == models


@pytest.mark.django_db
def test_activation_embeds_everything_first_then_switches(indexed_catalogue, lite2, client):
    record = saved_model()
    before = client.get(reverse("api:index-status")).json()

    activate_model(record.version)

    record.refresh_from_db()
    space = active_backbone()
    assert record.status == EmbeddingModel.Status.ACTIVE and space.name == record.space == f"trained-{record.version}"
    vectors = ImageEmbedding.objects.for_backbone(space).done()
    assert vectors.count() == 60 and set(vectors.values_list("dimension", flat=True)) == {256}
    assert current_manifest(space).items == 60 and current_manifest(lite2).items == 60, "one index per space"
    assert before["backbone"] == lite2.name and client.get(reverse("api:index-status")).json()["backbone"] == space.name
    assert [s.name for s in embedding_spaces()] == [lite2.name, space.name], "new photos get both vectors"
    out = StringIO()
    call_command("evaluate_recommender", "--backbone", "active", "--sample", "5", "--shopper-photos", "0", stdout=out)
    assert space.name in out.getvalue(), "the served space is evaluated"

    second = saved_model("20260102-000000")
    activate_model(second.version)
    record.refresh_from_db()
    assert record.status == EmbeddingModel.Status.RETIRED and EmbeddingModel.objects.active() == second


@pytest.mark.django_db
def test_a_damaged_active_model_leaves_the_site_on_the_frozen_backbone(
    indexed_catalogue, lite2, client, settings, caplog
):
    record = saved_model()
    activate_model(record.version)
    (settings.TRAINED_MODEL_DIR / record.version / HEAD_FILE).write_bytes(b"x")
    active.load_trained_backbone.cache_clear()  # as in a process starting now

    assert active_backbone() == lite2
    assert "The active trained model cannot be used" in caplog.text and "damaged" in caplog.text
    response = client.get(reverse("api:similar", args=[Product.objects.first().pk]))
    assert response.status_code == 200 and response.json()["backbone"] == lite2.name
    assert len(response.json()["results"]) == 5


@pytest.mark.django_db
def test_a_damaged_model_is_never_activated(indexed_catalogue, lite2, settings):
    from recommender.trained_models import ActivationError

    record = saved_model()
    (settings.TRAINED_MODEL_DIR / record.version / HEAD_FILE).write_bytes(b"x")

    with pytest.raises(ActivationError, match="damaged"):
        activate_model(record.version)

    record.refresh_from_db()
    assert record.status == EmbeddingModel.Status.FAILED and "damaged" in record.error
    assert active_backbone() == lite2 and not ImageEmbedding.objects.filter(backbone=record.space).exists()


@pytest.mark.django_db
def test_training_is_due_for_a_whole_catalogue_and_then_for_growth(embedded_catalogue, settings):
    settings.EMBEDDING_TRAIN_MIN_PRODUCTS, settings.EMBEDDING_RETRAIN_GROWTH = 50, 0.2
    assert training_due(), "60 embedded products, no model yet"
    EmbeddingModel.objects.create(version="t", base="efficientnet_lite2", status="training")
    assert not training_due(), "one is training"
    EmbeddingModel.objects.filter(version="t").update(status="ready", products=55)
    assert not training_due(), "60 is less than 20% more than 55"
    EmbeddingModel.objects.filter(version="t").update(products=50)
    assert training_due()
    settings.EMBEDDING_TRAIN_MIN_PRODUCTS = 100
    EmbeddingModel.objects.all().delete()
    assert not training_due(), "too few products to learn from"


@pytest.mark.django_db
def test_a_new_model_replaces_the_active_one_only_when_no_worse():
    def scores(type_p5, colour_p5, recall):
        return {
            "article type": {"micro": type_p5},
            "colour": {"micro": colour_p5},
            "shopper photos": {"recall@5": recall},
        }

    frozen = scores(0.8, 0.3, 0.9)
    first = EmbeddingModel.objects.create(
        version="a", base="b", metrics={"frozen": frozen, "trained": scores(0.85, 0.5, 0.895)}
    )
    assert better_than_active(first)
    for index, worse in enumerate([scores(0.84, 0.6, 0.9), scores(0.86, 0.49, 0.9), scores(0.9, 0.6, 0.88)]):
        EmbeddingModel.objects.filter(pk=first.pk).update(status="active")
        second = EmbeddingModel.objects.create(
            version=f"b{index}", base="b", metrics={"frozen": frozen, "trained": worse}
        )
        assert not better_than_active(second), worse
    lost_photos = EmbeddingModel.objects.create(
        version="c", base="b", metrics={"frozen": frozen, "trained": scores(0.9, 0.6, 0.7)}
    )
    EmbeddingModel.objects.filter(pk=first.pk).update(status="retired")
    assert not better_than_active(lost_photos), "better labels do not excuse losing the exact item"

    # Each model is judged by its gains over the frozen backbone evaluated beside it: a later run on
    # harder photos (the frozen backbone lower too) can still beat the active model.
    EmbeddingModel.objects.filter(pk=first.pk).update(status="active")
    harder_photos = EmbeddingModel.objects.create(
        version="d", base="b", metrics={"frozen": scores(0.8, 0.3, 0.8), "trained": scores(0.85, 0.5, 0.81)}
    )
    assert better_than_active(harder_photos)


@pytest.mark.slow  # a real Celery worker
@pytest.mark.django_db(transaction=True)
def test_with_a_worker_admin_activation_keeps_search_answering_and_never_mixes(
    indexed_catalogue, celery_worker, staff_client, client, lite2, settings
):
    settings.SIMILAR_API_RATE_LIMIT = ""  # this test asks many times
    celery_worker.start()
    record = saved_model()
    changelist = reverse("admin:recommender_embeddingmodel_changelist")
    listing = staff_client.get(changelist)
    assert listing.status_code == 200 and record.version.encode() in listing.content
    assert b"Train a new model" in listing.content

    response = staff_client.post(changelist, {"action": "activate", "_selected_action": [record.pk]}, follow=True)
    assert b"Activating" in response.content

    served, product = [], Product.objects.first()

    def switched():
        answer = client.get(reverse("api:similar", args=[product.pk]))
        assert answer.status_code == 200 and len(answer.json()["results"]) == 5
        served.append(answer.json()["backbone"])
        return served[-1] != lite2.name

    wait_until(switched, timeout=120, message="the worker activates the model", interval=0.5)
    record.refresh_from_db()
    assert record.status == EmbeddingModel.Status.ACTIVE
    space = active_backbone()
    assert served[-1] == space.name and set(served) <= {lite2.name, space.name}
    assert ImageEmbedding.objects.for_backbone(space).count() == 60, "complete before the switch"
    assert current_manifest(space).dimension == 256 and current_manifest(lite2).dimension == 1280


def test_validation_leaves_the_test_split_out_and_holds_back_products_of_its_own():
    from recommender.evaluation.split import in_test_split, in_validation_split
    from recommender.training import CatalogueData

    skus = [str(10000 + i) for i in range(400)]
    count = len(skus)
    test = np.array([in_test_split(sku) for sku in skus])
    data = CatalogueData(
        np.arange(count), skus, skus, np.zeros((count, 4)), np.zeros((count, 64)), {"sku": np.array(skus)}, test, skus
    )

    validation = data.for_validation()

    assert len(validation.skus) == count - test.sum() and not any(in_test_split(sku) for sku in validation.skus)
    assert validation.test.tolist() == [in_validation_split(sku) for sku in validation.skus]
    assert 0.08 < validation.test.mean() < 0.25, "about 15% of the others are held back"
    assert validation.labels["sku"].tolist() == validation.checksums == validation.skus, "rows stay aligned"


def test_labels_without_two_classes_to_learn_are_left_out():
    from recommender.training import CatalogueData, label_targets

    count = 30
    labels = {name: np.array(["x"] * count) for name in ("sub_category", "base_colour", "colour_family", "usage")}
    labels["article_type"] = np.array(["Shirts"] * 12 + ["Shorts"] * 12 + ["Rare"] * 3 + [""] * 3)
    labels["gender"] = np.array([""] * count)
    data = CatalogueData(
        np.arange(count),
        [""] * count,
        [""] * count,
        np.zeros((count, 4)),
        np.zeros((count, 64)),
        labels,
        np.zeros(count, bool),
        [str(row) for row in range(count)],
    )

    targets = label_targets(data, np.ones(count, bool))

    assert set(targets) == {"article_type"}, "one class, or none, is nothing to learn"
    ids, weights, classes = targets["article_type"]
    assert classes == ["Shirts", "Shorts"] and ids.tolist()[-6:] == [-1] * 6, "rare and unknown are ignored"
    assert label_precision(np.zeros((2, 1), int), np.array([0, 1]), np.array(["", ""]))["micro"] is None


@pytest.mark.django_db
def test_a_head_saved_before_weights_and_label_blocks_loads_as_it_was(settings):
    head = random_head()
    directory = settings.TRAINED_MODEL_DIR / "20250101-000000"
    directory.mkdir(parents=True)
    (w0, b0), (w1, b1) = head.layers
    kept = {"kept_mean": head.kept.mean, "kept_components": head.kept.components}
    np.savez(directory / HEAD_FILE, w0=w0, b0=b0, w1=w1, b1=b1, **kept)
    digest = hashlib.sha256((directory / HEAD_FILE).read_bytes()).hexdigest()
    manifest = {"version": "20250101-000000", "base": "efficientnet_lite2", "head_sha256": digest, "dimension": 256}
    (directory / "model.json").write_text(json.dumps(manifest))
    inputs = np.random.default_rng(2).normal(size=(3, 1344)).astype(np.float32)

    loaded = TrainedModel.load(directory).head

    learned = np.maximum(inputs @ w0 + b0, 0) @ w1 + b1
    learned /= np.linalg.norm(learned, axis=1, keepdims=True)
    expected = np.hstack([head.kept.apply(inputs[:, :1280]), learned]) / np.sqrt(2)
    assert loaded.learned_weight == 1.0 and loaded.label_blocks == () and loaded.dimension == 256
    assert np.allclose(loaded.apply(inputs), expected, atol=1e-5), "kept and learned halves of equal weight"
    with_lab_statistics = np.hstack([inputs, np.ones((3, LAB_STATISTICS), np.float32)])
    assert np.allclose(loaded.apply(with_lab_statistics), expected, atol=1e-5), "a head reads its own columns"


def test_label_blocks_bring_photos_of_one_predicted_kind_together_and_survive_saving(settings):
    from recommender.training import fit_label_blocks

    rng = np.random.default_rng(0)
    count = 80
    types, families = np.arange(count) % 2, (np.arange(count) // 2) % 2
    inputs = rng.normal(0, 0.1, (count, 1344)).astype(np.float32)
    inputs[:, 0] += np.where(types == 1, 1.0, -1.0)  # each label readable along an axis of its own
    inputs[:, 1] += np.where(families == 1, 1.0, -1.0)
    targets = {
        "article_type": (types, np.ones(2, np.float32), ["Shirts", "Shorts"]),
        "colour_family": (families, np.ones(2, np.float32), ["blue", "red"]),
    }
    view_rows = np.arange(10)

    blocks = fit_label_blocks(inputs, targets, np.arange(60), inputs[view_rows], view_rows)

    held_out = np.arange(60, count)
    type_block = blocks[0].apply(inputs[held_out]) / blocks[0].weight
    assert np.allclose((type_block**2).sum(axis=1), 1, atol=1e-5), "square roots of probabilities"
    assert (type_block.argmax(axis=1) == types[held_out]).all(), "two classes, each its own probability"
    agreement = type_block @ type_block.T
    alike = types[held_out][:, None] == types[held_out][None, :]
    assert agreement[alike].min() > 0.8 and agreement[~alike].max() < 0.5

    base = random_head()
    head = ProjectionHead(base.layers, base.kept, 0.7, blocks)
    assert head.dimension == 256 + 4
    loaded = save_model("20260101-000000", head, {"base": "efficientnet_lite2"}).head
    assert np.allclose(loaded.apply(inputs), head.apply(inputs), atol=1e-6)
    with_lab_statistics = np.hstack([inputs, np.ones((count, LAB_STATISTICS), np.float32)])
    assert np.allclose(loaded.apply(with_lab_statistics), head.apply(inputs), atol=1e-6), "blocks read their columns"
    assert [block.weight for block in loaded.label_blocks] == pytest.approx([block.weight for block in blocks])


def test_label_blocks_saved_before_they_named_their_classes_ignore_catalogue_labels(settings):
    from recommender.encoding.projection import LabelBlock

    rng = np.random.default_rng(3)
    block = LabelBlock(rng.normal(size=(1344, 3)).astype(np.float32), np.zeros(3, np.float32), 0.5)
    base = random_head()
    saved = save_model("20250601-000000", ProjectionHead(base.layers, base.kept, 0.5, (block,)), {"base": "x"})
    head_file = saved.directory / HEAD_FILE
    with np.load(head_file) as arrays:  # as written before the labels were recorded
        older = {name: arrays[name] for name in arrays.files if not name.endswith(("_label", "_classes", "_share"))}
    np.savez(head_file, **older)
    manifest = json.loads((saved.directory / "model.json").read_text())
    manifest["head_sha256"] = hashlib.sha256(head_file.read_bytes()).hexdigest()
    (saved.directory / "model.json").write_text(json.dumps(manifest))
    inputs = rng.normal(size=(2, 1344)).astype(np.float32)

    loaded = TrainedModel.load(saved.directory).head

    assert loaded.catalogue_label_share == 0 and loaded.label_blocks[0].classes == ()
    told = {"article_type": ["Shirts", "Shorts"]}
    assert np.allclose(loaded.apply(inputs, told), loaded.apply(inputs)), "vectors as that model made them"
    assert np.allclose(loaded.apply(inputs), saved.head.apply(inputs), atol=1e-6)


def test_catalogue_photos_carry_their_products_labels_halfway(settings):
    from recommender.training import fit_label_blocks

    rng = np.random.default_rng(1)
    types = np.arange(40) % 2
    inputs = rng.normal(0, 0.1, (40, 1359)).astype(np.float32)
    inputs[:, 0] += np.where(types == 1, 1.0, -1.0)
    targets = {"article_type": (types, np.ones(2, np.float32), ["Shirts", "Shorts"])}
    blocks = fit_label_blocks(inputs, targets, np.arange(40), inputs[:0], np.arange(0))
    base = random_head(inputs=1359)
    head = ProjectionHead(base.layers, base.kept, 0.5, blocks, catalogue_label_share=0.5)
    photos = inputs[:4]  # Shirts, Shorts, Shirts, Shorts by their look
    told = {"article_type": ["Shorts", "Shorts", "", "Jeans"], "colour_family": ["blue"] * 4}

    block = head.label_blocks[0]
    assert (block.label, block.classes) == ("article_type", ("Shirts", "Shorts"))
    predicted = (block.apply(photos) / block.weight) ** 2
    carried = (block.apply(photos, told["article_type"], 0.5) / block.weight) ** 2
    assert np.allclose(carried[:2], 0.5 * predicted[:2] + [[0, 0.5], [0, 0.5]], atol=1e-6), "halfway to the label"
    assert np.allclose(carried[2:], predicted[2:], atol=1e-6), "no label, or one it never learned: as predicted"
    # A shopper's photo (no labels) of a product labelled Shorts that looks like Shirts is nearer
    # that product's catalogue vector than it would be if the product's label were taken as predicted.
    catalogue, searched = head.apply(photos, told), head.apply(photos)
    assert catalogue[0] @ head.apply(inputs[1:2])[0] > searched[0] @ head.apply(inputs[1:2])[0]
    assert np.allclose(catalogue[2:], searched[2:], atol=1e-6)

    loaded = save_model("20260101-000000", head, {"base": "efficientnet_lite2"}).head
    assert loaded.catalogue_label_share == 0.5 and loaded.label_blocks[0].classes == ("Shirts", "Shorts")
    assert np.allclose(loaded.apply(photos, told), catalogue, atol=1e-6)
    with pytest.raises(ValueError, match="3 labels for 4 photos"):
        head.apply(photos, {"article_type": ["Shorts"] * 3})


def test_a_run_whose_worker_died_is_given_up_and_does_not_block_the_next(embedded_catalogue, settings):
    from datetime import timedelta

    from django.utils import timezone

    settings.EMBEDDING_TRAIN_MIN_PRODUCTS, settings.EMBEDDING_STALE_SECONDS = 50, 3600
    EmbeddingModel.objects.create(version="dead", base="efficientnet_lite2", status="training")
    EmbeddingModel.objects.create(version="half", base="efficientnet_lite2", status="activating", products=60)
    assert not training_due(), "both look busy while recent"

    EmbeddingModel.objects.update(updated_at=timezone.now() - timedelta(hours=2))
    assert not training_due(), "the half-activated model still counts as the newest (60 products)"

    dead, half = EmbeddingModel.objects.get(version="dead"), EmbeddingModel.objects.get(version="half")
    assert dead.status == "failed" and "stopped without finishing" in dead.error
    assert half.status == "ready" and "Activation stopped" in half.error
    EmbeddingModel.objects.filter(version="half").update(products=40)
    assert training_due(), "nothing is running any more"


@pytest.mark.django_db
def test_the_train_button_queues_training_and_says_so_when_redis_is_down(staff_client, redis_server):
    redis_server.flush()
    train = reverse("admin:recommender_train_embedding")

    response = staff_client.post(train, follow=True)

    assert b"Training queued" in response.content
    [message] = redis_server.client.lrange("training", 0, -1)
    assert json.loads(message)["headers"]["task"] == "recommender.tasks.train_embedding_task"

    redis_server.stop()
    try:
        response = staff_client.post(train, follow=True)
    finally:
        redis_server.start()
    assert response.status_code == 200 and b"The task queue is unreachable" in response.content


@pytest.mark.parametrize(
    "damage",
    [
        "manifest is a list",
        "head is not a zip",
        "head is truncated",
        "layers do not chain",
        "unknown base",
        "wrong input width",
    ],
)
@pytest.mark.django_db
def test_any_damage_to_the_active_model_leaves_the_site_on_the_frozen_backbone(damage, settings, lite2):
    import hashlib
    import io

    record = saved_model()
    EmbeddingModel.objects.filter(pk=record.pk).update(status="active")
    directory = settings.TRAINED_MODEL_DIR / record.version
    manifest = json.loads((directory / "model.json").read_text())

    def write_head(**arrays):
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        (directory / HEAD_FILE).write_bytes(buffer.getvalue())
        manifest["head_sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()

    if damage == "manifest is a list":
        manifest = []
    elif damage == "head is not a zip":
        (directory / HEAD_FILE).write_bytes(b"plain bytes")
        manifest["head_sha256"] = hashlib.sha256(b"plain bytes").hexdigest()
    elif damage == "head is truncated":
        data = (directory / HEAD_FILE).read_bytes()[:500]
        (directory / HEAD_FILE).write_bytes(data)
        manifest["head_sha256"] = hashlib.sha256(data).hexdigest()
    elif damage == "layers do not chain":
        write_head(w0=np.zeros((1344, 8)), b0=np.zeros(8), w1=np.zeros((9, 4)), b1=np.zeros(4))
    elif damage == "unknown base":
        manifest["base"] = "no_such_backbone"
    elif damage == "wrong input width":
        write_head(w0=np.zeros((10, 8)), b0=np.zeros(8))
        manifest.pop("dimension")
    (directory / "model.json").write_text(json.dumps(manifest))

    with pytest.raises(ModelArtifactError):
        active.load_trained_backbone(record.version)
    assert active_backbone() == lite2


@pytest.mark.django_db
def test_a_status_change_counts_as_progress_for_the_stale_check(settings):
    from datetime import timedelta

    from django.utils import timezone

    from recommender.trained_models import give_up_stale_runs

    settings.EMBEDDING_STALE_SECONDS = 3600
    record = EmbeddingModel.objects.create(version="old", base="efficientnet_lite2", status="ready")
    EmbeddingModel.objects.update(updated_at=timezone.now() - timedelta(days=1))  # trained yesterday

    record.mark(EmbeddingModel.Status.ACTIVATING, error="")  # activation starts now

    assert give_up_stale_runs() == 0 and EmbeddingModel.objects.get().status == "activating"


@pytest.mark.django_db
def test_a_relabelled_products_trained_vectors_are_made_again_with_its_new_label(indexed_catalogue, lite2):
    from recommender.embedding import embed_images
    from recommender.encoding.projection import LabelBlock
    from recommender.product_panel import photo_states
    from recommender.status import recommender_status
    from recommender.trained_models import project_catalogue

    types = sorted(set(Product.objects.values_list("article_type", flat=True)))
    width = 1280 + COLOUR_FEATURES
    unsure = np.zeros((width, len(types)), np.float32), np.zeros(len(types), np.float32)  # every class as likely
    block = LabelBlock(*unsure, 0.5, "article_type", tuple(types))
    base = random_head(inputs=width)
    save_model("20260101-000000", ProjectionHead(base.layers, base.kept, 0.5, (block,), 0.5), {"base": lite2.name})
    EmbeddingModel.objects.create(version="20260101-000000", base=lite2.name, status=EmbeddingModel.Status.READY)
    activate_model("20260101-000000")
    space = active_backbone()
    product = Product.objects.filter(article_type=types[0]).first()
    image_ids = list(product.images.values_list("pk", flat=True))

    def label_block(product) -> np.ndarray:
        vector = ImageEmbedding.objects.for_backbone(space).get(image=product.images.first()).vector
        return vector[-len(types) :]

    def stale(space) -> set[int]:  # what the sweep queues
        return set(ImageEmbedding.objects.missing_images(space).values_list("pk", flat=True))

    carried = label_block(product)
    # half of the probability on its own label: (1/C + 1) / 2 against (1/C) / 2 for the others
    assert carried.argmax() == 0 and carried[0] / carried[1] == pytest.approx(np.sqrt(1 + len(types)))
    assert stale(space) == set()

    product.article_type = types[1]
    product.save()

    assert stale(space) == set(image_ids) and stale(lite2) == set(), "a backbone's own vectors know no labels"
    assert label_block(product).argmax() == 0, "the old vector answers until the new one is made"
    assert {photo.state for photo in photo_states(product, space)} == {"pending"}, "staff see it coming"
    status = {row.backbone: row for row in recommender_status(space)}
    assert (status[space.name].embedded, status[space.name].pending) == (60 - len(image_ids), len(image_ids))
    embed_images(image_ids, space)  # what the sweep's task does, from the photos
    assert label_block(product).argmax() == 1 and stale(space) == set()
    from_pixels = label_block(product)
    project_catalogue(space)  # activation's way, from the frozen vectors: the same vectors
    assert np.allclose(label_block(product), from_pixels, atol=1e-4)

    # However the labels change (a bulk update here), only those the vectors carry count.
    other = Product.objects.exclude(pk=product.pk).first()
    Product.objects.filter(pk=other.pk).update(gender="Unisex", usage="Sports")
    assert stale(space) == set()
    Product.objects.filter(pk=other.pk).update(base_colour="")
    assert stale(space) == set(other.images.values_list("pk", flat=True))
    embed_images(list(stale(space)), space)
    assert stale(space) == set(), "an empty label is recorded as the database spells it"


@pytest.mark.django_db
def test_a_new_photo_gets_its_trained_vector_from_its_frozen_one_without_a_second_backbone_pass(
    indexed_catalogue, lite2, monkeypatch
):
    from catalog.models import ProductImage
    from recommender.encoding.embedder import ProjectedEmbedder
    from recommender.trained_models import embed_in_spaces

    record = saved_model()
    activate_model(record.version)
    space = active_backbone()
    photo = ProductImage.objects.first()
    ImageEmbedding.objects.filter(image=photo).delete()  # as if just added
    monkeypatch.setattr(ProjectedEmbedder, "_project", lambda *args, **kwargs: pytest.fail("second backbone pass"))

    report = embed_in_spaces([photo.pk], embedding_spaces())

    assert (report.embedded, report.failed, report.skipped) == (2, 0, 0)
    frozen = ImageEmbedding.objects.for_backbone(lite2).get(image=photo).vector
    trained = ImageEmbedding.objects.for_backbone(space).get(image=photo)
    assert trained.dimension == 256 and trained.image_checksum == photo.checksum
    inputs = head_inputs(frozen[None], colour_features_of(photo, lite2))
    assert np.allclose(trained.vector, space.trained.head.apply(inputs)[0], atol=1e-6)
    assert embed_in_spaces([photo.pk], embedding_spaces()).skipped == 2, "nothing to do twice"


def colour_features_of(photo, backbone) -> np.ndarray:
    from recommender.encoding.preprocessing import file_pixels

    with photo.image.open("rb") as file:
        return colour_features(file_pixels(file, backbone.input_size)[None])
