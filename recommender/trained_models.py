"""Activating a trained model, and deciding when to train the next one.

Activation embeds the whole catalogue in the model's own space (from the vectors and colour
features already kept for the frozen backbone: no backbone pass, except for photos that have no
frozen vector yet), builds that space's index, and only then makes the model active, in one
transaction. Until that moment shoppers are answered by the previous model; vectors of two models
never meet in one index.
"""

import logging
from datetime import timedelta

import numpy as np
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from tqdm import tqdm

from catalog.models import Product

from .active import load_trained_backbone
from .embedding import EmbedReport, embed_catalogue, embed_images
from .encoding.backbones import Backbone, get_backbone
from .encoding.projection import ModelArtifactError, head_inputs
from .labels import PRODUCT_LABEL_LOOKUPS, product_labels, vector_labels
from .models import EmbeddingModel, ImageEmbedding
from .retrieval import build_index
from .training import FeatureCache

logger = logging.getLogger(__name__)
BATCH = 1000
RECALL_TOLERANCE = 0.01
GATED_LABELS = ("article type", "colour")


class ActivationError(Exception):
    pass


def project_catalogue(backbone: Backbone, progress: bool = False, image_ids: list[int] | None = None) -> int:
    """Store the trained model's vector of every photo whose frozen vector is up to date (the head
    applied to it, the photo's colour features and its product's labels), or of those of `image_ids`
    that lack a current one; returns how many were written. No backbone pass."""
    base = get_backbone(backbone.trained.base)
    cache, head = FeatureCache(base), backbone.trained.head
    rows = ImageEmbedding.objects.for_backbone(base).done().filter(image_checksum=F("image__checksum"))
    if image_ids is not None:
        rows = rows.filter(image__in=ImageEmbedding.objects.missing_images(backbone).filter(pk__in=image_ids))
    rows = rows.order_by("image_id").values_list(
        "image_id", "image_checksum", "image__image", "vector", *PRODUCT_LABEL_LOOKUPS
    )
    written = 0
    total = rows.count() if progress else None  # the embed task projects a batch: no count query there
    with tqdm(total=total, desc=f"Embedding the catalogue for {backbone.name}", disable=not progress) as bar:
        batch = []
        for row in rows.iterator(chunk_size=BATCH):
            batch.append(row)
            if len(batch) == BATCH:
                written += _project(batch, backbone, base, cache, head)
                bar.update(len(batch))
                batch = []
        if batch:
            written += _project(batch, backbone, base, cache, head)
            bar.update(len(batch))
    return written


def embed_in_spaces(image_ids: list[int], spaces: list[Backbone]) -> EmbedReport:
    """Embed these images where they lack a current vector, space by space: a trained model's from
    the frozen vectors where those are current (the frozen space comes first, so a new photo's is),
    the rest from their pixels."""
    total = EmbedReport()
    for space in spaces:
        projected = project_catalogue(space, image_ids=image_ids) if space.trained is not None else 0
        report = embed_images(image_ids, space)
        total.add(EmbedReport(report.embedded + projected, report.failed, report.skipped - projected, report.seconds))
    return total


def _project(batch, backbone, base, cache, head) -> int:
    colours = [cache.colour_features(checksum, name, base.input_size) for _, checksum, name, *_ in batch]
    labels = product_labels(row[4:] for row in batch)
    vectors = head.apply(head_inputs(np.vstack([row[3] for row in batch]), np.stack(colours)), labels)
    now = timezone.now()
    ImageEmbedding.objects.bulk_create(
        [
            ImageEmbedding(
                image_id=image_id,
                backbone=backbone.name,
                image_checksum=checksum,
                labels=vector_labels(fields),
                status=ImageEmbedding.Status.DONE,
                vector=vector,
                dimension=backbone.dimension,
                computed_at=now,
            )
            for (image_id, checksum, _, _, *fields), vector in zip(batch, vectors, strict=True)
        ],
        update_conflicts=True,
        unique_fields=["image", "backbone"],
        update_fields=["image_checksum", "labels", "status", "vector", "dimension", "error", "computed_at"],
    )
    return len(batch)


