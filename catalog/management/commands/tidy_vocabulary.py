from django.core.management.base import BaseCommand

from catalog.models import Product
from catalog.vocabulary import CLASSIFICATION_FIELDS, Vocabulary, field_label, respell_near_duplicates


class Command(BaseCommand):
    help = (
        "Report classification values spelt more than one way (case, spacing, punctuation, plural) "
        "and, with --merge, give each group its most common spelling."
    )

    def add_arguments(self, parser):
        parser.add_argument("--field", choices=CLASSIFICATION_FIELDS, help="Only this field.")
        parser.add_argument("--merge", action="store_true", help="Merge each group into its most common spelling.")

    def handle(self, *args, field=None, merge=False, **options):
        groups = Vocabulary.in_use().near_duplicates(field)
        for group in groups:
            spellings = ", ".join(f"“{value}” ({count})" for value, count in group.spellings)
            self.stdout.write(f"{field_label(group.field)}: {spellings}")
        if merge:
            for group, changed in respell_near_duplicates(Product.objects.all(), field):
                label = field_label(group.field)
                self.stdout.write(f"{label}: merged into “{group.preferred}”, {changed} products changed")
        verb = "merged" if merge else "found"
        self.stdout.write(self.style.SUCCESS(f"{len(groups)} values spelt more than one way {verb}."))
