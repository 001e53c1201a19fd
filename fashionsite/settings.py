"""Settings for the fashion catalogue site, all read from the environment.

Every setting has a default that is safe for a local run; production sets
DJANGO_SECRET_KEY, DJANGO_ALLOWED_HOSTS and DATABASE_URL and leaves DJANGO_DEBUG off.
"""

import json
import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), not {value!r}")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, not {value!r}") from exc


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


DEBUG = env_bool("DJANGO_DEBUG", False)

SECRET_KEY = env_str("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("Set DJANGO_SECRET_KEY (or DJANGO_DEBUG=1 for a local run).")
    SECRET_KEY = "insecure-local-development-key-do-not-use-in-production"

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

# Where the site keeps what it writes: uploaded media, model weights, the search index.
DATA_DIR = Path(env_str("FASHIONSITE_DATA_DIR", str(BASE_DIR / "var")))

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "django.contrib.humanize",
    "ninja",  # serves the API docs' JavaScript from its own static files, not a CDN
    "catalog",
    "recommender",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "recommender.timing.ServerTimingMiddleware",
    "recommender.api.JsonErrorsMiddleware",
    "fashionsite.middleware.ServiceUnavailableMiddleware",
]

ROOT_URLCONF = "fashionsite.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "fashionsite.wsgi.application"

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", "postgres://fashionsite@127.0.0.1:54329/fashionsite"),
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
# Longest a single SQL statement may run (0: no limit). gunicorn.conf.py sets it for web processes,
# so that no page waits on the database for ever; workers and commands run long queries.
DATABASE_STATEMENT_TIMEOUT_MS = env_int("DATABASE_STATEMENT_TIMEOUT_MS", 0)
if DATABASE_STATEMENT_TIMEOUT_MS:
    DATABASES["default"].setdefault("OPTIONS", {})["options"] = f"-c statement_timeout={DATABASE_STATEMENT_TIMEOUT_MS}"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env_str("DJANGO_STATIC_ROOT", str(BASE_DIR / "staticfiles")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}

MEDIA_URL = "media/"
MEDIA_ROOT = Path(env_str("DJANGO_MEDIA_ROOT", str(DATA_DIR / "media")))
# Serve MEDIA_ROOT from Django itself: for local runs and the demo only; production serves
# media from the reverse proxy with X-Content-Type-Options: nosniff.
SERVE_MEDIA = env_bool("DJANGO_SERVE_MEDIA", DEBUG)

# Images from outside (staff uploads, imports, shoppers' search photos): what we accept.
IMAGE_UPLOAD_MAX_BYTES = env_int("IMAGE_UPLOAD_MAX_BYTES", 10 * 1024 * 1024)
IMAGE_UPLOAD_MAX_PIXELS = env_int("IMAGE_UPLOAD_MAX_PIXELS", 40_000_000)
# A 10000×100 "photo" is an attack, not a garment.
IMAGE_MAX_ASPECT_RATIO = env_int("IMAGE_MAX_ASPECT_RATIO", 10)
# Stored product images are shrunk to this many pixels a side.
CATALOG_IMAGE_MAX_SIDE = env_int("CATALOG_IMAGE_MAX_SIDE", 1600)
CATALOG_PAGE_SIZE = env_int("CATALOG_PAGE_SIZE", 24)
# Django only counts non-file form data against DATA_UPLOAD_MAX_MEMORY_SIZE; files are capped
# by the image validator above.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440  # larger files are streamed to a temporary file
DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440  # form fields other than files
UPLOAD_MAX_FILES = 20  # files in one request; the bulk upload's own limit is BULK_UPLOAD_MAX_FILES, below

