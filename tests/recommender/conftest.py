import pytest

from recommender.embedding import embed_catalogue


@pytest.fixture
def embedded_catalogue(catalogue):
    """The 60-product catalogue with EfficientNet-Lite2 embeddings for every image."""
    report = embed_catalogue("efficientnet_lite2")
    assert report.embedded == 60
    return report