def activate_model(version: str, progress: bool = False) -> EmbeddingModel:
    """Embed the catalogue for model `version`, index it, then make it the active model."""
    record = EmbeddingModel.objects.get(version=version)
    if record.status == EmbeddingModel.Status.ACTIVE:
        return record
    if record.status == EmbeddingModel.Status.TRAINING:
        raise ActivationError(f"Model {version} is still training.")
    record.mark(EmbeddingModel.Status.ACTIVATING, error="")
    try:
        backbone = load_trained_backbone(version)
        project_catalogue(backbone, progress)
        embed_catalogue(backbone)  # photos that had no frozen vector yet
        build_index(backbone, force=True)
    except ModelArtifactError as exc:
        record.mark(EmbeddingModel.Status.FAILED, error=str(exc))
        raise ActivationError(str(exc)) from exc
    except BaseException as exc:
        record.mark(EmbeddingModel.Status.READY, error=f"Activation failed: {type(exc).__name__}: {exc}")
        raise
    with transaction.atomic():
        EmbeddingModel.objects.filter(status=EmbeddingModel.Status.ACTIVE).update(status=EmbeddingModel.Status.RETIRED)
        record.mark(EmbeddingModel.Status.ACTIVE, activated_at=timezone.now())
    logger.info("Trained model %s is active", version)
    return record


def give_up_stale_runs() -> int:
    """Training or activation that has not moved for EMBEDDING_STALE_SECONDS lost its worker (killed,
    restarted): say so, so that it neither blocks the next run nor shows as running for ever."""
    stale = EmbeddingModel.objects.filter(
        updated_at__lt=timezone.now() - timedelta(seconds=settings.EMBEDDING_STALE_SECONDS)
    )
    message = "stopped without finishing (its worker was stopped or restarted); run it again"
    trainings = stale.filter(status=EmbeddingModel.Status.TRAINING).update(
        status=EmbeddingModel.Status.FAILED, error=f"Training {message}."
    )
    activations = stale.filter(status=EmbeddingModel.Status.ACTIVATING).update(
        status=EmbeddingModel.Status.READY, error=f"Activation {message}."
    )
    return trainings + activations


def training_due() -> bool:
    """Whether the catalogue calls for a new model: none trained yet while at least
    EMBEDDING_TRAIN_MIN_PRODUCTS are embedded, or EMBEDDING_RETRAIN_GROWTH more products than the
    active model saw. Never while a model is training or activating."""
    give_up_stale_runs()
    busy = [EmbeddingModel.Status.TRAINING, EmbeddingModel.Status.ACTIVATING]
    if EmbeddingModel.objects.filter(status__in=busy).exists():
        return False
    base = get_backbone()
    embedded = ImageEmbedding.objects.for_backbone(base).done().values("image__product").distinct().count()
    if embedded < settings.EMBEDDING_TRAIN_MIN_PRODUCTS or embedded < Product.objects.count():
        return False  # a first pass is still running: train on the whole catalogue, not half of it
    newest = EmbeddingModel.objects.exclude(status=EmbeddingModel.Status.FAILED).first()
    if newest is None:
        return True
    return embedded >= newest.products * (1 + settings.EMBEDDING_RETRAIN_GROWTH)


def better_than_active(record: EmbeddingModel) -> bool:
    """Whether a newly trained model may replace the active one on its own: its gains over the
    frozen backbone in article type and colour P@5 on the test split are no smaller than the active
    model's (none when no model is active), nor its gain in exact-item recall of shopper photos by
    more than RECALL_TOLERANCE. Gains, because each model was evaluated with the frozen backbone beside
    it on the test split of its day (the catalogue, and so the split and its photos, grow)."""
    active = EmbeddingModel.objects.active()
    new = _gains_over_frozen(record.metrics)
    reference = _gains_over_frozen(active.metrics) if active else dict.fromkeys(new, 0.0)
    labels_hold = all(new[label] >= reference[label] for label in GATED_LABELS)
    return labels_hold and new["recall@5"] >= reference["recall@5"] - RECALL_TOLERANCE


def _gains_over_frozen(metrics: dict) -> dict[str, float]:
    def scores(space: str) -> dict[str, float]:
        evaluation = metrics[space]
        labels = {label: evaluation[label]["micro"] or 0.0 for label in GATED_LABELS}
        return {**labels, "recall@5": evaluation["shopper photos"]["recall@5"]}

    trained, frozen = scores("trained"), scores("frozen")
    return {measure: trained[measure] - frozen[measure] for measure in trained}