# Visual recommender.
EMBEDDING_BACKBONE = env_str("EMBEDDING_BACKBONE", "efficientnet_lite2")
EMBEDDING_MODEL_DIR = Path(env_str("EMBEDDING_MODEL_DIR", str(DATA_DIR / "models")))
# LiteRT (XNNPACK) runs the model, converted once and cached in EMBEDDING_MODEL_DIR; "keras" runs the
# reference model instead. int8 is its own embedding space, made by `manage.py quantize_embedding`
# only when it passes its quality check; "auto" uses it once it exists, "fp32" never.
EMBEDDING_RUNTIME = env_str("EMBEDDING_RUNTIME", "litert")
# Models trained on the catalogue (manage.py train_embedding), one directory per version, and the
# frozen backbone's features of photos they were trained on, kept so retraining skips the backbone.
TRAINED_MODEL_DIR = Path(env_str("TRAINED_MODEL_DIR", str(EMBEDDING_MODEL_DIR / "trained")))
EMBEDDING_FEATURE_DIR = Path(env_str("EMBEDDING_FEATURE_DIR", str(EMBEDDING_MODEL_DIR / "features")))
EMBEDDING_PRECISION = env_str("EMBEDDING_PRECISION", "auto")
# Per process: how many interpreters may run at once, and the threads each uses.
EMBEDDING_INTERPRETERS = env_int("EMBEDDING_INTERPRETERS", 2)
EMBEDDING_THREADS = env_int("EMBEDDING_THREADS", 1)
# A ResNet-50 weights file (Keras's resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5); without
# it the Keras cache ($KERAS_HOME/models/) is tried, then a download when allowed.
RESNET50_WEIGHTS = env_str("RESNET50_WEIGHTS")
EMBEDDING_ALLOW_DOWNLOAD = env_bool("EMBEDDING_ALLOW_DOWNLOAD", True)
# Shoppers' search photos are discarded after the request unless this is set; kept ones go to a
# private folder, never to public media.
VISUAL_SEARCH_KEEP_UPLOADS = env_bool("VISUAL_SEARCH_KEEP_UPLOADS", False)
# Shoppers' photos: a smaller pixel budget than staff uploads (a 24-megapixel phone photo fits), and
# shrunk to this many pixels a side as soon as they are decoded.
VISUAL_SEARCH_MAX_PIXELS = env_int("VISUAL_SEARCH_MAX_PIXELS", 30_000_000)
VISUAL_SEARCH_IMAGE_MAX_SIDE = env_int("VISUAL_SEARCH_IMAGE_MAX_SIDE", 640)
# Costly requests per client address (django-ratelimit syntax: "30/m"; empty for no limit). Behind a
# reverse proxy, RATELIMIT_IP_META_KEY names the header that carries the client's address.
VISUAL_SEARCH_RATE_LIMIT = env_str("VISUAL_SEARCH_RATE_LIMIT", "30/m")
SIMILAR_API_RATE_LIMIT = env_str("SIMILAR_API_RATE_LIMIT", "120/m")
ADMIN_LOGIN_RATE_LIMIT = env_str("ADMIN_LOGIN_RATE_LIMIT", "10/m")
RATELIMIT_IP_META_KEY = env_str("RATELIMIT_IP_META_KEY") or None
# A photo search waits at most this long for the model before answering 503 (Retry-After): under
# overload, shoppers get a quick answer instead of an ever longer queue.
VISUAL_SEARCH_MODEL_WAIT_SECONDS = env_int("VISUAL_SEARCH_MODEL_WAIT_SECONDS", 10)
# A filtered search (gender, article type) that cannot fill k looks at no more images than this.
SEARCH_MAX_CANDIDATES = env_int("SEARCH_MAX_CANDIDATES", 5000)
VISUAL_SEARCH_UPLOAD_DIR = Path(env_str("VISUAL_SEARCH_UPLOAD_DIR", str(DATA_DIR / "search-uploads")))
# Neighbours of a product are cached until the index changes (or this many seconds pass, so that
# products embedded since the last build join in).
SIMILAR_ITEMS_CACHE_SECONDS = env_int("SIMILAR_ITEMS_CACHE_SECONDS", 120)

