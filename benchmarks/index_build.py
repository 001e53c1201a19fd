"""An index build at a million products, through the site's own path: synthetic embeddings stored in
PostgreSQL like real ones, then `build_index` streams them into a version and publishes it. What it
costs: wall time, peak memory of the build process, disk, and the served recall and speed.

    .venv/bin/python benchmarks/index_build.py [--items 1000000] [--dimension 1280]

Runs on a stack of its own (benchmarks/stack.py: PostgreSQL in a temporary directory, removed at the
end). The vectors are clustered unit vectors with a power-law spectrum (2,000 clusters, a shared
direction), like the real catalogue's, from a fixed seed; no photos are involved.
"""

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import psycopg
from common import RESULTS_DIR, ROOT, machine, print_table
from stack import Stack

CLUSTERS = 2000
CHUNK = 20_000


def clustered_vectors(count: int, dimension: int, seed: int = 0):
    """Unit vectors in chunks: a shared direction + one of CLUSTERS centres + noise, all with a
    power-law spectrum in a random basis, so that the effective dimension is a few dozen."""
    geometry = np.random.default_rng(12345 + dimension)
    basis = np.linalg.qr(geometry.standard_normal((dimension, dimension)))[0].astype(np.float32)
    spectrum = ((np.arange(dimension) + 1.0) ** -0.5).astype(np.float32)
    spectrum /= np.linalg.norm(spectrum)
    shared = geometry.standard_normal(dimension).astype(np.float32)
    shared /= np.linalg.norm(shared)
    centres = (geometry.standard_normal((CLUSTERS, dimension)).astype(np.float32) * spectrum) @ basis.T
    rng = np.random.default_rng(seed)
    for start in range(0, count, CHUNK):
        size = min(CHUNK, count - start)
        noise = (rng.standard_normal((size, dimension), dtype=np.float32) * spectrum) @ basis.T
        vectors = shared + 1.2 * centres[rng.integers(0, CLUSTERS, size)] + 0.4 * noise
        yield vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def load_catalogue(database_url: str, items: int, dimension: int, space: str) -> tuple[float, int]:
    """`items` products with one image and one stored embedding each: (seconds taken, database bytes)."""
    started = time.monotonic()
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute(
            """INSERT INTO catalog_product (sku, name, slug, gender, master_category, sub_category, article_type,
                   base_colour, season, usage, created_at, updated_at)
               SELECT 'S' || n, 'Product ' || n, 'product-' || n, '', '', '', '', '', '', '', now(), now()
               FROM generate_series(1, %s) AS n""",
            [items],
        )
        connection.execute(
            """INSERT INTO catalog_productimage (product_id, image, width, height, checksum, position, created_at,
                   updated_at)
               SELECT id, 'products/none.jpg', 224, 224, md5(sku), 0, now(), now() FROM catalog_product""",
        )
        image_ids = np.array(connection.execute("SELECT id FROM catalog_productimage ORDER BY id").fetchall())[:, 0]
        copy_sql = """COPY recommender_imageembedding (image_id, backbone, image_checksum, status, vector, dimension,
                          error, computed_at) FROM STDIN"""
        with connection.cursor() as cursor, cursor.copy(copy_sql) as copy:
            row = 0
            for vectors in clustered_vectors(items, dimension):
                for vector in vectors:
                    copy.write_row((int(image_ids[row]), space, "-", "done", vector.tobytes(), dimension, "", "now"))
                    row += 1
                print(f"  {row:,} embeddings stored", file=sys.stderr, flush=True)
        connection.execute("VACUUM ANALYZE")
        size = connection.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    return time.monotonic() - started, size


