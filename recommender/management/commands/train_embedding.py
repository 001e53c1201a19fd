from django.core.management.base import BaseCommand, CommandError

from recommender.encoding.backbones import BACKBONES, WeightsNotFound, get_backbone
from recommender.training import TrainingSettings, train_embedding, validate_embedding

from .evaluate_recommender import print_trained_evaluation


class Command(BaseCommand):
    help = (
        "Train an embedding on the catalogue's own labels: a head on the frozen backbone's stored "
        "vectors and colour features, products of the test split left out. The model is saved under "
        "TRAINED_MODEL_DIR/<version>/ with its evaluation and listed in admin, ready to activate "
        "(--activate: at once). --validate trains without the test split at all, evaluates on a "
        "validation split instead and saves nothing: for choosing training settings."
    )

    def add_arguments(self, parser):
        bases = sorted(name for name, backbone in BACKBONES.items())
        parser.add_argument("--backbone", choices=bases, help="Default: the EMBEDDING_BACKBONE setting.")
        parser.add_argument("--epochs", type=int, default=TrainingSettings.epochs)
        parser.add_argument(
            "--shopper-views",
            type=int,
            default=TrainingSettings.shopper_views,
            help="Training products trained with a shopper-like photo (default: all of them, up to this many).",
        )
        parser.add_argument(
            "--test-photos",
            type=int,
            default=TrainingSettings.test_photos,
            help="Shopper-like photos of test products to evaluate on (at most one each).",
        )
        parser.add_argument("--seed", type=int, default=TrainingSettings.seed)
        parser.add_argument("--activate", action="store_true", help="Activate the model once trained.")
        parser.add_argument("--validate", action="store_true", help="Evaluate on the validation split; save nothing.")

    def handle(self, backbone, epochs, shopper_views, test_photos, seed, activate, validate, **options):
        from recommender.trained_models import activate_model

        if validate and activate:
            raise CommandError("--validate saves no model to activate.")
        base = get_backbone(backbone)
        training = TrainingSettings(epochs, shopper_views, test_photos, seed)
        progress = options["verbosity"] > 0
        try:
            if validate:
                print_trained_evaluation(self.stdout.write, validate_embedding(base, training, progress))
                return
            report = train_embedding(base, training, progress)
        except (ValueError, WeightsNotFound) as exc:
            raise CommandError(str(exc)) from exc
        print_trained_evaluation(self.stdout.write, report.evaluation)
        seconds = ", ".join(f"{stage} {value:.0f} s" for stage, value in report.seconds.items())
        self.stdout.write(f"Trained on {report.trained_on} of {report.products} products ({seconds}).")
        self.stdout.write(self.style.SUCCESS(f"Saved model {report.model.version} in {report.model.directory}."))
        if activate:
            activate_model(report.model.version, progress=progress)
            self.stdout.write(self.style.SUCCESS(f"Model {report.model.version} is active."))
