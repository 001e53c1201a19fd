"""Training an embedding on the catalogue's own labels (`manage.py train_embedding` and its task).

The backbone stays frozen: the head learns from the vectors already stored for every catalogue photo
and from colour features of the photos, so retraining never runs the backbone over the catalogue
again. It learns several labels at once (article type, sub category, base colour and its family,
gender, usage; classes with fewer than MIN_CLASS_SIZE training products are ignored, the others
weighted by 1/sqrt(size) so that small classes count) and an instance term that pulls a shopper-like
photo of a product (shopper_photos.py, cropped by the garment locator as a search would) towards
that product's catalogue photo. Beside the learned part, the vector keeps the backbone vector's
principal components (see projection.py), so it still means "looks like this very item", and
carries label blocks: the article type and colour family a logistic regression on the same inputs
predicts (moved halfway towards the product's own labels in catalogue photos' vectors). The
backbone's vectors of the shopper-like photos are kept in a feature cache (EMBEDDING_FEATURE_DIR),
as are the photos' colour features.

Products of the fixed test split are never trained on; the model's evaluation (frozen and trained
side by side) is on them, and is stored with the model. Training settings are chosen with
`train_embedding --validate` (validate_embedding), which leaves the test split out altogether and
holds out a validation split of the other products instead.
"""

import hashlib
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from django.conf import settings
from django.core.files.storage import default_storage
from django.utils import timezone
from PIL import Image
from tqdm import tqdm

from .encoding import garment
from .encoding.backbones import Backbone
from .encoding.embedder import get_embedder
from .encoding.preprocessing import image_pixels, read_image
from .encoding.projection import (
    COLOUR_FEATURES,
    COLOUR_RECIPE,
    BackboneProjection,
    LabelBlock,
    ProjectionHead,
    TrainedModel,
    colour_features,
    head_inputs,
    save_model,
)
from .evaluation.metrics import CatalogueVectors, label_precision, photo_search_scores, query_neighbours
from .evaluation.shopper_photos import shopper_photo
from .evaluation.split import held_out, in_test_split, in_validation_split
from .labels import PRODUCT_LABEL_LOOKUPS, product_labels
from .models import EmbeddingModel, ImageEmbedding

logger = logging.getLogger(__name__)

KEPT_COMPONENTS = 192  # principal components of the backbone vector kept in the trained one
LEARNED_DIMENSION = 64
# The learned part's length against the kept part's, and the label blocks' (weight, inverse L2
# strength of their classifier), chosen on a validation split of the training products, never the
# test split (README, "Trained on the catalogue"). A heavier learned part lets labels outvote the
# look of the very item: the exact item of a shopper photo drops out of the top 5 more often.
LEARNED_WEIGHT = 0.5
LABEL_BLOCKS = {"article_type": (0.5, 30.0), "colour_family": (0.4, 10.0)}
# How far a catalogue photo's label blocks move towards its product's own labels. Halfway lifted
# type, colour and colour family P@5 of photos searched for, with exact-item recall unchanged, on
# two seeds of the validation split; all the way cost recall (a mislabelled product leaves its look).
CATALOGUE_LABEL_SHARE = 0.5
NEVER_PREDICTED = -50.0  # the logit of a class no training photo has
HIDDEN = 512
MIN_CLASS_SIZE = 5
LABELS = ("article_type", "sub_category", "base_colour", "colour_family", "gender", "usage")
REPORTED = {"article type": "article_type", "sub category": "sub_category", "colour": "base_colour"}
REPORTED_FAMILY = "colour family"
AUGMENTATION = "shopper2"  # names the recipe of the cached shopper-like views; change it with the recipe
CLUTTER_PHOTOS = 60
PHOTO_THREADS = 3
INSTANCE_WEIGHT = 1.0


