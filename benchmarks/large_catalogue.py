"""A 45,000-product catalogue end to end on one machine: generated from the shared photos, imported,
embedded by Celery workers, indexed and served. How long until every product is searchable, what
it takes on disk, and what pages and searches cost at that size.

    .venv/bin/python benchmarks/large_catalogue.py [--products 45000] [--workers 2] [--requests 100]

Runs on a stack of its own (benchmarks/stack.py: PostgreSQL, Redis, workers and gunicorn on loopback
ports, removed at the end). Products beyond the 8,149 shared photos are augmented copies of them
(flipped, cropped, slightly turned, colour and brightness shifted), each a product of its own.
The workers start before the import, as in a store: each batch the import commits is queued and
embedded while the next is imported.
"""

import argparse
import csv
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import psutil
import psycopg
from common import DATASET, RESULTS_DIR, ROOT, machine, print_table
from PIL import Image, ImageEnhance, ImageOps
from stack import Stack


def variant_photo(source: Path, target: Path, seed: int) -> None:
    rng = random.Random(seed)
    image = Image.open(source).convert("RGB")
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    side = int(image.width * rng.uniform(0.82, 1.0))
    left, top = rng.randint(0, image.width - side), rng.randint(0, image.height - side)
    image = image.crop((left, top, left + side, top + side)).resize((224, 224), Image.Resampling.BICUBIC)
    image = image.rotate(rng.uniform(-6, 6), resample=Image.Resampling.BICUBIC, fillcolor=(255, 255, 255))
    image = ImageEnhance.Color(image).enhance(rng.uniform(0.75, 1.25))
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.92, 1.08))
    image.save(target, quality=90)


def _write_photo(job: tuple[Path, Path, int]) -> None:
    source, target, seed = job
    if seed == 0:
        shutil.copyfile(source, target)
    else:
        variant_photo(source, target, seed)


