"""Soak and fault benchmark: a store-like load for minutes, through a PostgreSQL restart and a Redis outage.

    .venv/bin/python benchmarks/soak.py [--minutes 10] [--products 2000] [--clients 16] [--quick] [--no-faults]

Runs on a stack of its own (stack.py), leaving the developers' services alone. Clients mix product
pages, grid pages with random filters, the similar-items API and photo searches (MIX). At 40% of the
run PostgreSQL restarts, at 70% Redis stops for 30 s; a request counts in a fault window when it
overlaps it. During the PostgreSQL outage errors must be clean 503s; during the Redis outage and
outside both, none. Gunicorn's RSS is sampled every 10 s. Results go to var/benchmarks/soak.json;
--quick is a 2-minute run on 500 products; --no-faults runs the mix alone (var/benchmarks/mixed-load.json).
"""

import argparse
import json
import os
import random
import re
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import psutil
import requests
from common import DATASET, RESULTS_DIR, machine, print_table
from django.conf import settings
from stack import Stack, isolated_stack

# Request kinds, each a method of Load, and their shares of the load.
MIX = {"product_page": 40, "grid_page": 25, "similar_api": 20, "photo_search_api": 11, "photo_search_page": 4}
FACETS = {"gender": "gender", "category": "master_category", "type": "article_type", "colour": "base_colour"}
REQUEST_TIMEOUT = 30
RSS_INTERVAL = 10
OUTAGES = (("postgres", 0.4, 5), ("redis", 0.7, 30))  # service, when (share of the run), seconds down


def catalogue(stack: Stack) -> list[dict]:
    fields = ", ".join(repr(name) for name in ("pk", "slug", *FACETS.values()))
    code = f"import json; from catalog.models import Product as P; print(json.dumps(list(P.objects.values({fields}))))"
    return json.loads(stack.manage("shell", "-v0", "-c", code).splitlines()[-1])


@dataclass
class Record:
    start: float  # seconds since the load began
    end: float
    kind: str
    path: str
    status: int  # 0: no HTTP answer
    outcome: str  # "ok", "clean 503", else the status (with the API's error code) or the exception
    detail: str = ""  # the start of the body, for failures


def outcome_of(path: str, response: requests.Response) -> str:
    if response.ok:
        return "ok"
    if path.startswith("/api/"):
        try:
            code = response.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            return f"{response.status_code} (not the API's JSON)"
        return "clean 503" if (response.status_code, code) == (503, "unavailable") else f"{response.status_code} {code}"
    clean = response.headers.get("Content-Type", "").startswith("text/html") and "Briefly unavailable" in response.text
    return "clean 503" if response.status_code == 503 and clean else str(response.status_code)


