"""Gunicorn settings for the site; each can be overridden on the command line or with GUNICORN_CMD_ARGS."""

import os
import threading

# Web processes bound every SQL statement (workers and commands do not).
os.environ.setdefault("DATABASE_STATEMENT_TIMEOUT_MS", "10000")

workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("WEB_THREADS", "4"))
timeout = 60
accesslog = "-"


def post_worker_init(worker):
    """Load the embedding model, the garment locator and the index (which starts following the published
    version) in the background as each worker starts, so that the first photo search does not wait
    for TensorFlow (it is never loaded in the master, before the fork)."""
    if os.environ.get("WARM_UP_MODEL", "1") == "1":
        from recommender.active import active_backbone
        from recommender.encoding.embedder import get_embedder
        from recommender.encoding.garment import get_locator
        from recommender.retrieval import index_in_use

        def warm_up():
            backbone = active_backbone()
            index_in_use(backbone)
            get_embedder(backbone)
            get_locator()

        threading.Thread(target=warm_up, name="warm-up-model", daemon=True).start()
