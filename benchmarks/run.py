"""Every speed and memory figure in one run, printed as one summary table.

    .venv/bin/python benchmarks/run.py [--quick] [--url URL] [--only embed,index,http,worker] [--json FILE]

Needs the project's PostgreSQL and Redis (bin/services start). The HTTP figures need a catalogue
with embeddings and an index in the configured database (e.g. import_catalog, embed_catalog,
build_index); without --url a gunicorn server is started for the run. --quick leaves out the
1M-vector build (about 4 minutes and 12 GB) and sends fewer requests. Each part is also a script
of its own with more detail: embed_throughput.py, index_params.py, http_latency.py,
worker_throughput.py, precision_at_5.py. Longer runs on a stack of their own: soak.py (10 minutes
of store-like load through a PostgreSQL restart and a Redis outage; --no-faults for the load alone).
"""

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import embed_throughput
import http_latency
import index_params
from common import ROOT, machine, print_table
from django.conf import settings
from stack import free_port

from catalog.models import Product

PARTS = ("embed", "index", "http", "worker")


class WebServer:
    """gunicorn on the configured database, as bin/demo runs it."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "DJANGO_DEBUG": "0",
            "DJANGO_HTTPS": "0",
            "DJANGO_SERVE_MEDIA": "1",
            "DJANGO_SECRET_KEY": os.environ.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(50),
        }

    def __enter__(self):
        subprocess.run(
            [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"], cwd=ROOT, env=self.env, check=True
        )
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "fashionsite.wsgi",
                "--config",
                "fashionsite/gunicorn.conf.py",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--access-logfile",
                "/dev/null",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url + "/api/recommender/status", timeout=2)
                return self
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("the web server did not start")

    def __exit__(self, *exc):
        self.process.terminate()
        self.process.wait(30)


def summary_rows(results: dict) -> list[list]:
    rows = []
    for r in results.get("embed", []):
        if "error" in r:
            rows.append(["embedding", f"{r['backbone']}, {r['runtime']}", "n/a", r["error"][:70]])
            continue
        ratio = embed_throughput.speedup(r, results["embed"])
        note = f"; {r['note']}" if r.get("note") else ""
        predict = f"; predict per image {r['predict_per_image']:.1f}" if "predict_per_image" in r else ""
        rows.append(
            [
                "embedding (decode incl.)",
                f"{r['backbone']}, {r['runtime']}",
                f"{max(r['batch1'], r['batch32']):.1f} img/s" + (f" ({ratio:.1f}x predict)" if ratio else ""),
                f"batch 1 {r['batch1']:.1f}, batch 32 {r['batch32']:.1f}{predict}; "
                f"RSS {r['rss_loaded_mb']:.0f}/{r['peak_rss_mb']:.0f} MB{note}",
            ]
        )
    for r in results.get("pools", []):
        if "error" not in r:
            rows.append(
                [
                    "LiteRT pool",
                    f"{r['pool']} (interpreters x threads), {embed_throughput.CALLERS} callers",
                    f"{r['concurrent']:.1f} img/s",
                    f"p50 {r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms; one caller {r['alone']:.1f} img/s",
                ]
            )
    for r in results.get("annoy", []):
        rows.append(
            [
                "Annoy, real vectors",
                f"{r['items']:,} items, {r['n_trees']} trees, search_k {r['search_k']}",
                f"query p50 {r['p50_ms']:.2f} ms",
                f"p95 {r['p95_ms']:.2f} ms; recall@5 vs exact {r['recall_reranked']:.4f} (40 candidates, re-ranked); "
                f"build {r['build_seconds']:.1f} s, {r['index_mb']:.0f} MB",
            ]
        )
    for r in results.get("builds", []):
        rows.append(
            [
                "Annoy build, synthetic",
                f"{r['count']:,} x 1280-d, {r['n_trees']} trees",
                f"{r['build_seconds']:.1f} s",
                f"save {r['save_seconds']:.1f} s; {r['index_mb']:,.0f} MB on disk; "
                f"peak RSS {r['peak_rss_mb']:,.0f} MB; "
                f"query {r['query_ms']:.2f} ms",
            ]
        )
    by_name: dict[str, list] = {}
    for r in results.get("http", []):
        by_name.setdefault(r["name"], []).append(r)
    for name, runs in by_name.items():
        rows.append(
            [
                "HTTP",
                name,
                "p50 " + " / ".join(f"{r['p50']:.0f}" for r in runs) + " ms",
                "p95 "
                + " / ".join(f"{r['p95']:.0f}" for r in runs)
                + " ms at "
                + "/".join(str(r["clients"]) for r in runs)
                + " clients; server: "
                + ", ".join(f"{stage} {ms:.1f}" for stage, ms in runs[0]["stages"].items())
                + " ms (1 client)",
            ]
        )
    for r in results.get("worker", []):
        rows.append(
            [
                "Celery worker",
                f"concurrency {r['concurrency']}, {r['per_task']} image(s) per task",
                f"{r['images_per_second']:.1f} img/s",
                f"RSS {r['worker_rss_mb']:.0f} MB (all processes), {r['child_rss_mb']:.0f} MB per pool process",
            ]
        )
    return rows


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--url", help="Measure this running site instead of starting one.")
    parser.add_argument("--only", default=",".join(PARTS))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", action="store_true", help="Print the summary as a Markdown table too.")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    results: dict = {"machine": machine()}

    if "embed" in parts:
        print("Embedding throughput ...", flush=True)
        backbones = ["efficientnet_lite2"] if args.quick else ["efficientnet_lite2", "efficientnet_lite0", "resnet50"]
        results["embed"] = embed_throughput.measure_all(backbones, list(embed_throughput.RUNTIMES), 256)
        results["pools"] = embed_throughput.measure_pools("efficientnet_lite2", ["1x2", "2x1", "4x1"], 256)
    if "index" in parts:
        print("Annoy query time and recall ...", flush=True)
        results["annoy"] = index_params.sweep(1000, trees=(settings.INDEX_TREES,), search_ks=(settings.INDEX_SEARCH_K,))
        print("Annoy builds ...", flush=True)
        results["builds"] = index_params.builds(
            [8_149, 45_000] if args.quick else [8_149, 45_000, 1_000_000], settings.INDEX_TREES
        )
    if "http" in parts:
        if not Product.objects.exists():
            print("HTTP: skipped, the database has no catalogue", flush=True)
        else:
            print("HTTP latency ...", flush=True)
            requests = 60 if args.quick else 200
            if args.url:
                results["http"] = http_latency.measure(args.url, requests)
            else:
                with WebServer() as server:
                    results["http"] = http_latency.measure(server.url, requests)
    if "worker" in parts:
        print("Celery worker ...", flush=True)
        output = subprocess.run(
            [
                sys.executable,
                str(Path(__file__).with_name("worker_throughput.py")),
                "--json",
                "--concurrency",
                "1",
                "--images",
                "128" if args.quick else "256",
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        lines = [line for line in output.stdout.splitlines() if line.startswith("[")]
        results["worker"] = json.loads(lines[-1]) if lines else []
        if not lines:
            print(output.stderr[-2000:])

    print(f"\nSummary; all figures from {results['machine']}")
    print_table(["area", "what", "figure", "detail"], summary_rows(results), numeric=False)
    if args.markdown:
        print(markdown_table(["area", "what", "figure", "detail"], summary_rows(results)))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