class Load:
    """The shoppers: each client thread draws requests from MIX and records every answer."""

    def __init__(self, url: str, catalogue: list[dict], photos: list[Path]):
        self.url, self.catalogue, self.photos = url, catalogue, photos
        self.records: list[Record] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def client(self, seed: int) -> None:
        rng, session = random.Random(seed), requests.Session()
        while not self.stop.is_set():
            getattr(self, rng.choices(list(MIX), list(MIX.values()))[0])(session, rng)

    def send(self, session, kind: str, method: str, path: str, **kwargs) -> requests.Response | None:
        start = self.now()
        try:
            response = session.request(method, self.url + path, timeout=REQUEST_TIMEOUT, **kwargs)
            status, outcome = response.status_code, outcome_of(path, response)
            detail = "" if response.ok else response.text[:200]
        except requests.RequestException as exc:
            response, status, outcome, detail = None, 0, type(exc).__name__, str(exc)[:200]
        with self.lock:
            self.records.append(Record(start, self.now(), kind, path, status, outcome, detail))
        return response

    def product_page(self, session, rng) -> None:
        product = rng.choice(self.catalogue)
        self.send(session, "product_page", "GET", f"/products/{product['pk']}/{product['slug']}/")

    def grid_page(self, session, rng) -> None:
        """Up to two facets of a random product (so something matches), and a page that exists."""
        product = rng.choice(self.catalogue)
        filters = {param: product[FACETS[param]] for param in rng.sample(list(FACETS), rng.randint(0, 2))}
        matching = sum(all(p[FACETS[name]] == value for name, value in filters.items()) for p in self.catalogue)
        page = rng.randint(1, -(-matching // settings.CATALOG_PAGE_SIZE))
        self.send(session, "grid_page", "GET", "/?" + urlencode({**filters, "page": page}))

    def similar_api(self, session, rng) -> None:
        self.send(session, "similar_api", "GET", f"/api/products/{rng.choice(self.catalogue)['pk']}/similar?k=5")

    def photo_search_api(self, session, rng) -> None:
        photo = rng.choice(self.photos)
        self.send(session, "photo_search_api", "POST", "/api/search", files={"image": (photo.name, photo.read_bytes())})

    def photo_search_page(self, session, rng) -> None:
        """As a shopper does: open the page (its CSRF cookie comes with it), then upload."""
        form = self.send(session, "photo_search_form", "GET", "/search/photo/")
        token = session.cookies.get("csrftoken")
        if form is not None and form.ok and token:
            photo = rng.choice(self.photos)
            self.send(
                session, "photo_search_page", "POST", "/search/photo/", data={"csrfmiddlewaretoken": token},
                files={"image": (photo.name, photo.read_bytes())}, headers={"Referer": self.url + "/search/photo/"},
            )  # fmt: skip


def warm_up(url: str, photo: Path) -> None:
    """Until both web workers have their model loaded, a first search may answer 503 busy."""
    successes, deadline = 0, time.monotonic() + 300
    while successes < 8:
        if time.monotonic() > deadline:
            raise RuntimeError("photo search did not warm up in 5 minutes")
        response = requests.post(url + "/api/search", files={"image": (photo.name, photo.read_bytes())}, timeout=60)
        successes += response.ok


def inject_faults(stack: Stack, load: Load, seconds: float, windows: dict) -> None:
    for service, share, down in OUTAGES:
        if load.stop.wait(max(0.0, share * seconds - load.now())):
            return
        start = load.now()
        stack.services("stop", service)
        stopped = load.now()
        load.stop.wait(down)
        stack.services("start", service)
        windows[service] = {"start": start, "stopped": stopped, "back": load.now()}
        print(f"  {service}: stopped at {start:.1f} s, back at {load.now():.1f} s", flush=True)


def sample_rss(master_pid: int, load: Load, samples: list) -> None:
    master = psutil.Process(master_pid)
    while True:
        try:
            processes = {"master": master} | {f"worker {w.pid}": w for w in master.children()}
            samples.append({"t": load.now()} | {name: p.memory_info().rss / 2**20 for name, p in processes.items()})
        except psutil.Error:  # a worker replaced between listing and reading
            pass
        if load.stop.wait(RSS_INTERVAL):
            return


def window_of(record: Record, windows: dict) -> str:
    """The fault window a request overlaps, if any."""
    for service in ("postgres", "redis"):
        window = windows.get(service)
        if window and record.start < window["back"] and record.end > window["start"]:
            return service
    return "outside"


def percentile(values: list[float], share: float) -> float:
    return sorted(values)[int(share * (len(values) - 1))] * 1000 if values else float("nan")


def summarize(records: list[Record], windows: dict) -> dict:
    failures = Counter((r.kind, window_of(r, windows), r.outcome) for r in records if r.outcome != "ok")
    kinds = []
    for kind in sorted({r.kind for r in records}, key=[*MIX, "photo_search_form"].index):
        latencies = [r.end - r.start for r in records if r.kind == kind and r.outcome == "ok"]
        counted = {(w, o): n for (k, w, o), n in failures.items() if k == kind}
        kinds.append(
            {
                "kind": kind,
                "requests": sum(r.kind == kind for r in records),
                "p50_ms": percentile(latencies, 0.5),
                "p95_ms": percentile(latencies, 0.95),
                "postgres_clean_503": counted.get(("postgres", "clean 503"), 0),
                "postgres_other": sum(n for (w, o), n in counted.items() if w == "postgres" and o != "clean 503"),
                "redis_errors": sum(n for (w, _), n in counted.items() if w == "redis"),
                "outside_errors": sum(n for (w, _), n in counted.items() if w == "outside"),
            }
        )
    unexpected = []  # every failure but a clean 503 during the PostgreSQL outage, with its first example
    for (kind, window, outcome), count in failures.items():
        if (window, outcome) != ("postgres", "clean 503"):
            first = next(r for r in records if (r.kind, window_of(r, windows), r.outcome) == (kind, window, outcome))
            example = f"{first.path} at {first.start:.1f} s: {first.detail!r}"
            unexpected.append({"window": window, "kind": kind, "outcome": outcome, "count": count, "example": example})
    recovery = {}
    if "postgres" in windows:
        back = windows["postgres"]["back"]
        successes = [r.end for r in records if r.outcome == "ok" and r.end >= back]
        outage_failures = [r.end for r in records if r.outcome != "ok" and window_of(r, windows) == "postgres"]
        recovery = {
            "first_success_s": min(successes, default=back) - back,
            "last_failure_s": max(outage_failures, default=back) - back,
        }
    return {"kinds": kinds, "recovery": recovery, "unexpected": unexpected}


def rss_points(samples: list[dict], windows: dict) -> dict:
    """The samples at the start, before each fault, and at the end: memory should stay flat."""

    def last_before(t):
        return max((s for s in samples if s["t"] < t), key=lambda s: s["t"], default=None)

    points = {"start": samples[0] if samples else None}
    for service, label in (("postgres", "before PG restart"), ("redis", "before Redis stop")):
        if service in windows:
            points[label] = last_before(windows[service]["start"])
    points["end"] = samples[-1] if samples else None
    return {label: sample for label, sample in points.items() if sample}


def server_log_problems(log_path: Path) -> list[str]:
    """Everything in the gunicorn log above INFO, tracebacks included."""
    return [
        line for line in log_path.read_text(errors="replace").splitlines() if not re.search(r" INFO |\[INFO\]", line)
    ]


def count_by_logger(lines: list[str]) -> dict[str, int]:
    # Django's lines read "date time LEVEL logger: message", gunicorn's "[date] [pid] [LEVEL] message".
    patterns = (r"\S+ \S+ ([A-Z]+) ([\w.]+):", r"\[.*?\] \[\d+\] \[([A-Z]+)\] ()")
    return dict(
        Counter(
            " ".join(m.groups()).strip()
            for line in lines
            if (m := re.match(patterns[0], line) or re.match(patterns[1], line))
        )
    )


def soak(stack: Stack, seconds: float, clients: int, seed: int, faults: bool = True) -> dict:
    rng = random.Random(seed)
    photos = rng.sample(sorted((DATASET / "images").glob("*.jpg")), 300)
    load = Load(stack.url, catalogue(stack), photos)
    warm_up(stack.url, photos[0])
    windows, samples = {}, []
    threads = [threading.Thread(target=load.client, args=(seed + i,), daemon=True) for i in range(clients)]
    if faults:
        threads.append(threading.Thread(target=inject_faults, args=(stack, load, seconds, windows), daemon=True))
    threads.append(threading.Thread(target=sample_rss, args=(stack.web.pid, load, samples), daemon=True))
    load.t0 = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        time.sleep(seconds)
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(REQUEST_TIMEOUT + 10)
    problems = server_log_problems(stack.log_path)
    return {
        "seconds": load.now(),
        "products": len(load.catalogue),
        "windows": windows,
        **summarize(load.records, windows),
        "rss_mb": rss_points(samples, windows),
        "rss_samples": samples,
        "server_log_counts": count_by_logger(problems),
        "server_log": problems[:10_000],
        "request_columns": ["start s", "latency ms", "kind", "path", "status", "outcome"],
        "requests": [
            [round(r.start, 3), round((r.end - r.start) * 1000, 1), r.kind, r.path, r.status, r.outcome]
            for r in load.records
        ],
    }


def report(results: dict) -> None:
    print(f"\nSoak: {results['minutes']} min, {results['products']} products, {results['clients']} clients")
    print(f"{results['machine']}; load average at start {results['loadavg_start']}, at end {results['loadavg_end']}")
    total = sum(k["requests"] for k in results["kinds"])
    print(f"{total} requests in {results['seconds']:.0f} s ({total / results['seconds']:.1f}/s)\n")
    columns = ["requests", "p50_ms", "p95_ms", "postgres_clean_503", "postgres_other", "redis_errors", "outside_errors"]
    print_table(
        ["kind", "requests", "p50 ms", "p95 ms", "PG outage: clean 503", "PG: other", "Redis: errors", "outside"],
        [[k["kind"], *(f"{k[c]:.0f}" for c in columns)] for k in results["kinds"]],
    )
    print("(latencies of the 2xx answers; errors: non-2xx answers and failed connections)")
    for service, w in results["windows"].items():
        print(f"{service}: stop issued at {w['start']:.1f} s, down at {w['stopped']:.1f} s, back at {w['back']:.1f} s")
    if results["recovery"]:
        r = results["recovery"]
        print(
            f"PostgreSQL back: first success {r['first_success_s']:.2f} s on, last failure {r['last_failure_s']:.2f} s"
        )
    if results["unexpected"]:
        print("\nFailures other than clean 503s during the PostgreSQL outage:")
        print_table(
            ["window", "kind", "outcome", "count", "first example"],
            [[u["window"], u["kind"], u["outcome"], u["count"], u["example"][:150]] for u in results["unexpected"]],
            numeric=False,
        )
    points = results["rss_mb"]
    print("\nRSS, MB (" + ", ".join(f"{label} at {s['t']:.0f} s" for label, s in points.items()) + ")")
    rows = []
    for name in sorted({name for sample in points.values() for name in sample if name != "t"}):
        values = [sample.get(name) for sample in points.values()]
        growth = f"{values[-1] - values[0]:+.0f}" if None not in (values[0], values[-1]) else "n/a"
        rows.append([name, *("-" if v is None else f"{v:.0f}" for v in values), growth])
    print_table(["process", *points, "growth"], rows)
    print(f"\ngunicorn log: {len(results['server_log'])} lines above INFO; by level and logger:")
    print_table(["level logger", "lines"], [[name, n] for name, n in results["server_log_counts"].items()])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--products", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="2 minutes on 500 products")
    parser.add_argument("--no-faults", action="store_true", help="the store-like load alone (a mixed-load benchmark)")
    args = parser.parse_args()
    if args.quick:
        args.minutes, args.products = 2, 500
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop the stack on kill as on Ctrl-C
    results = {"machine": machine(), "minutes": args.minutes, "clients": args.clients}
    print(f"Setting up an isolated stack with {args.products} products ...", flush=True)
    with isolated_stack(args.products) as stack:
        results["loadavg_start"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"Soaking {stack.url} for {args.minutes} min with {args.clients} clients ...", flush=True)
        results |= soak(stack, args.minutes * 60, args.clients, args.seed, faults=not args.no_faults)
        results["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    report(results)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    output = RESULTS_DIR / ("mixed-load.json" if args.no_faults else "soak.json")
    output.write_text(json.dumps(results, indent=1))
    print(f"\nWritten to {output}")


if __name__ == "__main__":
    main()
