"""Trained embeddings: a projection head, trained on the store's own catalogue, on top of a frozen
backbone's features.

The head's input is what the frozen backbone already gives (its unit vector, the one stored for
every catalogue photo) and the colour of the product's pixels (ImageNet features barely see colour):
a histogram and CIELAB statistics. Its output is one unit vector of three parts: kept (the backbone
vector's 192 principal components, which keep "this very item"), learned (a small MLP trained on the
catalogue's labels, weighted against the kept part by `learned_weight`), and label blocks (the
square roots of a linear classifier's probabilities for article type and colour family, so that
products predicted to share a label come closer). A catalogue photo's blocks are also told its
product's own labels, which staff gave it, and move halfway towards them: a shopper's photo, which
has only the prediction, then finds products that are of its predicted kind rather than products
predicted to be. It runs in numpy, so a trained model costs a photo search next to nothing beyond
the backbone.

A trained model is a directory under TRAINED_MODEL_DIR/<version>/: `head.npz` (the
weights) and `model.json` (the manifest: the backbone it needs, the label maps, the metrics of its
evaluation, a fingerprint of the data it saw, and the head file's SHA-256, checked on load).
"""

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from django.conf import settings
from PIL import Image, ImageCms

HEAD_FILE = "head.npz"
MANIFEST_KEYS = ("version", "base", "head_sha256")
MANIFEST_FILE = "model.json"
HISTOGRAM_BINS = 4  # per channel: 64 colour cells
HISTOGRAM_CELLS = HISTOGRAM_BINS**3
LAB_PERCENTILES = (10, 50, 90)
LAB_STATISTICS = 3 * (2 + len(LAB_PERCENTILES))
COLOUR_FEATURES = HISTOGRAM_CELLS + LAB_STATISTICS
COLOUR_LAYOUTS = (HISTOGRAM_CELLS, COLOUR_FEATURES)  # what heads were trained on: the histogram, then all
COLOUR_RECIPE = "cells64-lab15"  # names what colour_features computes (in caches); change it with the code
WHITE_LEVEL = 235  # lighter than this in every channel is background (as catalogue photos are shot)
# Without LittleCMS's one-pixel cache a transform is safe to share between threads.
_SRGB_TO_LAB = ImageCms.buildTransform(
    ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB", flags=ImageCms.Flags.NOCACHE
)


class ModelArtifactError(Exception):
    """A trained model's files are missing, damaged, or not what its manifest says."""


