"""Embedding throughput per backbone, decoding included: our batched direct calls at batch 1 and
batch 32, next to the original design's one `model.predict` call per image; plus peak memory.

    .venv/bin/python benchmarks/embed_throughput.py [--images 256] [--backbones ...]

Each backbone runs in its own process, so its memory figures are its own.
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psutil
from common import dataset_items, machine, print_table

from recommender.encoding.backbones import WeightsNotFound, get_backbone
from recommender.encoding.preprocessing import file_pixels

BACKBONES = "efficientnet_lite2,efficientnet_lite0,resnet50"


def measure(backbone_name: str, count: int) -> dict:
    from recommender.encoding.embedder import get_embedder

    paths = [item["path"] for item in dataset_items(count)]
    backbone = get_backbone(backbone_name)
    started = time.monotonic()
    note = ""
    try:
        embedder = get_embedder(backbone)
    except WeightsNotFound:
        if backbone_name != "resnet50":
            raise
        # Speed does not depend on the weights: time the architecture with a generated weights file.
        embedder, note = _resnet50_with_generated_weights(), "generated weights: speed only"
    load_seconds = time.monotonic() - started
    rss_loaded = psutil.Process().memory_info().rss
    size = backbone.input_size

    def pixels(path):
        with open(path, "rb") as file:
            return file_pixels(file, size)

    embedder.embed_pixels(np.stack([pixels(p) for p in paths[:2]]))  # warm-up: traces the graph
    result = {"backbone": backbone_name, "load_seconds": load_seconds, "images": len(paths), "note": note}

    started = time.monotonic()
    for path in paths:
        embedder.embed_pixels(pixels(path)[None])
    result["batch1"] = len(paths) / (time.monotonic() - started)

    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        for start in range(0, len(paths), 32):
            embedder.embed_pixels(np.stack(list(pool.map(pixels, paths[start : start + 32]))))
    result["batch32"] = len(paths) / (time.monotonic() - started)

    # The original design: Keras's image loader, then one model.predict call per image.
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


def _resnet50_with_generated_weights():
    import tempfile
    from pathlib import Path

    import keras
    from django.conf import settings

    from recommender.encoding.embedder import KerasEmbedder

    path = Path(tempfile.mkdtemp()) / "resnet50-generated.weights.h5"
    keras.applications.ResNet50(include_top=False, weights=None, pooling="max", input_shape=(224, 224, 3)).save_weights(
        str(path)
    )
    settings.RESNET50_WEIGHTS = str(path)
    return KerasEmbedder(get_backbone("resnet50"))


def measure_all(backbones: list[str], images: int) -> list[dict]:
    """Each backbone in a process of its own, so that its memory figures are its own."""
    results = []
    for name in backbones:
        output = subprocess.run(
            [sys.executable, __file__, "--one", name, "--images", str(images)], capture_output=True, text=True
        )
        lines = [line for line in output.stdout.splitlines() if line.startswith("{")]
        results.append(json.loads(lines[-1]) if lines else {"backbone": name, "error": output.stderr.strip()[-300:]})
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--backbones", default=BACKBONES)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.images)))
        return
    results = measure_all(args.backbones.split(","), args.images)
    print(f"\nEmbedding throughput, decoding included ({args.images} shared catalogue photos); {machine()}")
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["backbone"], "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", r["error"][:60]])
        else:
            rows.append(
                [
                    r["backbone"],
                    f"{r['batch1']:.1f}",
                    f"{r['batch32']:.1f}",
                    f"{r['predict_per_image']:.1f}",
                    f"{r['batch32'] / r['predict_per_image']:.1f}x",
                    f"{r['load_seconds']:.1f}",
                    f"{r['rss_loaded_mb']:.0f} / {r['peak_rss_mb']:.0f}",
                    r["note"],
                ]
            )
    print_table(
        [
            "backbone",
            "img/s batch 1",
            "img/s batch 32",
            "img/s predict/image",
            "batch 32 vs predict",
            "load s",
            "RSS loaded / peak MB",
            "",
        ],
        rows,
    )
    return results


if __name__ == "__main__":
    main()
