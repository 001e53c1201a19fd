"""Embedding throughput per backbone and runtime, decoding included: Keras called directly, LiteRT
float32 and LiteRT int8, at batch 1 and batch 32, next to the original design's one `model.predict`
per image; and, for LiteRT, how the interpreter pool serves concurrent callers (web threads).

    .venv/bin/python benchmarks/embed_throughput.py [--images 256] [--backbones ...] [--pools 1x2,2x1,4x1]

Each backbone and runtime runs in its own process, so its memory figures are its own. The int8 row
needs the int8 model (`manage.py quantize_embedding` on a catalogue); without it the row says so.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psutil
from common import dataset_items, machine, print_table
from django.conf import settings

from recommender.encoding.backbones import WeightsNotFound, get_backbone
from recommender.encoding.preprocessing import file_pixels

BACKBONES = "efficientnet_lite2,efficientnet_lite0,resnet50"
RUNTIMES = ("keras", "litert fp32", "litert int8")
CALLERS = 4  # concurrent callers in the pool measurement: one gunicorn worker's threads


def measure(backbone_name: str, runtime: str, count: int) -> dict:
    from recommender.encoding.embedder import KerasEmbedder, LiteRTEmbedder

    paths = [item["path"] for item in dataset_items(count)]
    precision = runtime.split()[-1] if runtime != "keras" else "fp32"
    backbone = get_backbone(backbone_name + ("-int8" if precision == "int8" else ""))
    started = time.monotonic()
    note = ""
    try:
        embedder = KerasEmbedder(backbone) if runtime == "keras" else LiteRTEmbedder(backbone)
    except WeightsNotFound as exc:
        if backbone_name != "resnet50":
            return {"backbone": backbone_name, "runtime": runtime, "error": str(exc)}
        # Speed does not depend on the weights: time the architecture with a generated weights file.
        embedder, note = _resnet50_with_generated_weights(runtime), "generated weights: speed only"
    load_seconds = time.monotonic() - started
    rss_loaded = psutil.Process().memory_info().rss
    size = backbone.input_size

    def pixels(path):
        with open(path, "rb") as file:
            return file_pixels(file, size)

    embedder.embed_pixels(np.stack([pixels(p) for p in paths[:2]]))  # warm-up: traces the graph
    result = {"backbone": backbone_name, "runtime": runtime, "load_seconds": load_seconds, "note": note}

    started = time.monotonic()
    for path in paths:
        embedder.embed_pixels(pixels(path)[None])
    result["batch1"] = len(paths) / (time.monotonic() - started)

    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        for start in range(0, len(paths), 32):
            embedder.embed_pixels(np.stack(list(pool.map(pixels, paths[start : start + 32]))))
    result["batch32"] = len(paths) / (time.monotonic() - started)

    if runtime == "keras":  # the original design: Keras's image loader, then one model.predict per image
        import keras

        model = embedder.model
        subset = paths[: max(32, len(paths) // 4)]
        model.predict(backbone.preprocess(np.stack([pixels(subset[0])])), verbose=0)
        started = time.monotonic()
        for path in subset:
            array = keras.utils.img_to_array(keras.utils.load_img(path, target_size=(size, size)))
            model.predict(backbone.preprocess(array[None].astype(np.uint8)), verbose=0)
        result["predict_per_image"] = len(subset) / (time.monotonic() - started)
    result["rss_loaded_mb"] = rss_loaded / 2**20
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def measure_pool(backbone_name: str, interpreters: int, threads: int, count: int) -> dict:
    """CALLERS threads embedding one decoded photo at a time, as web threads do."""
    from recommender.encoding.embedder import LiteRTEmbedder

    settings.EMBEDDING_INTERPRETERS, settings.EMBEDDING_THREADS = interpreters, threads
    backbone = get_backbone(backbone_name)
    embedder = LiteRTEmbedder(backbone)
    pixels = np.stack([file_pixels(open(item["path"], "rb"), backbone.input_size) for item in dataset_items(count)])
    embedder.embed_pixels(pixels[:1])
    started = time.monotonic()
    for row in pixels:
        embedder.embed_pixels(row[None])
    alone = len(pixels) / (time.monotonic() - started)

    def one(row):
        begun = time.perf_counter()
        embedder.embed_pixels(row[None])
        return time.perf_counter() - begun

    started = time.monotonic()
    with ThreadPoolExecutor(CALLERS) as pool:
        latencies = list(pool.map(one, pixels))
    return {
        "alone": alone,
        "concurrent": len(pixels) / (time.monotonic() - started),
        "p50_ms": statistics.median(latencies) * 1000,
        "p95_ms": float(np.percentile(latencies, 95)) * 1000,
    }


def _resnet50_with_generated_weights(runtime: str):
    import tempfile
    from pathlib import Path

    import keras

    from recommender.encoding.embedder import KerasEmbedder, LiteRTEmbedder

    path = Path(tempfile.mkdtemp()) / "resnet50-generated.weights.h5"
    keras.applications.ResNet50(include_top=False, weights=None, pooling="max", input_shape=(224, 224, 3)).save_weights(
        str(path)
    )
    settings.RESNET50_WEIGHTS = str(path)
    settings.EMBEDDING_MODEL_DIR = path.parent
    backbone = get_backbone("resnet50")
    return KerasEmbedder(backbone) if runtime == "keras" else LiteRTEmbedder(backbone)


def _in_subprocess(*args: str) -> dict:
    """Run one measurement in a process of its own, so that its memory figures are its own."""
    output = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    lines = [line for line in output.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {"error": output.stderr.strip()[-300:]}


def measure_all(backbones: list[str], runtimes: list[str], images: int) -> list[dict]:
    return [
        {"backbone": name, "runtime": runtime, **_in_subprocess("--one", name, runtime, "--images", str(images))}
        for name in backbones
        for runtime in runtimes
    ]


def measure_pools(backbone: str, pools: list[str], images: int) -> list[dict]:
    return [
        {"pool": pool, **_in_subprocess("--pool", pool, "--backbones", backbone, "--images", str(images))}
        for pool in pools
    ]


def speedup(result: dict, results: list[dict]) -> float | None:
    """The row's best throughput over the original design's (one model.predict per image)."""
    baseline = next(
        (r["predict_per_image"] for r in results if r["backbone"] == result["backbone"] and "predict_per_image" in r),
        None,
    )
    return max(result["batch1"], result["batch32"]) / baseline if baseline and "batch1" in result else None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--backbones", default=BACKBONES)
    parser.add_argument("--runtimes", default=",".join(RUNTIMES))
    parser.add_argument("--pools", default="1x2,2x1,4x1", help="LiteRT interpreters x threads to compare")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--pool", help=argparse.SUPPRESS)
    args = parser.parse_args()
    backbones = args.backbones.split(",")
    if args.one:
        print(json.dumps(measure(*args.one, args.images)))
        return
    if args.pool:
        interpreters, threads = map(int, args.pool.split("x"))
        print(json.dumps(measure_pool(backbones[0], interpreters, threads, args.images)))
        return
    results = measure_all(backbones, args.runtimes.split(","), args.images)
    print(f"\nEmbedding throughput, decoding included ({args.images} shared catalogue photos); {machine()}")
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["backbone"], r["runtime"], "n/a", "n/a", "", "", "", "", r["error"][:70]])
            continue
        ratio = speedup(r, results)
        rows.append(
            [
                r["backbone"],
                r["runtime"],
                f"{r['batch1']:.1f}",
                f"{r['batch32']:.1f}",
                f"{r['predict_per_image']:.1f}" if "predict_per_image" in r else "",
                f"{ratio:.1f}x" if ratio else "",
                f"{r['load_seconds']:.1f}",
                f"{r['rss_loaded_mb']:.0f} / {r['peak_rss_mb']:.0f}",
                r["note"],
            ]
        )
    header = ["backbone", "runtime", "img/s batch 1", "img/s batch 32", "predict/image", "best vs predict", "load s"]
    print_table([*header, "RSS loaded / peak MB", ""], rows)
    pools = measure_pools(backbones[0], args.pools.split(","), args.images)
    print(f"\nLiteRT pool ({backbones[0]}), {CALLERS} concurrent callers embedding one photo each (decoded beforehand)")
    print_table(
        ["interpreters x threads", "img/s one caller", f"img/s {CALLERS} callers", "p50 ms", "p95 ms"],
        [
            [p["pool"], f"{p['alone']:.1f}", f"{p['concurrent']:.1f}", f"{p['p50_ms']:.1f}", f"{p['p95_ms']:.1f}"]
            if "error" not in p
            else [p["pool"], p["error"][:60], "", "", ""]
            for p in pools
        ],
    )
    return {"runtimes": results, "pools": pools}


if __name__ == "__main__":
    main()
