"""What finding the garment adds to a photo search: per-photo latency of the garment locator next
to the embedding of the crop, and of the crop's colour features (what a trained model's head takes
beside the backbone's vector), in-process, one photo at a time (as a web request runs them).

    .venv/bin/python benchmarks/locate_latency.py [--photos 100]

Photos are shopper-like photos (recommender/evaluation/shopper_photos.py, fixed seeds) made from
the shared dataset's test-split products, already decoded; both steps run on LiteRT with the
settings' EMBEDDING_THREADS.
"""

import argparse
import random
import statistics
import time

from common import dataset_items, machine, print_table
from PIL import Image

from recommender.encoding.backbones import get_backbone
from recommender.encoding.embedder import get_embedder
from recommender.encoding.garment import Box, get_locator
from recommender.encoding.preprocessing import image_pixels
from recommender.encoding.projection import colour_features
from recommender.evaluation.shopper_photos import shopper_photo
from recommender.evaluation.split import in_test_split


def percentile(values: list[float], share: float) -> float:
    return sorted(values)[int(share * (len(values) - 1))] * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=100)
    args = parser.parse_args()

    items = [item for item in dataset_items() if in_test_split(item["id"])]
    rng = random.Random(0)
    chosen = rng.sample(items, args.photos)
    clutter = [Image.open(item["path"]).convert("RGB") for item in rng.sample(items, 20)]
    photos = [
        shopper_photo(Image.open(item["path"]).convert("RGB"), seed=index, clutter=clutter).image
        for index, item in enumerate(chosen)
    ]
    base = get_backbone("efficientnet_lite2")
    locator, embedder = get_locator(), get_embedder(base)
    for photo in photos[:3]:  # warm-up
        embedder.embed_image(Box.WHOLE.crop(photo))
        locator.locate(photo)

    locate, embed, colour = [], [], []
    for photo in photos:
        started = time.perf_counter()
        garment = locator.crop_to_garment(photo)
        located = time.perf_counter()
        embedder.embed_image(garment)
        embed.append(time.perf_counter() - located)
        locate.append(located - started)
        pixels = image_pixels(garment, base.input_size)[None]
        started = time.perf_counter()
        colour_features(pixels)
        colour.append(time.perf_counter() - started)

    print(f"{len(photos)} shopper-like photos, one at a time, {locator.runtime} ({machine()})")
    rows = [
        ["locate the garment", f"{percentile(locate, 0.5):.1f}", f"{percentile(locate, 0.95):.1f}"],
        ["embed the crop", f"{percentile(embed, 0.5):.1f}", f"{percentile(embed, 0.95):.1f}"],
        ["colour features of the crop", f"{percentile(colour, 0.5):.1f}", f"{percentile(colour, 0.95):.1f}"],
    ]
    print_table(["step", "p50 ms", "p95 ms"], rows)
    print(f"locate / embed (p50): {statistics.median(locate) / statistics.median(embed):.2f}")


if __name__ == "__main__":
    main()
