"""Shared by the benchmark scripts: Django set-up, the shared dataset, the machine they ran on."""

import csv
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fashionsite.settings")
os.environ.setdefault("DJANGO_DEBUG", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import django  # noqa: E402

django.setup()

SHARED = Path(os.environ.get("FASHION_SHARED_DIR", ROOT.parent / "shared"))
if not SHARED.is_dir():
    SHARED = Path("/work/shared")
DATASET = SHARED / "datasets" / "fashion-products"
RESULTS_DIR = ROOT / "var" / "benchmarks"


def dataset_items(limit: int | None = None) -> list[dict]:
    """styles.csv rows that have an image, each with its `path`."""
    with (DATASET / "styles.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    items = []
    for row in rows:
        path = DATASET / "images" / f"{row['id']}.jpg"
        if path.is_file():
            items.append({**row, "path": path})
    return items[:limit] if limit else items


def machine() -> str:
    cpus = os.cpu_count()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    processor = model or platform.machine()
    return f"{platform.node()}: {cpus} cores ({processor}), {memory:.0f} GiB, Python {platform.python_version()}"


def print_table(header: list[str], rows: list[list], numeric: bool = True) -> None:
    """A plain-text table; with `numeric`, every column but the first is right-aligned."""
    cells = [header] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for index, row in enumerate(cells):
        print(
            "  ".join(
                cell.rjust(width) if i and numeric else cell.ljust(width)
                for i, (cell, width) in enumerate(zip(row, widths))
            ).rstrip()
        )
        if index == 0:
            print("  ".join("-" * width for width in widths))