class PeakMemory:
    """Peak anonymous and file-backed resident memory of this process, sampled every 50 ms."""

    def __init__(self):
        self.anonymous = self.file = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
            self.anonymous = max(self.anonymous, int(fields["RssAnon"].split()[0]) * 1024)
            self.file = max(self.file, int(fields["RssFile"].split()[0]) * 1024)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def measure_build(dimension: int, space: str, queries: int) -> dict:
    """Run inside the stack's environment: the build (peak RSS of this process), then the served
    index step's recall@5 against exact search over the stored vectors and its speed."""
    from recommender.encoding.backbones import get_backbone
    from recommender.retrieval import build_index
    from recommender.retrieval.build import Calibration
    from recommender.retrieval.reader import IndexReader
    from recommender.retrieval.search import CANDIDATES_PER_RESULT
    from recommender.retrieval.versions import version_size

    backbone = replace(get_backbone("efficientnet_lite2"), name=space, dimension=dimension)
    with PeakMemory() as memory:
        started = time.monotonic()
        result = build_index(backbone)
        seconds = time.monotonic() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    manifest = result.manifest
    index = IndexReader(backbone).get()
    rows = np.sort(np.random.default_rng(1).choice(manifest.items, size=queries, replace=False))
    calibration = Calibration.of_index(index, rows)  # the build's own recall measure
    search_k = index.search_k(5 * CANDIDATES_PER_RESULT)
    recall = calibration.recall(index.annoy, index.vectors, index.projection, search_k)
    times = []
    for query in calibration.queries:
        began = time.perf_counter()
        index.nearest(query, 5 * CANDIDATES_PER_RESULT)
        times.append(time.perf_counter() - began)
    return {
        "build_s": seconds,
        "reason": result.reason,
        "peak_rss_bytes": peak,
        "peak_anonymous_bytes": memory.anonymous,
        "peak_file_bytes": memory.file,
        "version_bytes": version_size(backbone),
        "search_k": search_k,
        "projected_dimension": manifest.projected_dimension,
        "n_trees": manifest.n_trees,
        "recall_at_5": recall,
        "index_qps": 1 / statistics.mean(times),
        "queries": len(rows),
    }


def run(items: int, dimension: int, queries: int) -> dict:
    directory = Path(tempfile.mkdtemp(prefix="index-build-"))
    directory.chmod(0o711)  # the postgres account must reach its cluster below it
    space = f"synthetic-{dimension}"
    results: dict = {"machine": machine(), "items": items, "dimension": dimension}
    stack = None
    try:
        stack = Stack(directory)
        stack.services("start", "postgres")
        stack.manage("migrate", "--noinput", "-v0")
        print(f"Storing {items:,} products with {dimension}-d embeddings ...", file=sys.stderr, flush=True)
        results["load_s"], results["database_bytes"] = load_catalogue(
            stack.env["DATABASE_URL"], items, dimension, space
        )
        print("Building the index ...", file=sys.stderr, flush=True)
        inner = subprocess.run(
            [sys.executable, __file__, "--measure", space, str(dimension), str(queries)],
            cwd=ROOT,
            env={**stack.env, "INDEX_SYNC_SECONDS": "0"},
            capture_output=True,
            text=True,
            check=True,
        )
        results |= json.loads(inner.stdout.strip().splitlines()[-1])
        return results
    finally:
        if stack is not None:
            stack.services("stop")
        shutil.rmtree(directory, ignore_errors=True)


def report(results: dict) -> None:
    mb = 1 << 20
    print(f"Index build through PostgreSQL: {results['items']:,} × {results['dimension']}-d ({results['machine']})")
    axes = f" on {results['projected_dimension']} principal axes" if results["projected_dimension"] else ""
    rows = [
        ["store the embeddings", f"{results['load_s']:.0f} s", f"PostgreSQL {results['database_bytes'] / mb:,.0f} MB"],
        [
            "build",
            f"{results['build_s']:.0f} s",
            f"streamed from PostgreSQL, {results['n_trees']} trees{axes}, published; "
            f"chose search_k {results['search_k']:,}",
        ],
        [
            "build peak RSS",
            f"{results['peak_rss_bytes'] / mb:,.0f} MB",
            f"anonymous {results['peak_anonymous_bytes'] / mb:,.0f} MB, "
            f"file-backed {results['peak_file_bytes'] / mb:,.0f} MB (sampled every 50 ms)",
        ],
        ["index version", f"{results['version_bytes'] / mb:,.0f} MB", "on each host, and once in the index storage"],
        [
            "index step",
            f"{results['index_qps']:,.0f} queries/s",
            f"one thread; recall@5 {results['recall_at_5']:.4f} against exact search ({results['queries']} queries)",
        ],
    ]
    print_table(["what", "figure", "detail"], rows, numeric=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dimension", type=int, default=1280)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--measure", nargs=3, help=argparse.SUPPRESS)  # the step run inside the stack
    args = parser.parse_args()
    if args.measure:
        space, dimension, queries = args.measure
        print(json.dumps(measure_build(int(dimension), space, int(queries))))
        return
    results = run(args.items, args.dimension, args.queries)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"index_build_{args.items}x{args.dimension}.json").write_text(json.dumps(results, indent=2))
    report(results)


if __name__ == "__main__":
    main()
