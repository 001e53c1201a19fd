"""Choosing Annoy's n_trees and search_k by measurement, and timing index builds at scale.

    .venv/bin/python benchmarks/index_params.py sweep          recall@5 and query time on the shared catalogue
    .venv/bin/python benchmarks/index_params.py build 45000    build time and memory for N synthetic vectors

Recall@5 is against exact cosine search, with each catalogue item as the query (itself excluded).
"raw" is Annoy's own top 5; "re-ranked" is what the site serves: the top 5 of 40 Annoy candidates
re-ranked by exact cosine. Synthetic vectors are real embeddings plus noise, normalised, so that
they cluster like real ones.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from annoy import AnnoyIndex
from common import RESULTS_DIR, dataset_items, machine, print_table

from recommender.encoding.preprocessing import DEFAULT_SQUARE_MODE

BACKBONE = "efficientnet_lite2"
CANDIDATES = 40  # k × CANDIDATES_PER_RESULT in recommender/search.py


def real_vectors() -> np.ndarray:
    items = dataset_items()
    cache = RESULTS_DIR / f"{BACKBONE}-{DEFAULT_SQUARE_MODE}-{len(items)}.npy"
    if not cache.is_file():
        from precision_at_5 import embed_files

        embed_files([item["path"] for item in items], BACKBONE, DEFAULT_SQUARE_MODE)
    return np.load(cache)


def build(vectors: np.ndarray, n_trees: int) -> tuple[AnnoyIndex, float]:
    started = time.monotonic()
    index = AnnoyIndex(vectors.shape[1], "angular")
    for row, vector in enumerate(vectors):
        index.add_item(row, vector)
    index.build(n_trees, n_jobs=-1)
    return index, time.monotonic() - started


def sweep(queries: int, trees=(10, 25, 50, 100), search_ks=(-1, 5000, 20000)) -> list[dict]:
    vectors = real_vectors()
    rng = np.random.default_rng(0)
    picked = rng.choice(len(vectors), size=min(queries, len(vectors)), replace=False)
    exact = []
    for row in picked:
        scores = vectors @ vectors[row]
        scores[row] = -np.inf
        exact.append(set(np.argsort(-scores)[:5]))
    results = []
    for n_trees in trees:
        index, seconds = build(vectors, n_trees)
        with tempfile.NamedTemporaryFile(suffix=".ann") as file:
            index.save(file.name)
            size = Path(file.name).stat().st_size
        for search_k in search_ks:
            raw_hits = reranked_hits = 0
            latencies = []
            for row, truth in zip(picked, exact):
                started = time.perf_counter()
                candidates = [
                    c for c in index.get_nns_by_vector(vectors[row], CANDIDATES + 1, search_k=search_k) if c != row
                ]
                reranked = np.array(candidates)[np.argsort(-(vectors[candidates] @ vectors[row]))[:5]]
                latencies.append(time.perf_counter() - started)
                raw_hits += len(truth & set(candidates[:5]))
                reranked_hits += len(truth & set(reranked.tolist()))
            results.append(
                {
                    "items": len(vectors),
                    "queries": len(picked),
                    "n_trees": n_trees,
                    "search_k": search_k,
                    "recall_raw": raw_hits / (5 * len(picked)),
                    "recall_reranked": reranked_hits / (5 * len(picked)),
                    "p50_ms": float(np.percentile(latencies, 50) * 1000),
                    "p95_ms": float(np.percentile(latencies, 95) * 1000),
                    "build_seconds": seconds,
                    "index_mb": size / 2**20,
                }
            )
    return results


def print_sweep(results: list[dict]) -> None:
    print(f"\nAnnoy on {results[0]['items']} real {BACKBONE} embeddings, {results[0]['queries']} queries; {machine()}")
    print_table(
        ["n_trees", "search_k", "recall@5 raw", "recall@5 re-ranked", "query p50 ms", "p95 ms", "build s", "MB"],
        [
            [
                r["n_trees"],
                "default" if r["search_k"] == -1 else r["search_k"],
                f"{r['recall_raw']:.3f}",
                f"{r['recall_reranked']:.4f}",
                f"{r['p50_ms']:.2f}",
                f"{r['p95_ms']:.2f}",
                f"{r['build_seconds']:.1f}",
                f"{r['index_mb']:.0f}",
            ]
            for r in results
        ],
    )


def synthetic(count: int, n_trees: int) -> dict:
    base = real_vectors()
    rng = np.random.default_rng(1)
    vectors = np.empty((count, base.shape[1]), dtype=np.float32)
    for start in range(0, count, 50_000):
        block = base[rng.integers(0, len(base), size=min(50_000, count - start))]
        block = block + rng.normal(0, 0.02, size=block.shape).astype(np.float32)
        vectors[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    index, seconds = build(vectors, n_trees)
    with tempfile.TemporaryDirectory() as directory:
        started = time.monotonic()
        index.save(f"{directory}/items.ann")
        save_seconds = time.monotonic() - started
        size = Path(f"{directory}/items.ann").stat().st_size
    query = vectors[:200]
    started = time.perf_counter()
    for vector in query:
        index.get_nns_by_vector(vector, CANDIDATES)
    per_query = (time.perf_counter() - started) / len(query)
    return {
        "count": count,
        "n_trees": n_trees,
        "build_seconds": seconds,
        "save_seconds": save_seconds,
        "index_mb": size / 2**20,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "query_ms": per_query * 1000,
    }


def builds(counts: list[int], n_trees: int) -> list[dict]:
    """One process per build, so that peak memory is the build's own."""
    results = []
    for count in counts:
        output = subprocess.run(
            [sys.executable, __file__, "build", str(count), "--trees", str(n_trees), "--one"],
            capture_output=True,
            text=True,
        )
        results.append(json.loads([line for line in output.stdout.splitlines() if line.startswith("{")][-1]))
    return results


def print_builds(results: list[dict]) -> None:
    print(f"\nAnnoy builds of synthetic 1280-d vectors (real embeddings plus noise); {machine()}")
    print_table(
        ["vectors", "n_trees", "build s", "save s", "index MB", "peak RSS MB", "query ms (40 nn)"],
        [
            [
                f"{r['count']:,}",
                r["n_trees"],
                f"{r['build_seconds']:.1f}",
                f"{r['save_seconds']:.1f}",
                f"{r['index_mb']:.0f}",
                f"{r['peak_rss_mb']:.0f}",
                f"{r['query_ms']:.2f}",
            ]
            for r in results
        ],
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sweep_parser = sub.add_parser("sweep")
    sweep_parser.add_argument("--queries", type=int, default=1000)
    build_parser = sub.add_parser("build")
    build_parser.add_argument("counts", type=int, nargs="+")
    build_parser.add_argument("--trees", type=int, default=25)
    build_parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.command == "sweep":
        print_sweep(sweep(args.queries))
    elif args.one:
        print(json.dumps(synthetic(args.counts[0], args.trees)))
    else:
        print_builds(builds(args.counts, args.trees))


if __name__ == "__main__":
    main()
