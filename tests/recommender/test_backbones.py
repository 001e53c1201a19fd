import numpy as np
import pytest
from django.core.exceptions import ImproperlyConfigured

from recommender.encoding.backbones import WeightsNotFound, caffe_style, get_backbone
from recommender.encoding.embedder import KerasEmbedder, get_embedder
from tests.helpers import SHARED


@pytest.fixture
def no_resnet_weights(settings, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    settings.RESNET50_WEIGHTS = ""
    settings.EMBEDDING_ALLOW_DOWNLOAD = False


def test_resnet50_without_weights_fails_clearly(no_resnet_weights, tmp_path):
    with pytest.raises(WeightsNotFound) as raised:
        get_backbone("resnet50").build()
    message = str(raised.value)
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert str(tmp_path / "keras-home" / "models") in message
    assert "RESNET50_WEIGHTS" in message


def test_resnet50_named_weights_file_must_exist(no_resnet_weights, settings, tmp_path):
    settings.RESNET50_WEIGHTS = str(tmp_path / "nowhere.h5")
    with pytest.raises(WeightsNotFound, match="no file there"):
        get_backbone("resnet50").build()


@pytest.mark.slow
def test_resnet50_loads_the_weights_file_it_is_given(no_resnet_weights, settings, tmp_path):
    import keras

    keras.utils.set_random_seed(7)
    original = keras.applications.ResNet50(include_top=False, weights=None, pooling="max", input_shape=(224, 224, 3))
    weights = tmp_path / "resnet50-test.weights.h5"
    original.save_weights(str(weights))
    settings.RESNET50_WEIGHTS = str(weights)

    embedder = KerasEmbedder(get_backbone("resnet50"))

    pixels = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    vectors = embedder.embed_pixels(pixels)
    assert vectors.shape == (2, 2048)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    expected = np.asarray(original(caffe_style(pixels), training=False))
    expected = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.allclose(vectors, expected, atol=1e-4), "the saved weights were loaded, not fresh random ones"


@pytest.mark.slow  # runs the model
def test_caffe_style_is_keras_resnet50_preprocess_input():
    from keras.applications.resnet50 import preprocess_input

    pixels = np.random.default_rng(1).integers(0, 256, (1, 8, 8, 3), dtype=np.uint8)
    assert np.allclose(caffe_style(pixels), preprocess_input(pixels.astype(np.float32)))


def test_unknown_backbone_is_a_configuration_error(settings):
    settings.EMBEDDING_BACKBONE = "vgg16"
    with pytest.raises(ImproperlyConfigured, match="efficientnet_lite2"):
        get_backbone()


@pytest.mark.slow  # runs the model
def test_default_backbone_works_offline_with_the_real_weights():
    embedder = get_embedder(get_backbone())
    assert embedder.backbone.name == "efficientnet_lite2"
    reference = np.load(SHARED / "reference" / "efficientnet-lite-reference.npz")

    vectors = embedder.embed_pixels(reference["lite2_pixels"])

    expected = reference["lite2_gmp"] / np.linalg.norm(reference["lite2_gmp"], axis=1, keepdims=True)
    assert vectors.shape == expected.shape and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert (vectors * expected).sum(axis=1).min() > 0.9999, "the original's features, not random weights"