# Where the Annoy index versions live, and how they are built and searched.
INDEX_DIR = Path(env_str("INDEX_DIR", str(DATA_DIR / "index")))
INDEX_TREES = env_int("INDEX_TREES", 25)
# Each build chooses the search_k at which its top 5 match exact search for this share of the top 5
# of 500 stored vectors (a margin over the 0.99 shoppers are promised: the estimate varies by ±0.003);
# INDEX_SEARCH_K serves versions built before that (never below n_trees × candidates).
INDEX_TARGET_RECALL = float(env_str("INDEX_TARGET_RECALL", "0.993"))
INDEX_SEARCH_K = env_int("INDEX_SEARCH_K", 40000)
# A space with more dimensions is indexed on its first principal axes, and candidates re-ranked in
# full (0: never): Annoy is ~10x faster at the same recall for the 1280-d backbone vectors. 128 did
# best on the 45,000-product benchmark's real vectors (96 did on the 8,149 shared ones; 48 lose too much).
INDEX_PROJECTED_DIMENSION = env_int("INDEX_PROJECTED_DIMENSION", 128)
# How often a process looks for embeddings written since its index was built: a newly embedded
# photo is searchable at most this long after its embedding is stored.
RECENT_EMBEDDINGS_CHECK_SECONDS = float(env_str("RECENT_EMBEDDINGS_CHECK_SECONDS", "2"))
INDEX_KEEP_VERSIONS = env_int("INDEX_KEEP_VERSIONS", 2)
# INDEX_DIR is each host's local copy. Built versions are published to the "indexes" storage
# (STORAGES below: a folder on a filesystem every host mounts, or S3 with django-storages) and the
# current one is recorded in PostgreSQL; every process polls for it this often (0: never).
INDEX_SYNC_SECONDS = env_int("INDEX_SYNC_SECONDS", 10)
STORAGES["indexes"] = {
    "BACKEND": env_str("INDEX_STORAGE_BACKEND", "django.core.files.storage.FileSystemStorage"),
    "OPTIONS": json.loads(env_str("INDEX_STORAGE_OPTIONS", "{}"))
    or {"location": env_str("INDEX_STORAGE_DIR", str(DATA_DIR / "index-store"))},
}

REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:63799/0")
# Shared by every web process (cached similar items); a Redis outage only makes pages compute them.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": env_str("CACHE_URL", REDIS_URL),
        "KEY_PREFIX": "cache",
        "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
    }
}

# Celery, with Redis as broker and result backend.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND", REDIS_URL)
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# A task is acknowledged only when it finishes; if its worker dies it is delivered again.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_CONCURRENCY = env_int("CELERY_WORKER_CONCURRENCY", 1)
CELERY_WORKER_MAX_MEMORY_PER_CHILD = env_int("CELERY_WORKER_MAX_MEMORY_PER_CHILD", 0) or None  # KiB
# Unacknowledged messages of a dead worker return to the queue after this long (Redis transport).
# Keep it above the longest task (an index build of a large catalogue).
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600),
    "unacked_restore_interval": env_int("CELERY_UNACKED_RESTORE_SECONDS", 60),
    "unacked_restore_throttle": 1,
    "socket_connect_timeout": 2,
    "socket_timeout": 10,
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Publishing from a web request must not hang when Redis is down: fail fast, the sweep catches up.
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
CELERY_TASK_ROUTES = {
    "recommender.tasks.embed_images_task": {"queue": "embeddings"},
    # minutes long: a worker of their own (bin/demo starts one) keeps them from holding up new photos
    "recommender.tasks.train_embedding_task": {"queue": "training"},
    "recommender.tasks.activate_model_task": {"queue": "training"},
}
EMBEDDING_SWEEP_SECONDS = env_int("EMBEDDING_SWEEP_SECONDS", 60)
INDEX_REBUILD_SECONDS = env_int("INDEX_REBUILD_SECONDS", 300)
# Trained embeddings: beat trains the first model once this many products are embedded (the whole
# catalogue), and another when the catalogue has grown by this share since the newest model.
EMBEDDING_TRAIN_MIN_PRODUCTS = env_int("EMBEDDING_TRAIN_MIN_PRODUCTS", 500)
EMBEDDING_RETRAIN_GROWTH = float(env_str("EMBEDDING_RETRAIN_GROWTH", "0.2"))
EMBEDDING_TRAIN_CHECK_SECONDS = env_int("EMBEDDING_TRAIN_CHECK_SECONDS", 600)
# A training or activation not finished after this long lost its worker; beat marks it so.
EMBEDDING_STALE_SECONDS = env_int("EMBEDDING_STALE_SECONDS", 2 * 3600)
# A model trained by beat is activated on its own when it beats the active one on the test split.
EMBEDDING_AUTO_ACTIVATE = env_bool("EMBEDDING_AUTO_ACTIVATE", True)
CELERY_BEAT_SCHEDULE = {
    "sweep-missing-embeddings": {
        "task": "recommender.tasks.sweep_missing_embeddings",
        "schedule": EMBEDDING_SWEEP_SECONDS,
    },
    "rebuild-index-when-stale": {
        "task": "recommender.tasks.rebuild_index",
        "schedule": INDEX_REBUILD_SECONDS,
    },
    "train-embedding-when-due": {
        "task": "recommender.tasks.train_embedding_when_due",
        "schedule": EMBEDDING_TRAIN_CHECK_SECONDS,
    },
}

