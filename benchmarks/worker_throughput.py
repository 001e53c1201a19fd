"""How many images/s one Celery worker embeds, and how much memory it takes.

    .venv/bin/python benchmarks/worker_throughput.py [--images 512] [--concurrency 1 2]

Needs the project's PostgreSQL and Redis (bin/services start). Works in a scratch database
(fashionsite_benchmark) and scratch folders, with a real `celery worker` process: images are
queued one per task (as uploads are) and 32 per task (as the sweep does).
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import psutil

SCRATCH_DB = "fashionsite_benchmark"
ROOT = Path(__file__).resolve().parents[1]
base_url = os.environ.get("DATABASE_URL", "postgres://fashionsite@127.0.0.1:54329/fashionsite")
os.environ["DATABASE_URL"] = base_url.rsplit("/", 1)[0] + "/" + SCRATCH_DB
scratch = Path(tempfile.mkdtemp(prefix="worker-benchmark-"))
os.environ["DJANGO_MEDIA_ROOT"] = str(scratch / "media")
os.environ["INDEX_DIR"] = str(scratch / "index")

import psycopg  # noqa: E402

with psycopg.connect(base_url, autocommit=True) as connection:
    connection.execute(f"DROP DATABASE IF EXISTS {SCRATCH_DB}")
    connection.execute(f"CREATE DATABASE {SCRATCH_DB}")

from common import DATASET, machine, print_table  # noqa: E402
from django.core.management import call_command  # noqa: E402

from catalog.importing import import_products, kaggle_rows  # noqa: E402
from catalog.models import ProductImage  # noqa: E402
from fashionsite.celery import app  # noqa: E402
from recommender.models import ImageEmbedding  # noqa: E402
from recommender.tasks import queue_embeddings  # noqa: E402
from tests.processes import CeleryWorker  # noqa: E402


def worker_rss(process: psutil.Process) -> int:
    try:
        return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])
    except psutil.NoSuchProcess:
        return 0


def run(concurrency: int, per_task: int, image_ids: list[int]) -> dict:
    ImageEmbedding.objects.all().delete()
    app.connection_for_write().default_channel.client.flushdb()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CELERY_WORKER_CONCURRENCY": str(concurrency),
        "DJANGO_DEBUG": "0",  # as in production: no query log growing in the worker
        "DJANGO_HTTPS": "0",
        "DJANGO_SECRET_KEY": os.environ.get("DJANGO_SECRET_KEY") or "worker-benchmark-" + "x" * 40,
    }
    worker = CeleryWorker(env, scratch / "worker.log", queues="embeddings", concurrency=concurrency).start()
    process = psutil.Process(worker.process.pid)
    try:
        # Warm the pool (TensorFlow and the model load in each child), then time the real work.
        warm = image_ids[: concurrency * 2]
        for image_id in warm:
            queue_embeddings([image_id])
        peak = 0
        while ImageEmbedding.objects.count() < len(warm):
            peak = max(peak, worker_rss(process))
            time.sleep(0.2)
        rest = image_ids[len(warm) :]
        started = time.monotonic()
        for start in range(0, len(rest), per_task):
            queue_embeddings(rest[start : start + per_task])
        while ImageEmbedding.objects.count() < len(image_ids):
            peak = max(peak, worker_rss(process))
            time.sleep(0.2)
        seconds = time.monotonic() - started
        children = process.children(recursive=True)
        per_child = [child.memory_info().rss for child in children]
        return {
            "concurrency": concurrency,
            "per_task": per_task,
            "images_per_second": len(rest) / seconds,
            "worker_rss_mb": worker_rss(process) / 2**20,
            "peak_rss_mb": peak / 2**20,
            "child_rss_mb": max(per_child) / 2**20 if per_child else 0,
        }
    finally:
        worker.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", action="store_true", help="Print the results as one JSON line too.")
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    import_products(kaggle_rows(DATASET, limit=args.images))
    image_ids = list(ProductImage.objects.order_by("pk").values_list("pk", flat=True))
    results = [run(concurrency, per_task, image_ids) for concurrency in args.concurrency for per_task in (1, 32)]
    print(f"\nOne Celery worker embedding {len(image_ids)} catalogue images with efficientnet_lite2; {machine()}")
    print_table(
        [
            "concurrency",
            "images per task",
            "images/s",
            "worker RSS MB (all processes)",
            "peak MB",
            "per pool process MB",
        ],
        [
            [
                r["concurrency"],
                r["per_task"],
                f"{r['images_per_second']:.1f}",
                f"{r['worker_rss_mb']:.0f}",
                f"{r['peak_rss_mb']:.0f}",
                f"{r['child_rss_mb']:.0f}",
            ]
            for r in results
        ],
    )
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
