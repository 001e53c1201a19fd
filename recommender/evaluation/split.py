"""The catalogue's fixed test split: products that training, tuning and calibration never see.

A product is in it when a hash of its SKU says so, so the split is the same on every machine and
stays put as the catalogue grows (about TEST_SHARE of all products)."""

import hashlib

TEST_SHARE = 0.15


def in_test_split(sku: str) -> bool:
    return _share(f"test-split:{sku}") < TEST_SHARE


def in_validation_split(sku: str) -> bool:
    """Products outside the test split held out to choose training settings (about TEST_SHARE of
    them), so that choices are made without looking at the test split."""
    return not in_test_split(sku) and _share(f"val-split:{sku}") < TEST_SHARE


def held_out(sku: str) -> bool:
    """In either held-out split: no training of any model here sees the product."""
    return in_test_split(sku) or in_validation_split(sku)


def _share(key: str) -> float:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