@dataclass
class CatalogueData:
    """Each product's first embedded photo: its backbone vector, colour features and labels."""

    product_ids: np.ndarray
    checksums: list[str]
    names: list[str]
    vectors: np.ndarray
    colours: np.ndarray
    labels: dict[str, np.ndarray]
    test: np.ndarray  # held out from training: the fixed test split (the validation split in for_validation)
    skus: list[str]

    @property
    def inputs(self) -> np.ndarray:
        return head_inputs(self.vectors, self.colours)

    def for_validation(self) -> "CatalogueData":
        """The products outside the test split, the validation split held out instead."""
        keep = np.nonzero(~self.test)[0]
        skus = [self.skus[row] for row in keep]
        return CatalogueData(
            self.product_ids[keep],
            [self.checksums[row] for row in keep],
            [self.names[row] for row in keep],
            self.vectors[keep],
            self.colours[keep],
            {name: values[keep] for name, values in self.labels.items()},
            np.array([in_validation_split(sku) for sku in skus]),
            skus,
        )


class FeatureCache:
    """Arrays computed from a photo (by its checksum) with a frozen backbone, kept on disk."""

    def __init__(self, base: Backbone):
        self.directory = Path(settings.EMBEDDING_FEATURE_DIR) / base.name

    def path(self, checksum: str, kind: str) -> Path:
        return self.directory / checksum[:2] / f"{checksum}-{kind}.npy"

    def get(self, checksum: str, kind: str) -> np.ndarray | None:
        try:
            return np.load(self.path(checksum, kind))
        except (OSError, ValueError):
            return None

    def colour_features(self, checksum: str, name: str, size: int) -> np.ndarray:
        """The colour features of a stored photo (`name`), prepared at `size` like the backbone's input."""
        features = self.get(checksum, COLOUR_RECIPE)
        if features is None:
            features = colour_features(image_pixels(_open_photo(name, size), size)[None])[0]
            self.put(checksum, COLOUR_RECIPE, features)
        return features

    def put(self, checksum: str, kind: str, array: np.ndarray) -> None:
        path = self.path(checksum, kind)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".partial.npy")
        np.save(temporary, array)
        temporary.replace(path)


def _open_photo(name: str, size: int = 512) -> Image.Image:
    with default_storage.open(name) as file:
        return read_image(file, size)


def catalogue_data(base: Backbone, cache: FeatureCache, progress: bool = False) -> CatalogueData:
    rows = (
        ImageEmbedding.objects.for_backbone(base)
        .done()
        .order_by("image__product_id", "image__position", "image_id")
        .values_list(
            "image__product_id",
            "image_checksum",
            "image__image",
            "vector",
            "image__product__sku",
            *PRODUCT_LABEL_LOOKUPS,
        )
    )
    seen, records = set(), []
    for row in rows.iterator(chunk_size=2000):
        if row[0] not in seen:
            seen.add(row[0])
            records.append(row)
    if len(records) < 20:
        raise ValueError(f"Only {len(records)} products have a {base.name} embedding; embed the catalogue first.")
    colours = [
        cache.colour_features(checksum, name, base.input_size)
        for _, checksum, name, *_ in tqdm(records, desc="Colour features", unit="photo", disable=not progress)
    ]
    columns = list(zip(*records, strict=True))
    labels = product_labels(record[5:] for record in records)
    return CatalogueData(
        product_ids=np.array(columns[0]),
        checksums=list(columns[1]),
        names=list(columns[2]),
        vectors=np.vstack(columns[3]).astype(np.float32),
        colours=np.stack(colours).astype(np.float32),
        labels=labels,
        test=np.array([in_test_split(sku) for sku in columns[4]]),
        skus=list(columns[4]),
    )


