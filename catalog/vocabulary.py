"""The values in use for the classification fields (gender, categories, article type, colour, season,
usage), so that "white" and "White", or "T-shirt" and "Tshirts", do not become different facets.

Two spellings are the same value when they differ only by letter case, spacing or punctuation, or a
plural "s" ("es", "ies") on a word. A new spelling of a value in use is replaced by the spelling
most products have; the staff form and every import do this, and `near_duplicates` finds the
spellings that got in before (or by a raw database write) so that they can be merged.
"""

import re
from collections import Counter
from dataclasses import dataclass

from django.db.models import Count
from django.utils import timezone

from .models import Product

CLASSIFICATION_FIELDS = ("gender", "master_category", "sub_category", "article_type", "base_colour", "season", "usage")
_WORD = re.compile(r"[^\W_]+")
_SIBILANT_PLURALS = ("sses", "shes", "ches", "xes", "zes")


def tidy(value: str) -> str:
    """Leading, trailing and repeated spaces removed."""
    return " ".join(value.split())


def _singular(word: str) -> str:
    if len(word) <= 3:
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(_SIBILANT_PLURALS):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def spelling_key(value: str) -> str:
    """What two spellings of one value have in common: "T-shirt", "tshirts" and "T Shirts" -> "tshirt"."""
    return "".join(_singular(word) for word in _WORD.findall(value.casefold()))


def field_label(field: str) -> str:
    return Product._meta.get_field(field).verbose_name.capitalize()


@dataclass(frozen=True)
class SpellingGroup:
    """Spellings of one value in one field, most used first."""

    field: str
    spellings: list[tuple[str, int]]  # (value, products)

    @property
    def preferred(self) -> str:
        return self.spellings[0][0]

    @property
    def products(self) -> int:
        return sum(count for _, count in self.spellings)


class Vocabulary:
    """How many products use each value of each classification field; learns values as they are added."""

    def __init__(self, counts: dict[str, Counter]):
        self._counts = {field: Counter(counts.get(field, {})) for field in CLASSIFICATION_FIELDS}

    @classmethod
    def in_use(cls) -> "Vocabulary":
        counts = {}
        for field in CLASSIFICATION_FIELDS:
            rows = Product.objects.exclude(**{field: ""}).order_by().values_list(field).annotate(n=Count("pk"))
            counts[field] = Counter(dict(rows))
        return cls(counts)

    def values(self, field: str) -> list[str]:
        return sorted(self._counts[field], key=str.casefold)

    def _groups(self, field: str) -> dict[str, list[tuple[str, int]]]:
        groups: dict[str, list[tuple[str, int]]] = {}
        for value, count in self._counts[field].items():
            groups.setdefault(spelling_key(value), []).append((value, count))
        for spellings in groups.values():
            spellings.sort(key=lambda spelling: (-spelling[1], spelling[0]))
        return groups

    def preferred_spelling(self, field: str, value: str) -> str | None:
        """The spelling most products use for `value` (which may be that very spelling), or None if it is new."""
        spellings = self._groups(field).get(spelling_key(value))
        return spellings[0][0] if spellings else None

    def normalise(self, fields: dict[str, object]) -> dict[str, object]:
        """`fields` with each classification value tidied and spelt as it already is in use; new values
        are learnt, so that a later row spells them the same way."""
        normalised = dict(fields)
        for field in CLASSIFICATION_FIELDS:
            value = fields.get(field)
            if not isinstance(value, str) or not tidy(value):
                continue
            normalised[field] = self.preferred_spelling(field, tidy(value)) or tidy(value)
            self._counts[field][normalised[field]] += 1
        return normalised

    def near_duplicates(self, field: str | None = None) -> list[SpellingGroup]:
        """Every value spelt more than one way, field by field, the most widespread first."""
        found = []
        for name in [field] if field else CLASSIFICATION_FIELDS:
            groups = [SpellingGroup(name, spellings) for spellings in self._groups(name).values() if len(spellings) > 1]
            found.extend(sorted(groups, key=lambda group: (-group.products, group.preferred)))
        return found


def merge_spellings(field: str, spellings: list[str], into: str) -> int:
    """Give every product spelt one of `spellings` the spelling `into`; returns how many products changed."""
    if field not in CLASSIFICATION_FIELDS:
        raise ValueError(f"{field!r} is not a classification field")
    keys = {spelling_key(spelling) for spelling in [*spellings, into]}
    if len(keys) != 1:
        raise ValueError(f"{', '.join(map(repr, spellings))} and {into!r} are not spellings of one value")
    products = Product.objects.filter(**{f"{field}__in": spellings}).exclude(**{field: into})
    return products.update(**{field: into, "updated_at": timezone.now()})


def respell_near_duplicates(products, field: str | None = None) -> list[tuple[SpellingGroup, int]]:
    """Give `products` the most common spelling of each value spelt more than one way in the catalogue
    (in one field, or all); returns each group with how many of `products` changed."""
    merged = []
    for group in Vocabulary.in_use().near_duplicates(field):
        others = [value for value, _ in group.spellings[1:]]
        changed = products.filter(**{f"{group.field}__in": others}).update(
            **{group.field: group.preferred, "updated_at": timezone.now()}
        )
        merged.append((group, changed))
    return merged
