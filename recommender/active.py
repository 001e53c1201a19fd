"""Which embedding space answers shoppers: the active trained model's, else the frozen backbone's.

Resolved once where a request, task or command comes in, like get_backbone(); every host reads the
active model from PostgreSQL, so they agree on it."""

import functools
import logging

from django.core.exceptions import ImproperlyConfigured

from .encoding.backbones import Backbone, get_backbone, trained_backbone
from .encoding.projection import ModelArtifactError, TrainedModel, models_directory
from .models import EmbeddingModel

logger = logging.getLogger(__name__)
TRAINED_PREFIX = "trained-"


def active_backbone() -> Backbone:
    """The active trained model's embedding space; the frozen backbone when no model is active or the
    active one's files cannot be loaded (its vectors are always complete: every photo gets them)."""
    active = EmbeddingModel.objects.filter(status=EmbeddingModel.Status.ACTIVE).values_list("version", flat=True)
    version = active.first()
    if version is None:
        return get_backbone()
    try:
        return load_trained_backbone(version)
    except ModelArtifactError as exc:
        logger.error("The active trained model cannot be used (%s); serving the frozen backbone", exc)
        return get_backbone()


def embedding_spaces() -> list[Backbone]:
    """Every space a new photo must be embedded in: the frozen backbone, and the active or activating model's."""
    spaces = [get_backbone()]
    live = [EmbeddingModel.Status.ACTIVE, EmbeddingModel.Status.ACTIVATING]
    for version in EmbeddingModel.objects.filter(status__in=live).values_list("version", flat=True):
        try:
            spaces.append(load_trained_backbone(version))
        except ModelArtifactError as exc:
            logger.error("Trained model %s cannot be loaded: %s", version, exc)
    return spaces


def space_by_name(name: str) -> Backbone:
    """A backbone, or a trained model's space ("trained-<version>"), by the name its vectors carry."""
    if name.startswith(TRAINED_PREFIX):
        return load_trained_backbone(name.removeprefix(TRAINED_PREFIX))
    return get_backbone(name)


@functools.lru_cache(maxsize=4)
def load_trained_backbone(version: str) -> Backbone:
    """A trained model's backbone, its files checked once per process (they never change in place)."""
    model = TrainedModel.load(models_directory() / version)
    try:
        return trained_backbone(model)
    except ImproperlyConfigured as exc:  # a base backbone this site does not offer
        raise ModelArtifactError(f"Trained model {version} needs {model.base!r}: {exc}") from exc