def colour_features(pixels: np.ndarray) -> np.ndarray:
    """(n, size, size, 3) uint8 -> (n, COLOUR_FEATURES) float32: of the product's pixels (those not
    white), the share in each of 4 x 4 x 4 colour cells, square-rooted so that small patches still
    count, then their CIELAB mean, spread and percentiles, which tell near colours apart (navy from
    black, beige from white) where the cells are coarse."""
    rows = []
    for image in pixels:
        product = _product(image)
        red, green, blue = (image[..., channel] // (256 // HISTOGRAM_BINS) for channel in range(3))
        cells = (red.astype(np.uint16) * HISTOGRAM_BINS + green) * HISTOGRAM_BINS + blue  # on planes: 8x faster
        counts = np.bincount(cells[product], minlength=HISTOGRAM_CELLS).astype(np.float32)
        sample, sampled = image[::2, ::2], product[::2, ::2]  # every fourth pixel: the same statistics, 4x faster
        if not sampled.any():  # a product too small to sample
            sample, sampled = image, product
        lab = _lab(np.ascontiguousarray(sample))[sampled] / 100
        statistics = [lab.mean(axis=0), lab.std(axis=0), *np.percentile(lab, LAB_PERCENTILES, axis=0)]
        rows.append(np.concatenate([np.sqrt(counts / counts.sum()), *statistics]))
    return np.stack(rows).astype(np.float32) if rows else np.zeros((0, COLOUR_FEATURES), np.float32)


def _product(image: np.ndarray) -> np.ndarray:
    """Which pixels of an (h, w, 3) image are the product's: those not white, or all of a photo of
    nothing but white (its own colour is white)."""
    product = np.minimum(np.minimum(image[..., 0], image[..., 1]), image[..., 2]) < WHITE_LEVEL
    return product if product.sum() >= 16 else np.ones(product.shape, bool)


def _lab(image: np.ndarray) -> np.ndarray:
    """An sRGB uint8 image in CIELAB (L 0-100, a and b about -128-127)."""
    encoded = np.asarray(ImageCms.applyTransform(Image.fromarray(image), _SRGB_TO_LAB))
    return np.dstack([encoded[..., 0] * (100 / 255), encoded[..., 1:].view(np.int8)]).astype(np.float32)


def head_inputs(backbone_vectors: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """What the head takes: the backbone's unit vectors beside the photos' colour features. New
    features are only ever appended, and a head reads the first columns, those it was trained on (a
    head trained before the CIELAB statistics takes the backbone vector and the histogram)."""
    return np.hstack([np.asarray(backbone_vectors, np.float32), np.asarray(colours, np.float32)])


@dataclass(frozen=True)
class BackboneProjection:
    """A fixed linear map of the backbone's unit vector (its principal components over the training
    photos): the part of a trained vector that keeps the frozen backbone's sense of "this very item"."""

    mean: np.ndarray  # (backbone dimension,)
    components: np.ndarray  # (backbone dimension, dimension)

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        return _unit_rows((np.asarray(vectors, np.float32) - self.mean) @ self.components)


@dataclass(frozen=True)
class LabelBlock:
    """A linear classifier of one label on the head's inputs. Its block of the vector is the square
    root of its class probabilities times `weight`: two photos' blocks multiply to how much their
    predicted labels agree (the Bhattacharyya coefficient), so it pulls together products of one
    kind without overruling the look of the very item.

    A catalogue photo's product has a label already (staff gave it one): its probabilities may be
    moved towards that class (see ProjectionHead), so that a photo searched for finds products that
    are of its predicted kind, not only predicted to be."""

    weights: np.ndarray  # (inputs, classes)
    bias: np.ndarray  # (classes,)
    weight: float
    label: str = ""  # the catalogue field it predicts ("" in heads saved before it was recorded)
    classes: tuple[str, ...] = ()  # that field's value of each column

    @property
    def dimension(self) -> int:
        return self.weights.shape[1]

    def apply(self, inputs: np.ndarray, known: Sequence[str] | None = None, share: float = 0.0) -> np.ndarray:
        logits = np.asarray(inputs, np.float32)[:, : self.weights.shape[0]] @ self.weights + self.bias
        probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        if known is not None and len(known) != len(probabilities):
            raise ValueError(f"{len(known)} labels for {len(probabilities)} photos")
        if known is not None and share > 0 and self.classes:
            columns = {name: column for column, name in enumerate(self.classes)}
            rows = [(row, columns[value]) for row, value in enumerate(known) if value in columns]
            if rows:
                rows, labelled = np.array(rows).T
                probabilities[rows] *= 1 - share
                probabilities[rows, labelled] += share
        return self.weight * np.sqrt(probabilities)


@dataclass(frozen=True)
class ProjectionHead:
    """Dense layers with ReLU between them (the learned part, of length `learned_weight`) beside a
    BackboneProjection of the backbone's vector (the kept part, of unit length) and LabelBlocks;
    the output is L2-normalised."""

    layers: list[tuple[np.ndarray, np.ndarray]]  # (weights (in, out), bias (out,)) per layer
    kept: BackboneProjection | None = None
    learned_weight: float = 1.0
    label_blocks: tuple[LabelBlock, ...] = ()
    # How far a catalogue photo's label blocks move towards its product's own labels (0: not at all).
    catalogue_label_share: float = 0.0

    @property
    def dimension(self) -> int:
        kept = self.kept.components.shape[1] if self.kept else 0
        return kept + self.layers[-1][0].shape[1] + sum(block.dimension for block in self.label_blocks)

    @property
    def input_dimension(self) -> int:
        return self.layers[0][0].shape[0]

    @property
    def carries_catalogue_labels(self) -> bool:
        """Whether a catalogue photo's vector depends on its product's labels."""
        return self.catalogue_label_share > 0 and any(block.classes for block in self.label_blocks)

    def apply(self, inputs: np.ndarray, labels: Mapping[str, Sequence[str]] | None = None) -> np.ndarray:
        """The vectors of photos; with `labels` (field -> each row's product's value, "" for none),
        of catalogue photos whose products have those labels."""
        x = np.asarray(inputs, np.float32)[:, : self.input_dimension]
        for index, (weights, bias) in enumerate(self.layers):
            x = x @ weights + bias
            if index < len(self.layers) - 1:
                x = np.maximum(x, 0)
        parts = [self.learned_weight * _unit_rows(x)]
        if self.kept is not None:
            parts.insert(0, self.kept.apply(inputs[:, : self.kept.mean.shape[0]]))
        labels, share = labels or {}, self.catalogue_label_share
        parts += [block.apply(inputs, labels.get(block.label), share) for block in self.label_blocks]
        return _unit_rows(np.hstack(parts))


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class TrainedModel:
    """A trained model's directory, checked: its manifest and its head."""

    directory: Path
    manifest: dict = field(repr=False)
    head: ProjectionHead = field(repr=False)

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def base(self) -> str:
        """The backbone whose vectors the head takes."""
        return self.manifest["base"]

    @classmethod
    def load(cls, directory: Path) -> "TrainedModel":
        """Raises ModelArtifactError saying what is wrong, whatever is wrong with the files."""
        try:
            manifest = json.loads((directory / MANIFEST_FILE).read_text())
            data = (directory / HEAD_FILE).read_bytes()
        except (OSError, ValueError, RecursionError) as exc:
            raise ModelArtifactError(f"Cannot read the trained model in {directory}: {exc}") from exc
        if not isinstance(manifest, dict) or not all(isinstance(manifest.get(key), str) for key in MANIFEST_KEYS):
            raise ModelArtifactError(f"{directory / MANIFEST_FILE} is not a trained model's manifest.")
        if hashlib.sha256(data).hexdigest() != manifest["head_sha256"]:
            raise ModelArtifactError(f"{directory / HEAD_FILE} is damaged: its checksum is not the manifest's.")
        try:
            head = _read_head(io.BytesIO(data))
        except Exception as exc:  # numpy and zipfile raise many kinds for a file that is not a head
            raise ModelArtifactError(f"{directory / HEAD_FILE} is not a usable head: {exc}") from exc
        if manifest.get("dimension", head.dimension) != head.dimension:
            raise ModelArtifactError(f"{directory / HEAD_FILE} gives {head.dimension}-d vectors, not the manifest's.")
        return cls(directory, manifest, head)


def _read_head(file) -> ProjectionHead:
    """The head in an .npz file, its shapes checked: w0 (in, h1), b0 (h1,), w1 (h1, h2), ..."""
    with np.load(file, allow_pickle=False) as arrays:
        count = sum(1 for name in arrays.files if name.startswith("w"))
        layers = [
            (np.asarray(arrays[f"w{i}"], np.float32), np.asarray(arrays[f"b{i}"], np.float32)) for i in range(count)
        ]
        kept = None
        if "kept_mean" in arrays.files:
            kept = BackboneProjection(
                np.asarray(arrays["kept_mean"], np.float32), np.asarray(arrays["kept_components"], np.float32)
            )
        learned_weight = float(arrays["learned_weight"]) if "learned_weight" in arrays.files else 1.0
        share = float(arrays["catalogue_label_share"]) if "catalogue_label_share" in arrays.files else 0.0
        blocks = sum(1 for name in arrays.files if name.startswith("block") and name.endswith("_w"))
        label_blocks = tuple(
            LabelBlock(
                np.asarray(arrays[f"block{i}_w"], np.float32),
                np.asarray(arrays[f"block{i}_b"], np.float32),
                float(arrays[f"block{i}_weight"]),
                str(arrays[f"block{i}_label"]) if f"block{i}_label" in arrays.files else "",
                tuple(str(name) for name in arrays[f"block{i}_classes"]) if f"block{i}_classes" in arrays.files else (),
            )
            for i in range(blocks)
        )
    if not layers:
        raise ValueError("no layers")
    width = layers[0][0].shape[0] if layers[0][0].ndim == 2 else -1
    for weights, bias in layers:
        if weights.ndim != 2 or weights.shape[0] != width or bias.shape != (weights.shape[1],):
            raise ValueError("layer shapes do not chain")
        width = weights.shape[1]
    if kept is not None and (kept.components.ndim != 2 or kept.mean.shape != (kept.components.shape[0],)):
        raise ValueError("the kept projection's shapes do not match")
    for block in label_blocks:
        if block.weights.shape[0] != layers[0][0].shape[0] or block.bias.shape != (block.weights.shape[1],):
            raise ValueError("a label block's shapes do not match the head's inputs")
        if block.classes and len(block.classes) != block.dimension:
            raise ValueError("a label block does not name each of its classes")
    if not 0 <= share <= 1:
        raise ValueError("the catalogue label share is not between 0 and 1")
    if not all(np.isfinite(weight) and weight > 0 for weight in [learned_weight] + [b.weight for b in label_blocks]):
        raise ValueError("a part's weight is not a positive number")
    return ProjectionHead(layers, kept, learned_weight, label_blocks, share)


def models_directory() -> Path:
    return Path(settings.TRAINED_MODEL_DIR)


def save_model(version: str, head: ProjectionHead, manifest: dict) -> TrainedModel:
    """Write a trained model's directory (aside, then renamed into place) and return it, loaded."""
    target = models_directory() / version
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{version}-"))
    arrays = {}
    for index, (weights, bias) in enumerate(head.layers):
        arrays[f"w{index}"], arrays[f"b{index}"] = weights.astype(np.float32), bias.astype(np.float32)
    if head.kept is not None:
        arrays["kept_mean"], arrays["kept_components"] = head.kept.mean, head.kept.components
    arrays["learned_weight"] = np.float32(head.learned_weight)
    for index, block in enumerate(head.label_blocks):
        arrays[f"block{index}_w"], arrays[f"block{index}_b"] = block.weights, block.bias
        arrays[f"block{index}_weight"] = np.float32(block.weight)
        arrays[f"block{index}_label"] = np.str_(block.label)
        arrays[f"block{index}_classes"] = np.array(block.classes, str)
    arrays["catalogue_label_share"] = np.float32(head.catalogue_label_share)
    np.savez(staging / HEAD_FILE, **arrays)
    digest = hashlib.sha256((staging / HEAD_FILE).read_bytes()).hexdigest()
    manifest = {**manifest, "version": version, "dimension": head.dimension, "head_sha256": digest}
    (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, default=str))
    os.replace(staging, target)
    return TrainedModel.load(target)


def write_manifest(model: TrainedModel, **changes) -> TrainedModel:
    """Add to a saved model's manifest (its evaluation, say), atomically."""
    manifest = {**model.manifest, **changes}
    handle, temporary = tempfile.mkstemp(dir=model.directory, suffix=".json")
    with os.fdopen(handle, "w") as file:
        file.write(json.dumps(manifest, indent=2, default=str))
    os.replace(temporary, model.directory / MANIFEST_FILE)
    return TrainedModel(model.directory, manifest, model.head)