def shopper_view_inputs(
    data: CatalogueData, rows: list[int], base: Backbone, cache: FeatureCache, seed: int, progress: bool = False
) -> np.ndarray:
    """Head inputs of one shopper-like photo of each of `rows`' products, made and cropped the way a
    photo search crops it; computed once per photo, recipe and locator, then read from the cache."""
    kind = shopper_view_kind(seed)
    results: dict[int, np.ndarray] = {}
    missing = []
    for row in rows:
        cached = cache.get(data.checksums[row], kind)
        if cached is None:
            missing.append(row)
        else:
            results[row] = cached
    if missing:
        clutter = [_open_photo(data.names[row]) for row in clutter_rows(data, seed)]
        embedder, locator = get_embedder(base), garment.get_locator()
        recipe = f"{AUGMENTATION}-{seed}"  # the same photos whichever locator crops them

        def photo(row: int) -> Image.Image:
            photo_seed = int.from_bytes(hashlib.sha256(f"{recipe}:{data.checksums[row]}".encode()).digest()[:4])
            others = random.Random(photo_seed).sample(clutter, min(3, len(clutter)))
            return shopper_photo(_open_photo(data.names[row]), photo_seed, others).image

        # Pillow releases the GIL while it draws, so threads make the photos about twice as fast here.
        with ThreadPoolExecutor(PHOTO_THREADS) as painters:
            for start in tqdm(range(0, len(missing), 32), desc="Shopper-like views", disable=not progress):
                chunk = missing[start : start + 32]
                shots = painters.map(photo, chunk)
                pixels = np.stack([image_pixels(locator.crop_to_garment(shot), base.input_size) for shot in shots])
                inputs = head_inputs(embedder.embed_pixels(pixels), colour_features(pixels))
                for row, row_inputs in zip(chunk, inputs, strict=True):
                    cache.put(data.checksums[row], kind, row_inputs)
                    results[row] = row_inputs
    return np.stack([results[row] for row in rows])


def shopper_view_kind(seed: int) -> str:
    """What the shopper-like views of a seed are cached as: recipes (photo, colour features), locator, seed."""
    return f"{AUGMENTATION}-{COLOUR_RECIPE}-{garment.get_locator().fingerprint}-{seed}"


def clutter_rows(data: CatalogueData, seed: int) -> list[int]:
    """The products whose photos clutter the shopper-like views of a seed: CLUTTER_PHOTOS of those
    in neither held-out split, picked by a hash of their SKU, so a cached view is the same whichever
    run made it first, and no held-out product is ever seen in a training photo."""
    kept = [row for row, sku in enumerate(data.skus) if not held_out(sku)]

    def draw(row: int) -> bytes:
        return hashlib.sha256(f"clutter-{seed}:{data.skus[row]}".encode()).digest()

    return sorted(kept, key=draw)[:CLUTTER_PHOTOS]


@dataclass
class TrainingReport:
    model: TrainedModel
    products: int
    trained_on: int
    seconds: dict[str, float] = field(default_factory=dict)
    evaluation: dict = field(default_factory=dict)


def label_targets(data: CatalogueData, train: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray, list[str]]]:
    """Per label: class index per product (-1: unknown or too rare), per-class weight, class names.
    A label with fewer than two classes to tell apart (a catalogue without colours, say) is left out."""
    targets = {}
    for name in LABELS:
        values = data.labels[name]
        classes, counts = np.unique(values[train & (values != "")], return_counts=True)
        kept = [label for label, count in zip(classes, counts, strict=True) if count >= MIN_CLASS_SIZE]
        if len(kept) < 2:
            continue
        index = {label: i for i, label in enumerate(kept)}
        ids = np.array([index.get(value, -1) for value in values])
        sizes = np.array([np.sum(ids[train] == i) for i in range(len(kept))], dtype=np.float32)
        weights = 1 / np.sqrt(np.maximum(sizes, 1))
        weights /= (weights[ids[train][ids[train] >= 0]]).mean()
        targets[name] = (ids, weights.astype(np.float32), kept)
    return targets