def generate_catalogue(folder: Path, products: int) -> Path:
    """A Kaggle-layout folder of `products` products: the shared ones, then augmented copies."""
    with (DATASET / "styles.csv").open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = [row for row in reader if (DATASET / "images" / f"{row[0]}.jpg").is_file()]
    (folder / "images").mkdir(parents=True, exist_ok=True)
    generated, jobs = [], []
    for number in range(products):
        row = rows[number % len(rows)]
        copy = number // len(rows)
        sku = row[0] if copy == 0 else f"{row[0]}-v{copy}"
        generated.append([sku, *row[1:]])
        jobs.append((DATASET / "images" / f"{row[0]}.jpg", folder / "images" / f"{sku}.jpg", number if copy else 0))
    with Pool(os.cpu_count()) as pool:
        pool.map(_write_photo, jobs, chunksize=256)
    with (folder / "styles.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([header, *generated])
    return folder


def start_workers(stack: Stack, count: int, directory: Path) -> list[subprocess.Popen]:
    workers = []
    for number in range(count):
        log = (directory / f"worker-{number}.log").open("a")
        command = [sys.executable, "-m", "celery", "-A", "fashionsite", "worker", "-Q", "embeddings,celery"]
        workers.append(
            subprocess.Popen(
                [*command, "-c", "1", "-n", f"w{number}@%h", "-l", "warning"],
                cwd=ROOT,
                env=stack.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    return workers


def tree_rss(processes: list[subprocess.Popen]) -> int:
    total = 0
    for process in processes:
        try:
            parent = psutil.Process(process.pid)
            total += sum(p.memory_info().rss for p in [parent, *parent.children(recursive=True)])
        except psutil.NoSuchProcess:
            pass
    return total


def embedded_count(database_url: str) -> tuple[int, int]:
    """(images, images with an embedding or a failure)."""
    with psycopg.connect(database_url) as connection:
        images = connection.execute("SELECT count(*) FROM catalog_productimage").fetchone()[0]
        done = connection.execute("SELECT count(DISTINCT image_id) FROM recommender_imageembedding").fetchone()[0]
    return images, done


def sizes(stack: Stack) -> dict:
    with psycopg.connect(stack.env["DATABASE_URL"]) as connection:
        database = connection.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        embeddings = connection.execute("SELECT pg_total_relation_size('recommender_imageembedding')").fetchone()[0]
    data = Path(stack.env["FASHIONSITE_DATA_DIR"])

    def folder_bytes(name: str) -> int:
        return sum(path.stat().st_size for path in (data / name).rglob("*") if path.is_file())

    return {
        "database_mb": database / 2**20,
        "embeddings_table_mb": embeddings / 2**20,
        "media_mb": folder_bytes("media") / 2**20,
        "index_cache_mb": folder_bytes("index") / 2**20,
        "index_store_mb": folder_bytes("index-store") / 2**20,
    }


def timed(step, queries, warm_up) -> list[float]:
    """Milliseconds of each call of `step`, one query after another, after an untimed pass over
    other queries (a serving process has much of its index in memory, but not what the next
    shopper's query needs)."""
    for query in warm_up:
        step(query)
    times = []
    for query in queries:
        started = time.perf_counter()
        step(query)
        times.append((time.perf_counter() - started) * 1000)
    return times


def measure_search_path(queries: int) -> dict:
    """Run inside the stack's environment, on its real vectors: the index step alone (Annoy's
    candidates re-ranked, one thread) with its recall@5 against exact search, and the whole
    in-process path a product page takes (nearest_products: index, recent embeddings, products)."""
    from recommender.active import active_backbone
    from recommender.retrieval import nearest_products
    from recommender.retrieval.build import Calibration
    from recommender.retrieval.reader import index_reader
    from recommender.retrieval.search import CANDIDATES_PER_RESULT

    backbone = active_backbone()
    index = index_reader(backbone).get()
    shuffled = np.random.default_rng(0).permutation(len(index))
    rows, warm_up_rows = np.sort(shuffled[:queries]), np.sort(shuffled[queries : 2 * queries])
    calibration = Calibration.of_index(index, rows)  # the build's own recall measure
    warm_up = np.asarray(index.vectors[warm_up_rows], np.float32)
    search_k = index.search_k(5 * CANDIDATES_PER_RESULT)
    index_ms = timed(lambda query: index.nearest(query, 5 * CANDIDATES_PER_RESULT), calibration.queries, warm_up)
    path_ms = timed(lambda query: nearest_products(query, backbone, k=5), calibration.queries, warm_up)
    return {
        "backbone": backbone.name,
        "dimension": backbone.dimension,
        "index_items": index.manifest.items,
        "n_trees": index.manifest.n_trees,
        "search_k": search_k,
        "projected_dimension": index.manifest.projected_dimension,
        "queries": len(rows),
        "recall_at_5": calibration.recall(index.annoy, index.vectors, index.projection, search_k),
        "index_qps": 1000 / statistics.mean(index_ms),
        "index_p50_ms": statistics.median(index_ms),
        "path_p50_ms": statistics.median(path_ms),
        "path_p95_ms": sorted(path_ms)[int(0.95 * (len(path_ms) - 1))],
    }


def run(products: int, workers: int, requests: int) -> dict:
    directory = Path(tempfile.mkdtemp(prefix="large-catalogue-"))
    directory.chmod(0o711)  # the postgres account must reach its cluster below it
    results: dict = {"machine": machine(), "products": products, "workers": workers}
    stack = processes = None
    try:
        started = time.monotonic()
        print(f"Generating {products:,} products in {directory} ...", flush=True)
        folder = generate_catalogue(directory / "catalogue", products)
        results["generate_s"] = time.monotonic() - started

        stack = Stack(directory)
        stack.services("start")
        stack.manage("migrate", "--noinput", "-v0")
        stack.env["EMBEDDING_THREADS"] = "1"  # one model thread per worker process, one process per core
        processes = start_workers(stack, workers, directory)

        started = time.monotonic()
        print("Importing (the workers embed as batches commit) ...", flush=True)
        results["import_report"] = stack.manage("import_catalog", str(folder)).strip().splitlines()[-1]
        results["import_s"] = time.monotonic() - started
        peak_rss, last_print = 0, 0.0
        while True:
            images, done = embedded_count(stack.env["DATABASE_URL"])
            peak_rss = max(peak_rss, tree_rss(processes))
            if done >= images:
                break
            if time.monotonic() - last_print > 30:
                elapsed = time.monotonic() - started
                print(f"  {done:,}/{images:,} embedded after {elapsed:.0f} s ({done / elapsed:.1f}/s)", flush=True)
                last_print = time.monotonic()
            time.sleep(2)
        results["embedded_s"] = time.monotonic() - started
        results["workers_peak_rss_mb"] = peak_rss / 2**20
        print("Building the index ...", flush=True)
        index_started = time.monotonic()
        results["build_index"] = stack.manage("build_index").strip().splitlines()[-1]
        results["index_s"] = time.monotonic() - index_started
        results["searchable_s"] = time.monotonic() - started
        results |= sizes(stack)

        print("Measuring the search path and the pages ...", flush=True)
        search = subprocess.run(
            [sys.executable, __file__, "--search-path", "1000"],
            cwd=ROOT,
            env={**stack.env, "INDEX_SYNC_SECONDS": "0"},
            capture_output=True,
            text=True,
            check=True,
        )
        results["search_path"] = json.loads(search.stdout.strip().splitlines()[-1])
        stack.manage("collectstatic", "--noinput", "-v0")
        stack.start_web()
        latency = subprocess.run(
            [sys.executable, "benchmarks/http_latency.py", "--url", stack.url, "--requests", str(requests)]
            + ["--concurrency", "1", "4"],
            cwd=ROOT,
            env={**stack.env, "DJANGO_SETTINGS_MODULE": "fashionsite.settings"},
            capture_output=True,
            text=True,
            check=True,
        )
        results["http"] = latency.stdout
    finally:
        for process in processes or []:
            process.terminate()
        for process in processes or []:
            process.wait(30)
        if stack:
            stack.stop()
        shutil.rmtree(directory, ignore_errors=True)
    return results


def report(results: dict) -> None:
    print(f"\n{results['machine']}\n")
    rows = [
        ["products", f"{results['products']:,}", results["import_report"]],
        ["generate photos", f"{results['generate_s']:.0f} s", "augmented copies of the shared photos"],
        ["import", f"{results['import_s']:.0f} s", f"{results['products'] / results['import_s']:.0f} products/s"],
        [
            "import + embed",
            f"{results['embedded_s']:.0f} s",
            f"{results['workers']} workers, {results['products'] / results['embedded_s']:.1f} photos/s, "
            f"peak RSS {results['workers_peak_rss_mb']:.0f} MB",
        ],
        ["index build", f"{results['index_s']:.1f} s", results["build_index"]],
        ["fully searchable", f"{results['searchable_s'] / 60:.1f} min", "from the start of the import"],
        ["PostgreSQL", f"{results['database_mb']:.0f} MB", f"embeddings table {results['embeddings_table_mb']:.0f} MB"],
        ["photos (media)", f"{results['media_mb']:.0f} MB", ""],
        [
            "index",
            f"{results['index_store_mb']:.0f} MB",
            f"published; each host's cache {results['index_cache_mb']:.0f} MB",
        ],
        [
            "index step",
            f"{results['search_path']['index_qps']:.0f} queries/s",
            f"one thread; recall@5 {results['search_path']['recall_at_5']:.4f} against exact search; "
            f"{results['search_path']['index_items']:,} × {results['search_path']['dimension']}-d "
            f"({results['search_path']['backbone']}), {results['search_path']['n_trees']} trees, "
            f"search_k {results['search_path']['search_k']:,}"
            + (
                f", Annoy on {results['search_path']['projected_dimension']} principal axes"
                if results["search_path"]["projected_dimension"]
                else ""
            ),
        ],
        [
            "search path",
            f"p50 {results['search_path']['path_p50_ms']:.2f} ms",
            f"p95 {results['search_path']['path_p95_ms']:.2f} ms: nearest_products k=5 in one process "
            "(index, recent embeddings, products from PostgreSQL)",
        ],
    ]
    print_table(["what", "figure", "detail"], rows, numeric=False)
    print("\nPages and searches at this size (benchmarks/http_latency.py):\n" + results["http"])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=45_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--requests", type=int, default=100, help="per HTTP scenario and concurrency")
    parser.add_argument("--search-path", type=int, help=argparse.SUPPRESS)  # the step run inside the stack
    args = parser.parse_args()
    if args.search_path:
        print(json.dumps(measure_search_path(args.search_path)))
        return
    results = run(args.products, args.workers, args.requests)
    report(results)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    output = RESULTS_DIR / f"large-catalogue-{args.products}.json"
    output.write_text(json.dumps(results, indent=1))
    print(f"\nWritten to {output}")


if __name__ == "__main__":
    main()
