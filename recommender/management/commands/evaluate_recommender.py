import os
import platform
from dataclasses import asdict
from json import dumps
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from recommender.active import active_backbone
from recommender.encoding.backbones import BACKBONES, get_backbone
from recommender.encoding.litert import model_file
from recommender.evaluation.runner import LABELS, evaluate_catalogue
from recommender.quantization import compare_precisions, int8_variant

from .quantize_embedding import print_comparison


class Command(BaseCommand):
    help = (
        "How good are the recommendations? Leave-one-out over every product with an embedding: precision@k and "
        "mAP@k for article type, sub category and colour (micro and macro), recall@k and latency of the served "
        "search path against exact search."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--backbone",
            choices=[*sorted(BACKBONES), "active"],
            help="Default: the EMBEDDING_BACKBONE setting; 'active': the space shoppers are served from "
            "(the active trained model's, if any).",
        )
        parser.add_argument("--k", type=int, default=5)
        parser.add_argument("--sample", type=int, default=1000, help="Queries for the served-path recall and latency.")
        parser.add_argument("--limit", type=int, help="Evaluate only the first N products.")
        parser.add_argument(
            "--baselines",
            action="store_true",
            help="Also raw 32×32 pixels and the original design's brute-force search.",
        )
        parser.add_argument(
            "--control", action="store_true", help="Also random embeddings, which must score near chance."
        )
        parser.add_argument(
            "--int8",
            action="store_true",
            help="Also float32 against the int8 model (made by quantize_embedding) on the test split.",
        )
        parser.add_argument(
            "--shopper-photos",
            type=int,
            default=300,
            help="Search by photo on this many shopper-like photos of test-split products, made with a fixed "
            "seed (0: skip).",
        )
        parser.add_argument(
            "--trained",
            metavar="VERSION",
            help="Also a model trained on the catalogue (a version, or 'active') next to the frozen backbone.",
        )
        parser.add_argument("--json", type=Path, help="Write the full report here.")

    def handle(
        self,
        backbone,
        k,
        sample,
        limit,
        baselines,
        control,
        int8,
        shopper_photos,
        trained,
        json: Path | None,
        **options,
    ):
        if backbone == "active" and int8:
            raise CommandError("--int8 compares a backbone's own models; name the backbone, not 'active'.")
        backbone = active_backbone() if backbone == "active" else get_backbone(backbone)
        self.verbosity = options["verbosity"]
        try:
            report = evaluate_catalogue(
                backbone,
                k=k,
                sample=sample,
                limit=limit,
                baselines=baselines,
                control=control,
                shopper_photos=shopper_photos,
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        report["machine"] = f"{platform.node()} ({platform.machine()}, {os.cpu_count()} cores)"
        self.print_report(report)
        if int8:
            model = model_file(int8_variant(backbone))
            if not model.is_file():
                raise CommandError(f"No int8 model at {model}: run manage.py quantize_embedding first.")
            comparison = compare_precisions(BACKBONES[backbone.model_name], model, k)
            print_comparison(self.stdout.write, comparison)
            report["int8"] = asdict(comparison)
        if trained:
            report["trained"] = self.evaluate_trained(trained, backbone)
            print_trained_evaluation(self.stdout.write, report["trained"])
        if json:
            json.write_text(dumps(report, indent=2, default=str))
            self.stdout.write(f"Wrote {json}")

    def evaluate_trained(self, version: str, backbone) -> dict:
        from recommender.encoding.projection import ModelArtifactError, TrainedModel, models_directory
        from recommender.models import EmbeddingModel
        from recommender.training import evaluate_trained

        if version == "active":
            active = EmbeddingModel.objects.active()
            if active is None:
                raise CommandError("No trained model is active.")
            version = active.version
        try:
            model = TrainedModel.load(models_directory() / version)
        except ModelArtifactError as exc:
            raise CommandError(str(exc)) from exc
        return evaluate_trained(model, get_backbone(model.base), progress=self.verbosity > 0)

    def print_report(self, report: dict) -> None:
        k = report["k"]
        write = self.stdout.write
        write(f"{report['backbone']}: {report['products']} products, {report['images']} images; leave-one-out, k={k}")
        rows = [("embeddings", report["quality"])]
        if "raw_pixels" in report:
            rows.append(("raw 32x32 pixels", report["raw_pixels"]))
        if "random_control" in report:
            rows.append(("random control", report["random_control"]))
        header = (
            f"{'':<18}{'label':<14}{f'P@{k}':>7}{f'mAP@{k}':>8}{f'macro P@{k}':>12}{f'macro mAP@{k}':>14}{'chance':>8}"
        )
        write(header)
        write("-" * len(header))
        for name, scores in rows:
            for label in LABELS:
                s = scores[label]
                write(
                    f"{name:<18}{label:<14}{s['precision']:>7.3f}{s['average_precision']:>8.3f}"
                    f"{s['macro_precision']:>12.3f}{s['macro_average_precision']:>14.3f}{s['chance_precision']:>8.3f}"
                )
        served = report["served_path"]
        write(
            f"Served path (index + re-rank) vs exact: recall@{k} {served['recall']:.4f} "
            f"over {served['queries']} queries (all {k} exact in {served['identical_top_k']:.1%}); "
            f"latency p50 {served['latency_p50_ms']:.2f} ms, p95 {served['latency_p95_ms']:.2f} ms"
        )
        if "brute_force_refit" in report:
            brute = report["brute_force_refit"]
            write(
                f"Original design (brute-force NearestNeighbors refitted per query): "
                f"p50 {brute['latency_p50_ms']:.2f} ms, p95 {brute['latency_p95_ms']:.2f} ms"
            )
        if "shopper_photos" in report:
            self.print_photo_search(report, k)
        write(f"({report['seconds']:.1f}s on {report['machine']})")

    def print_photo_search(self, report: dict, k: int) -> None:
        write = self.stdout.write
        photos = next(iter(report["shopper_photos"].values()))["photos"]
        write(f"Search by photo, {photos} test-split products (fixed seed):")
        header = f"{'':<18}{'query':<16}{'recall@1':>9}{f'recall@{k}':>10}{f'type P@{k}':>10}"
        write(header)
        write("-" * len(header))
        for kind, key in (("shopper photo", "shopper_photos"), ("catalogue photo", "catalogue_photos")):
            for query, scores in report[key].items():
                recall_1 = f"{scores['recall@1']:.3f}" if "recall@1" in scores else "-"
                recall_k = f"{scores[f'recall@{k}']:.3f}" if f"recall@{k}" in scores else "-"
                write(f"{kind:<18}{query:<16}{recall_1:>9}{recall_k:>10}{scores[f'type_precision@{k}']:>10.3f}")
        write("(catalogue photo: the product's own photo, the product itself left out of its results)")


def print_trained_evaluation(write, evaluation: dict) -> None:
    k = evaluation["k"]
    held_out = (
        "Validation split: {} products among those outside the test split"
        if evaluation.get("split") == "validation"
        else "Test split: {} products among the whole catalogue"
    )
    write(
        f"{held_out.format(evaluation['test_products'])} (each one's photo searched for among the others), "
        f"{evaluation['shopper_photos']} shopper-like photos of them."
    )
    header = f"{'':<10}{'label':<15}{f'P@{k}':>8}{f'macro P@{k}':>12}"
    write(header)
    write("-" * len(header))
    for space in ("frozen", "trained"):
        for label, scores in evaluation[space].items():
            if label == "shopper photos":
                continue
            write(f"{space:<10}{label:<15}{_score(scores['micro']):>8}{_score(scores['macro']):>12}")
    for space in ("frozen", "trained"):
        photos = evaluation[space]["shopper photos"]
        write(
            f"{space:<10}shopper photos: recall@1 {photos['recall@1']:.3f}, recall@{k} {photos[f'recall@{k}']:.3f}, "
            f"type P@{k} {photos[f'type_precision@{k}']:.3f}"
        )


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
