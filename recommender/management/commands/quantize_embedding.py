from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from recommender.encoding.backbones import BACKBONES, WeightsNotFound, get_backbone
from recommender.quantization import INT8_MAX_DROP, PrecisionComparison, QualityCheckFailed, quantize


class Command(BaseCommand):
    help = (
        "Make the int8 LiteRT model of a backbone, calibrated on catalogue photos outside the test split, "
        "and keep it only if precision@5 on the test split drops by no more than "
        + ", ".join(f"{drop} ({label})" for label, drop in INT8_MAX_DROP.items())
        + ". If it does, the catalogue is embedded and indexed with it, and EMBEDDING_PRECISION=auto (the "
        "default) switches to it."
    )

    def add_arguments(self, parser):
        fp32 = sorted(name for name, backbone in BACKBONES.items() if backbone.precision == "fp32")
        parser.add_argument("--backbone", choices=fp32, help="Default: the EMBEDDING_BACKBONE setting.")
        parser.add_argument("--calibration", type=int, default=200, help="Catalogue photos to calibrate on.")

    def handle(self, backbone, calibration, **options):
        backbone = get_backbone(backbone or get_backbone().model_name)
        self.stdout.write(f"Quantising {backbone.name} on {calibration} catalogue photos (a minute or two)...")
        try:
            with tqdm(unit="img", desc="Embedding the catalogue in int8", disable=options["verbosity"] == 0) as bar:
                comparison = quantize(backbone, calibration, on_batch=lambda report: bar.update(report.embedded))
        except QualityCheckFailed as exc:
            raise CommandError(f"int8 refused: {exc}") from exc
        except WeightsNotFound as exc:
            raise CommandError(str(exc)) from exc
        print_comparison(self.stdout.write, comparison)
        self.stdout.write(self.style.SUCCESS("int8 model kept, the catalogue embedded and indexed with it."))


def print_comparison(write, comparison: PrecisionComparison) -> None:
    write(f"Test split, {comparison.products} products, leave-one-out precision@5 (micro / macro):")
    write(f"{'':<14}{'fp32':>16}{'int8':>16}{'drop':>9}")
    for label in comparison.fp32:
        fp32, int8 = comparison.fp32[label], comparison.int8[label]
        write(
            f"{label:<14}{fp32['micro']:>8.3f} / {fp32['macro']:.3f}{int8['micro']:>8.3f} / {int8['macro']:.3f}"
            f"{comparison.drop(label):>+9.4f}"
        )
    write(f"cosine of fp32 and int8 vectors: mean {comparison.mean_cosine:.4f}, min {comparison.min_cosine:.4f}")
