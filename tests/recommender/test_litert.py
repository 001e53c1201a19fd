"""The LiteRT runtime: it computes what Keras computes, is cached per weights, falls back to Keras (logged)
when it cannot run, and keeps int8 vectors in an embedding space of their own."""

import sys
import threading
from io import StringIO

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from recommender import quantization
from recommender.encoding import embedder as embedder_module
from recommender.encoding import litert
from recommender.encoding.backbones import WeightsNotFound, get_backbone
from recommender.encoding.embedder import KerasEmbedder, LiteRTEmbedder, get_embedder
from recommender.models import ImageEmbedding
from recommender.retrieval import current_manifest, nearest_products
from tests.helpers import SHARED, stored_vector

LITE2 = get_backbone("efficientnet_lite2")
LITE2_INT8 = get_backbone("efficientnet_lite2-int8")


@pytest.fixture
def fresh_embedders(monkeypatch):
    """No embedder loaded yet in this process (and none left behind by the test)."""
    monkeypatch.setattr(embedder_module, "_embedders", {})


@pytest.fixture
def model_dir(settings, tmp_path):
    """An EMBEDDING_MODEL_DIR with nothing converted for LiteRT yet (the Keras weights linked in)."""
    weights = LITE2.weights()
    settings.EMBEDDING_MODEL_DIR = tmp_path / "models"
    settings.EMBEDDING_MODEL_DIR.mkdir()
    (settings.EMBEDDING_MODEL_DIR / weights.name).symlink_to(weights)
    return settings.EMBEDDING_MODEL_DIR


@pytest.fixture(scope="module")
def reference_pixels():
    return np.load(SHARED / "reference" / "efficientnet-lite-reference.npz")["lite2_pixels"]


@pytest.mark.slow
def test_the_converted_model_computes_what_keras_computes(reference_pixels):
    keras_vectors = KerasEmbedder(LITE2).embed_pixels(reference_pixels)
    litert_vectors = LiteRTEmbedder(LITE2).embed_pixels(reference_pixels)

    cosines = (keras_vectors * litert_vectors).sum(axis=1)
    assert len(cosines) == 28 and cosines.min() >= 0.9999


def test_the_converted_file_is_named_after_the_weights(settings, tmp_path):
    settings.EMBEDDING_MODEL_DIR = tmp_path
    weights = tmp_path / "efficientnet_lite2.weights.h5"  # where the backbone finds its converted weights
    weights.write_bytes(b"weights, first edition")
    first = litert.model_file(LITE2)
    assert litert.model_file(LITE2) == first and first.parent == tmp_path
    assert litert.model_file(LITE2_INT8).name == first.name.replace("-fp32.tflite", "-int8.tflite")

    weights.write_bytes(b"weights, second edition!")

    assert litert.model_file(LITE2) != first, "new weights, a new conversion"


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["no runtime", "conversion fails"])
def test_without_litert_the_embedder_falls_back_to_keras_with_a_log_line(
    failure, fresh_embedders, monkeypatch, model_dir, caplog, reference_pixels
):
    if failure == "no runtime":
        monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # import fails
        monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    else:

        def broken(*args, **kwargs):
            raise ValueError("converter refused the model")

        monkeypatch.setattr(litert, "convert", broken)

    embedder = get_embedder(LITE2)

    assert embedder.runtime == "keras" and "LiteRT cannot run efficientnet_lite2" in caplog.text
    expected = np.load(SHARED / "reference" / "efficientnet-lite-reference.npz")["lite2_gmp"]
    cosines = (embedder.embed_pixels(reference_pixels) * expected).sum(axis=1) / np.linalg.norm(expected, axis=1)
    assert cosines.min() > 0.9999, "the right vectors, not random ones"


def test_an_int8_backbone_never_falls_back_to_float(fresh_embedders, model_dir):
    with pytest.raises(WeightsNotFound, match="quantize_embedding"):
        get_embedder(LITE2_INT8)


@pytest.mark.slow
def test_web_threads_do_not_wait_for_each_other(fresh_embedders, settings):
    settings.EMBEDDING_INTERPRETERS = 2
    embedder = get_embedder(LITE2)
    entered = threading.Barrier(2, timeout=10)

    def hold():
        with embedder.pool.interpreter(wait_seconds=0):
            entered.wait()  # both threads hold an interpreter at the same time

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not entered.broken


@pytest.mark.slow
def test_int8_is_kept_only_when_it_passes_its_quality_check_and_never_mixes_with_fp32(
    embedded_catalogue, fresh_embedders, settings, model_dir, index_dir, monkeypatch
):
    conversions, real_convert = {}, litert.convert

    def convert_once(model, calibration=None):  # an int8 conversion takes a minute: one is enough here
        float_model = calibration is None
        if float_model not in conversions:
            conversions[float_model] = real_convert(model, calibration)
        return conversions[float_model]

    monkeypatch.setattr(litert, "convert", convert_once)
    model = litert.model_file(LITE2_INT8)

    monkeypatch.setattr(quantization, "INT8_MAX_DROP", {"article type": -1.0, "base colour": -1.0})
    with pytest.raises(CommandError, match="int8 refused: int8 loses too much precision@5"):
        call_command("quantize_embedding", "--calibration", "20", stdout=StringIO(), verbosity=0)
    assert not model.exists() and not litert.kept_int8(LITE2_INT8)
    assert not ImageEmbedding.objects.for_backbone(LITE2_INT8).exists()
    settings.EMBEDDING_PRECISION = "auto"
    assert get_backbone() == LITE2

    monkeypatch.setattr(quantization, "INT8_MAX_DROP", {"article type": 1.0, "base colour": 1.0})
    out = StringIO()
    call_command("quantize_embedding", "--calibration", "20", stdout=out, verbosity=0)

    assert "int8 model kept" in out.getvalue() and "fp32" in out.getvalue() and "int8" in out.getvalue()
    assert litert.kept_int8(LITE2_INT8) and get_backbone() == LITE2_INT8
    int8_rows = ImageEmbedding.objects.for_backbone(LITE2_INT8)
    assert int8_rows.count() == 60 == ImageEmbedding.objects.for_backbone(LITE2).count()
    image_id = int8_rows.first().image_id
    fp32_vector, int8_vector = stored_vector(image_id, LITE2), stored_vector(image_id, LITE2_INT8)
    assert 0.9 < float(fp32_vector @ int8_vector) < 0.99999, "close, but not the same space"
    assert current_manifest(LITE2_INT8).backbone == "efficientnet_lite2-int8" and current_manifest(LITE2) is None
    assert (index_dir / "efficientnet_lite2-int8" / "current").exists()
    assert nearest_products(int8_vector, LITE2_INT8, k=1)[0].image.pk == image_id
    report = StringIO()
    call_command("evaluate_recommender", "--int8", "--sample", "5", stdout=report)
    assert "fp32" in report.getvalue() and "cosine of fp32 and int8 vectors" in report.getvalue()