# Bulk photo upload in admin (catalog/bulk_upload.py): staff drop up to BULK_UPLOAD_MAX_FILES photos, and
# optionally a CSV in the import layout of at most BULK_UPLOAD_MAX_CSV_ROWS rows, in one request of at most
# BULK_UPLOAD_MAX_BYTES. Batches of up to BULK_UPLOAD_INLINE_MAX_FILES photos and rows are processed in the
# request, larger ones by a Celery worker (default queue, "celery"). Photos wait in BULK_UPLOAD_DIR (private,
# shared by web and worker) until their batch is done. A running batch not heard of for
# BULK_UPLOAD_STALE_SECONDS lost its worker; beat resumes it, and queues batches that met a stopped queue.
BULK_UPLOAD_MAX_FILES_CAP = 1000  # every photo of a request is an open file while Django reads it
BULK_UPLOAD_MAX_FILES = env_int("BULK_UPLOAD_MAX_FILES", 500)
if not 1 <= BULK_UPLOAD_MAX_FILES <= BULK_UPLOAD_MAX_FILES_CAP:
    raise ImproperlyConfigured(f"BULK_UPLOAD_MAX_FILES must be between 1 and {BULK_UPLOAD_MAX_FILES_CAP}.")
BULK_UPLOAD_MAX_BYTES = env_int("BULK_UPLOAD_MAX_BYTES", 1024 * 1024 * 1024)
BULK_UPLOAD_MAX_CSV_ROWS = env_int("BULK_UPLOAD_MAX_CSV_ROWS", 5000)
BULK_UPLOAD_INLINE_MAX_FILES = env_int("BULK_UPLOAD_INLINE_MAX_FILES", 10)
BULK_UPLOAD_DIR = Path(env_str("BULK_UPLOAD_DIR", str(DATA_DIR / "bulk-uploads")))
BULK_UPLOAD_STALE_SECONDS = env_int("BULK_UPLOAD_STALE_SECONDS", 120)
BULK_UPLOAD_RESUME_SECONDS = env_int("BULK_UPLOAD_RESUME_SECONDS", 60)
CELERY_BEAT_SCHEDULE["resume-bulk-uploads"] = {
    "task": "catalog.tasks.resume_bulk_uploads",
    "schedule": BULK_UPLOAD_RESUME_SECONDS,
}
# Django's limit on files per request is one number for every view: it admits a bulk upload, and the
# first upload handler holds every other request to UPLOAD_MAX_FILES (the bulk upload view raises its limit).
DATA_UPLOAD_MAX_NUMBER_FILES = BULK_UPLOAD_MAX_FILES + 1  # the photos and the CSV
FILE_UPLOAD_HANDLERS = [
    "catalog.bulk_upload.FileCountLimit",
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "django.core.files.uploadhandler.TemporaryFileUploadHandler",
]

# HTTPS hardening is on whenever debug is off; the local demo turns it off with DJANGO_HTTPS=0.
HTTPS = env_bool("DJANGO_HTTPS", not DEBUG)
SECURE_SSL_REDIRECT = HTTPS
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 31_536_000 if HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = HTTPS
SECURE_HSTS_PRELOAD = HTTPS
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if HTTPS else None
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# Content-Security-Policy (django-csp): every script, style and image comes from our own origin.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        # No 'unsafe-inline': Swagger UI (/api/docs) and the admin's scripts style elements through the
        # CSSOM, which CSP allows; tests/browser/test_content_security_policy.py checks nothing is blocked.
        "style-src": ["'self'"],
        # data: for the shopper's photo shown back with the results; blob: for its preview before upload.
        "img-src": ["'self'", "data:", "blob:"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
