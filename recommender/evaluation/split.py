"""The catalogue's fixed test split: products that training, tuning and calibration never see.

A product is in it when a hash of its SKU says so, so the split is the same on every machine and
stays put as the catalogue grows (about TEST_SHARE of all products)."""

import hashlib

TEST_SHARE = 0.15


def in_test_split(sku: str) -> bool:
    digest = hashlib.sha256(f"test-split:{sku}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < TEST_SHARE * 2**64