def fit_head(
    inputs: np.ndarray,
    targets: dict,
    train_rows: np.ndarray,
    views: np.ndarray,
    view_rows: np.ndarray,
    *,
    epochs: int,
    seed: int,
    instance_weight: float = INSTANCE_WEIGHT,
    progress: bool = False,
) -> ProjectionHead:
    """Multi-label classification on the head's unit vectors (cosine classifiers) for catalogue photos
    and their shopper-like views, plus an InfoNCE term between each view and its catalogue photo;
    then the kept components and the label blocks."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    hidden = keras.layers.Dense(HIDDEN, activation="relu")
    dropout = keras.layers.Dropout(0.2)
    project = keras.layers.Dense(LEARNED_DIMENSION)
    classifiers = {name: keras.layers.Dense(len(classes), use_bias=False) for name, (_, _, classes) in targets.items()}
    optimizer = keras.optimizers.Adam(1e-3)
    scale, temperature = 16.0, 0.1

    def embed(x, training):
        return tf.math.l2_normalize(project(dropout(hidden(x), training=training)), axis=1)

    label_tensors = {name: (tf.constant(ids), tf.constant(weights)) for name, (ids, weights, _) in targets.items()}

    def label_loss(z, rows):
        total = 0.0
        for name, (ids, weights) in label_tensors.items():
            y = tf.gather(ids, rows)
            known = y >= 0
            logits = classifiers[name](z * scale)
            losses = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.maximum(y, 0), logits)
            w = tf.where(known, tf.gather(weights, tf.maximum(y, 0)), 0.0)
            total += tf.reduce_sum(losses * w) / tf.maximum(tf.reduce_sum(tf.cast(known, tf.float32)), 1.0)
        return total

    inputs_tensor = tf.constant(inputs)
    backbone_dimension = inputs.shape[1] - COLOUR_FEATURES
    views_tensor = tf.constant(views)
    view_rows_tensor = tf.constant(view_rows)

    @tf.function
    def step(batch_rows, batch_views):
        with tf.GradientTape() as tape:
            z = embed(tf.gather(inputs_tensor, batch_rows), True)
            loss = label_loss(z, batch_rows)
            pair_rows = tf.gather(view_rows_tensor, batch_views)
            z_view = embed(tf.gather(views_tensor, batch_views), True)
            z_photo = embed(tf.gather(inputs_tensor, pair_rows), True)
            loss += label_loss(z_view, pair_rows)
            # Each view must pick its own catalogue photo among the pairs' and the batch's photos.
            similarity = tf.matmul(z_view, tf.concat([z_photo, z], axis=0), transpose_b=True) / temperature
            labels = tf.range(tf.shape(z_view)[0])
            loss += instance_weight * tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, similarity))
        variables = hidden.trainable_variables + project.trainable_variables
        variables += [v for layer in classifiers.values() for v in layer.trainable_variables]
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    rng = np.random.default_rng(seed)
    batch, view_batch = 256, min(128, len(view_rows))
    steps = max(1, len(train_rows) // batch)
    for _ in tqdm(range(epochs), desc="Training", unit="epoch", disable=not progress):
        order = rng.permutation(train_rows)
        for index in range(steps):
            rows = order[index * batch : (index + 1) * batch]
            step(tf.constant(rows), tf.constant(rng.choice(len(view_rows), view_batch, replace=False)))
    learned = [(hidden.kernel.numpy(), hidden.bias.numpy()), (project.kernel.numpy(), project.bias.numpy())]
    kept = principal_components(inputs[train_rows, :backbone_dimension], KEPT_COMPONENTS)
    blocks = fit_label_blocks(inputs, targets, train_rows, views, view_rows)
    return ProjectionHead(learned, kept, LEARNED_WEIGHT, blocks, CATALOGUE_LABEL_SHARE)


def fit_label_blocks(
    inputs: np.ndarray, targets: dict, train_rows: np.ndarray, views: np.ndarray, view_rows: np.ndarray
) -> tuple[LabelBlock, ...]:
    """A multinomial logistic regression per LABEL_BLOCKS label, on catalogue photos and their
    shopper-like views (classes as in `targets`; unknown or rare ones left out). A class none of
    these photos has gets a column of its own that is never predicted."""
    from sklearn.linear_model import LogisticRegression

    blocks = []
    x = np.vstack([inputs[train_rows], views])
    for name, (weight, inverse_strength) in LABEL_BLOCKS.items():
        if name not in targets:
            continue
        ids, _, classes = targets[name]
        y = np.concatenate([ids[train_rows], ids[view_rows]])
        known = y >= 0
        classifier = LogisticRegression(C=inverse_strength, max_iter=1000).fit(x[known], y[known])
        coefficients, intercepts = classifier.coef_, classifier.intercept_
        if len(classifier.classes_) == 2:  # one logit z for two classes: softmax(-z/2, z/2) is the same sigmoid
            coefficients = np.vstack([-coefficients, coefficients]) / 2
            intercepts = np.hstack([-intercepts, intercepts]) / 2
        weights = np.zeros((x.shape[1], len(classes)), np.float32)
        bias = np.full(len(classes), NEVER_PREDICTED, np.float32)
        weights[:, classifier.classes_], bias[classifier.classes_] = coefficients.T, intercepts
        blocks.append(LabelBlock(weights, bias, weight, name, tuple(classes)))
    return tuple(blocks)


def principal_components(vectors: np.ndarray, count: int) -> BackboneProjection:
    mean = vectors.mean(axis=0)
    _, _, components = np.linalg.svd(vectors - mean, full_matrices=False)
    return BackboneProjection(mean.astype(np.float32), components[:count].T.astype(np.float32))


def evaluate_side_by_side(
    data: CatalogueData, head: ProjectionHead, test_views: np.ndarray, test_rows: np.ndarray, k: int = 5
) -> dict:
    """The frozen and the trained model on the held-out products: P@k (micro and macro) of each
    held-out product's photo searched for among all of `data`'s other products, and exact-item
    recall of shopper-like photos of them. The catalogue's vectors are made as the site makes them
    (with their products' labels); a searched photo knows no label, like a shopper's."""
    frozen_views = test_views[:, : data.vectors.shape[1]]
    frozen_views = frozen_views / np.linalg.norm(frozen_views, axis=1, keepdims=True)
    queries = np.nonzero(data.test)[0]
    spaces = {
        "frozen": (data.vectors, data.vectors[queries], frozen_views),
        "trained": (head.apply(data.inputs, data.labels), head.apply(data.inputs[queries]), head.apply(test_views)),
    }
    report = {"k": k, "test_products": len(queries), "shopper_photos": len(test_rows)}
    for space, (vectors, query_vectors, views) in spaces.items():
        neighbours = query_neighbours(vectors, queries, k, query_vectors)
        scores = {label: label_precision(neighbours, queries, data.labels[field]) for label, field in REPORTED.items()}
        scores[REPORTED_FAMILY] = label_precision(neighbours, queries, data.labels["colour_family"])
        catalogue = CatalogueVectors(
            data.product_ids, vectors, vectors, np.arange(len(vectors)), {"article type": data.labels["article_type"]}
        )
        scores["shopper photos"] = photo_search_scores(views, test_rows, catalogue, k)
        report[space] = scores
    return report


def training_rows(data: CatalogueData, shopper_views: int, test_photos: int, seed: int):
    """Products to train on, those of them trained with a shopper-like photo, and the test products
    whose shopper-like photos are evaluated: the same for the same catalogue and seed."""
    rng = random.Random(seed)
    train_rows = np.nonzero(~data.test)[0]
    view_rows = np.array(sorted(rng.sample(list(train_rows), min(shopper_views, len(train_rows)))), dtype=np.int64)
    test_rows = np.nonzero(data.test)[0]
    test_rows = np.array(sorted(rng.sample(list(test_rows), min(test_photos, len(test_rows)))), dtype=np.int64)
    return train_rows, view_rows, test_rows


def evaluate_trained(model: TrainedModel, base: Backbone, progress: bool = False) -> dict:
    """A saved model next to the frozen backbone, on the test split of the catalogue as it is now
    (shopper-like photos of the same test products as at training time, from the feature cache)."""
    cache = FeatureCache(base)
    data = catalogue_data(base, cache, progress)
    training = model.manifest["training"]
    _, _, test_rows = training_rows(data, training["shopper_views"], training["test_photos"], training["seed"])
    test_views = shopper_view_inputs(data, list(test_rows), base, cache, seed=1, progress=progress)
    return evaluate_side_by_side(data, model.head, test_views, test_rows)


def data_fingerprint(data: CatalogueData, train: np.ndarray) -> str:
    digest = hashlib.sha256()
    for row in np.nonzero(train)[0]:
        labels = "|".join(data.labels[name][row] for name in LABELS)
        digest.update(f"{data.product_ids[row]}:{data.checksums[row]}:{labels}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class TrainingSettings:
    """How a head is trained and evaluated; the defaults are what beat and admin train with."""

    epochs: int = 40
    # Training products trained with a shopper-like photo of them: all of a catalogue up to this size
    # (on the validation split, every training product's photo rather than 2,000 lifted recall@5 and
    # type P@5 of shopper photos on two seeds); each photo costs ~0.07 s the first time.
    shopper_views: int = 8000
    test_photos: int = 2000  # held-out products whose shopper-like photo is evaluated
    seed: int = 0


def fit_and_evaluate(
    data: CatalogueData, base: Backbone, cache: FeatureCache, training: TrainingSettings, progress: bool
) -> tuple[ProjectionHead, dict, dict, dict[str, float]]:
    """Train a head on `data`'s products that are not held out, and evaluate it on those that are:
    the head, its label targets, the evaluation and the seconds each stage took."""
    started = time.monotonic()
    train_rows, view_rows, test_rows = training_rows(data, training.shopper_views, training.test_photos, training.seed)
    views = shopper_view_inputs(data, list(view_rows), base, cache, seed=0, progress=progress)
    test_views = shopper_view_inputs(data, list(test_rows), base, cache, seed=1, progress=progress)
    seconds = {"shopper views": time.monotonic() - started}
    targets = label_targets(data, ~data.test)
    head = fit_head(
        data.inputs,
        targets,
        train_rows,
        views,
        view_rows,
        epochs=training.epochs,
        seed=training.seed,
        progress=progress,
    )
    seconds["training"] = time.monotonic() - started - seconds["shopper views"]
    return head, targets, evaluate_side_by_side(data, head, test_views, test_rows), seconds


def validate_embedding(base: Backbone, training: TrainingSettings = TrainingSettings(), progress: bool = False) -> dict:
    """Train and evaluate as train_embedding does, without the test split's products at all and with
    the validation split held out instead; nothing is saved. This is where training settings
    (LEARNED_WEIGHT, LABEL_BLOCKS, ...) are chosen, so that the test split stays unseen."""
    cache = FeatureCache(base)
    data = catalogue_data(base, cache, progress).for_validation()
    _, _, evaluation, _ = fit_and_evaluate(data, base, cache, training, progress)
    return {**evaluation, "split": "validation"}


def train_embedding(
    base: Backbone, training: TrainingSettings = TrainingSettings(), progress: bool = False
) -> TrainingReport:
    """Train a head on the catalogue's products outside the test split, evaluate it, save it (and
    record it, ready to activate)."""
    timings, started = {}, time.monotonic()
    version = timezone.now().strftime("%Y%m%d-%H%M%S")
    record = EmbeddingModel.objects.create(version=version, base=base.name)
    try:
        cache = FeatureCache(base)
        data = catalogue_data(base, cache, progress)
        train = ~data.test
        timings["features"] = time.monotonic() - started
        head, targets, evaluation, seconds = fit_and_evaluate(data, base, cache, training, progress)
        timings.update(seconds)
        manifest = {
            "base": base.name,
            "inputs": f"backbone unit vector + colour features ({COLOUR_RECIPE})",
            "labels": {name: classes for name, (_, _, classes) in targets.items()},
            "products": len(data.product_ids),
            "trained_on": int(train.sum()),
            "fingerprint": data_fingerprint(data, train),
            "training": {
                **asdict(training),
                "kept_components": KEPT_COMPONENTS,
                "learned_dimension": LEARNED_DIMENSION,
                "learned_weight": LEARNED_WEIGHT,
                "label_blocks": {name: weight for name, (weight, _) in LABEL_BLOCKS.items() if name in targets},
                "catalogue_label_share": CATALOGUE_LABEL_SHARE,
                "seconds": timings,
            },
            "evaluation": evaluation,
            "created": timezone.now().isoformat(),
        }
        model = save_model(version, head, manifest)
    except BaseException as exc:
        record.mark(EmbeddingModel.Status.FAILED, error=f"{type(exc).__name__}: {exc}")
        raise
    timings["total"] = time.monotonic() - started
    record.mark(
        EmbeddingModel.Status.READY,
        products=len(data.product_ids),
        fingerprint=manifest["fingerprint"],
        metrics={**evaluation, "seconds": timings},
    )
    return TrainingReport(model, len(data.product_ids), int(train.sum()), timings, evaluation)
