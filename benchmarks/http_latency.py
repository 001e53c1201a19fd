"""HTTP latency of the running site under 1, 4 and 16 concurrent clients.

    .venv/bin/python benchmarks/http_latency.py [--url http://127.0.0.1:8000] [--requests 200]

Start the site first (bin/demo, or gunicorn with the same DATABASE_URL). Measures the product
page (with its similar items) for random products (mostly not cached yet) and for 20 popular
ones (cached after their first view in each web process), the similar-items
API, the search-by-photo page and the search API (catalogue photos as uploads), and reports the
server's own Server-Timing breakdown of where the time goes.
"""

import argparse
import http.client
import random
import re
import statistics
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from common import DATASET, machine, print_table

from catalog.models import Product


class Client:
    """One keep-alive connection, like one browser tab."""

    def __init__(self, base: str):
        parts = urlsplit(base)
        self.host, self.port = parts.hostname, parts.port or 80
        self.connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        headers = dict(headers or {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        for attempt in range(2):
            try:
                self.connection.request(method, path, body=body, headers=headers)
                response = self.connection.getresponse()
                data = response.read()
                break
            except (http.client.HTTPException, ConnectionError):
                self.connection.close()
                self.connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
                if attempt:
                    raise
        for header in response.headers.get_all("Set-Cookie") or []:
            name, _, rest = header.partition("=")
            self.cookies[name] = rest.split(";", 1)[0]
        return response.status, response.headers, data


def multipart(fields: dict[str, str], file_field: str, file_name: str, content: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{file_name}"\r\n'
        f"Content-Type: image/jpeg\r\n\r\n".encode()
        + content
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _as_request(encoded: tuple[bytes, str]) -> tuple[bytes, dict]:
    body, content_type = encoded
    return body, {"Content-Type": content_type}


def server_timing(headers) -> dict[str, float]:
    value = headers.get("Server-Timing") or ""
    return {match[0]: float(match[1]) for match in re.findall(r"(\w+);dur=([0-9.]+)", value)}


def run(name: str, make_request, clients: int, count: int, base: str) -> dict:
    local = threading.local()
    latencies, timings, failures = [], [], []
    lock = threading.Lock()

    def one(index: int):
        if not hasattr(local, "client"):
            local.client = Client(base)
        started = time.perf_counter()
        status, headers, _ = make_request(local.client, index)
        elapsed = time.perf_counter() - started
        with lock:
            (latencies if status == 200 else failures).append(elapsed)
            timings.append(server_timing(headers))

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(count)))
    wall = time.perf_counter() - started
    stages = sorted({stage for timing in timings for stage in timing})
    return {
        "name": name,
        "clients": clients,
        "p50": statistics.median(latencies) * 1000,
        "p95": sorted(latencies)[int(0.95 * (len(latencies) - 1))] * 1000,
        "throughput": len(latencies) / wall,
        "failures": len(failures),
        "stages": {stage: statistics.mean(t[stage] for t in timings if stage in t) for stage in stages},
    }


def measure(base: str, requests: int = 200, concurrency=(1, 4, 16)) -> list[dict]:
    base = base.rstrip("/")

    products = list(Product.objects.exclude(images=None).values_list("pk", "slug", "sku"))
    rng = random.Random(0)
    photos = [p.read_bytes() for p in sorted((DATASET / "images").glob("*.jpg"))[:50]]

    popular = products[:20]

    def product_page(client, index):
        pk, slug, _ = rng.choice(products)
        return client.request("GET", f"/products/{pk}/{slug}/")

    def popular_product_page(client, index):
        pk, slug, _ = popular[index % len(popular)]
        return client.request("GET", f"/products/{pk}/{slug}/")

    def similar_api(client, index):
        pk, _, _ = rng.choice(products)
        return client.request("GET", f"/api/products/{pk}/similar?k=5")

    def search_api(client, index):
        return client.request(
            "POST", "/api/search", *_as_request(multipart({}, "image", "photo.jpg", photos[index % len(photos)]))
        )

    def search_page(client, index):
        if "csrftoken" not in client.cookies:
            client.request("GET", "/search/photo/")
        body, content_type = multipart(
            {"csrfmiddlewaretoken": client.cookies["csrftoken"]}, "image", "photo.jpg", photos[index % len(photos)]
        )
        return client.request(
            "POST", "/search/photo/", body, {"Content-Type": content_type, "Referer": base + "/search/photo/"}
        )

    warm_client = Client(base)
    for _ in range(8):  # every web worker has its model loaded before timing starts
        warm_client.request("POST", "/api/search", *_as_request(multipart({}, "image", "warm.jpg", photos[0])))
    scenarios = [
        ("product page, any of all products", product_page, requests),
        ("product page, 20 popular (cached)", popular_product_page, requests),
        ("GET /api/products/<id>/similar", similar_api, requests),
        ("search-by-photo page (POST)", search_page, requests // 2),
        ("POST /api/search", search_api, requests // 2),
    ]
    results = [run(name, fn, clients, count, base) for name, fn, count in scenarios for clients in concurrency]
    for result in results:
        result["products"] = len(products)
    return results


def print_results(results: list[dict], base: str) -> None:
    print(f"\nHTTP latency against {base} ({results[0]['products']} products); {machine()}")
    print_table(
        ["request", "clients", "p50 ms", "p95 ms", "req/s", "errors", "server time, mean ms"],
        [
            [
                r["name"],
                r["clients"],
                f"{r['p50']:.1f}",
                f"{r['p95']:.1f}",
                f"{r['throughput']:.1f}",
                r["failures"],
                ", ".join(f"{stage} {ms:.1f}" for stage, ms in r["stages"].items()),
            ]
            for r in results
        ],
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--requests", type=int, default=200, help="per scenario and concurrency (uploads: half)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()
    print_results(measure(args.url, args.requests, args.concurrency), args.url)


if __name__ == "__main__":
    main()
