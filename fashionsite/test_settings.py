"""Settings for the test suite: the real settings, with a fixed key, fast password hashing and
a Redis of the suite's own (tests/conftest.py starts it on TEST_REDIS_PORT)."""

import os

os.environ.setdefault("DJANGO_SECRET_KEY", "test-suite-only-" + "x" * 40)
os.environ.setdefault("DJANGO_HTTPS", "0")
os.environ.setdefault("INDEX_SYNC_SECONDS", "0")  # tests sync explicitly; servers they start may poll
os.environ.setdefault("RECENT_EMBEDDINGS_CHECK_SECONDS", "0")  # a test's new embedding is searchable at once
TEST_REDIS_PORT = int(os.environ.setdefault("TEST_REDIS_PORT", "63798"))
os.environ["REDIS_URL"] = f"redis://127.0.0.1:{TEST_REDIS_PORT}/0"
for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
    os.environ.pop(name, None)

from .settings import *  # noqa: E402,F403

STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}  # noqa: F405
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
SERVE_MEDIA = True  # the browser tests look at product photos
# The suite decides which tests run int8; a model kept in var/models by a developer must not switch it.
EMBEDDING_PRECISION = "fp32"
