"""Precision@5 by articleType on the shared catalogue, leave-one-out, cosine: each backbone and
preprocessing choice against raw 32×32 pixels.

    .venv/bin/python benchmarks/precision_at_5.py [--backbones efficientnet_lite2,...] [--modes pad,crop,trim]

Embeddings are cached in var/benchmarks/, so a rerun only computes what is new.
"""

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from common import RESULTS_DIR, dataset_items, machine, print_table

from recommender.encoding.backbones import WeightsNotFound, get_backbone
from recommender.encoding.embedder import get_embedder
from recommender.encoding.preprocessing import file_pixels, read_image
from recommender.evaluation.metrics import leave_one_out_neighbours, raw_pixel_vector, retrieval_scores


def embed_files(paths, backbone_name: str, mode: str, batch_size: int = 32) -> np.ndarray:
    cache = RESULTS_DIR / f"{backbone_name}-{mode}-{len(paths)}.npy"
    if cache.is_file():
        return np.load(cache)
    embedder = get_embedder(get_backbone(backbone_name))
    size = embedder.backbone.input_size

    def pixels(path):
        with open(path, "rb") as file:
            return file_pixels(file, size, mode)

    vectors = []
    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        for start in range(0, len(paths), batch_size):
            batch = np.stack(list(pool.map(pixels, paths[start : start + batch_size])))
            vectors.append(embedder.embed_pixels(batch))
            done = start + len(batch)
            print(
                f"\r  {backbone_name}/{mode}: {done}/{len(paths)} ({done / (time.monotonic() - started):.0f} img/s)",
                end="",
                flush=True,
            )
    print()
    matrix = np.vstack(vectors)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    np.save(cache, matrix)
    return matrix


def raw_pixels(paths) -> np.ndarray:
    def vector(path):
        with open(path, "rb") as file:
            return raw_pixel_vector(read_image(file, 256))

    with ThreadPoolExecutor(2) as pool:
        return np.stack(list(pool.map(vector, paths)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default="efficientnet_lite2,efficientnet_lite0,resnet50")
    parser.add_argument("--modes", default="pad,crop,trim")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--label", default="articleType")
    args = parser.parse_args()

    items = dataset_items(args.limit)
    paths = [item["path"] for item in items]
    labels = np.array([item[args.label] for item in items])
    rows = []

    def score(name, mode, vectors):
        scores = retrieval_scores(leave_one_out_neighbours(vectors, 5), labels)
        rows.append(
            [name, mode, f"{scores.precision:.3f}", f"{scores.average_precision:.3f}", f"{scores.macro_precision:.3f}"]
        )

    score("raw 32x32 pixels", "-", raw_pixels(paths))
    for name in args.backbones.split(","):
        try:
            get_embedder(get_backbone(name))
        except WeightsNotFound as exc:
            rows.append([name, "-", "n/a", "n/a", f"weights not on this machine ({exc.__class__.__name__})"])
            continue
        for mode in args.modes.split(","):
            score(name, mode, embed_files(paths, name, mode))

    print(f"\nPrecision@5 by {args.label}, leave-one-out over {len(paths)} products; {machine()}")
    print_table(["embedding", "preprocessing", "P@5", "mAP@5", "macro P@5"], rows)


if __name__ == "__main__":
    main()
