"""{% similar_items product %}: the product page's row of visually similar products, with filter chips."""

from dataclasses import dataclass
from urllib.parse import urlencode

from django import template

from ..encoding.backbones import get_backbone
from ..similar import similar_products
from ..timing import record_timing

register = template.Library()

# (query parameter, Product field, chip label): each chip narrows the similar items to the product's value.
NARROWING = (("same_gender", "gender", "Only {}"), ("same_type", "article_type", "Only {}"))


@dataclass(frozen=True)
class Chip:
    label: str
    url: str
    selected: bool


def narrowing_from(params) -> dict[str, bool]:
    return {param: params.get(param) == "1" for param, _, _ in NARROWING}


def filter_chips(product, narrowing: dict[str, bool]) -> list[Chip]:
    """ "All", then one chip per narrowing the product allows; each links to the page with it toggled."""
    chips = [Chip("All", "?", not any(narrowing.values()))]
    for param, field, label in NARROWING:
        value = getattr(product, field)
        if value:
            toggled = {**narrowing, param: not narrowing[param]}
            query = urlencode({name: "1" for name, on in toggled.items() if on})
            chips.append(Chip(label.format(value), f"?{query}", narrowing[param]))
    return chips


@register.inclusion_tag("recommender/partials/similar_items.html", takes_context=True)
def similar_items(context, product):
    request = context["request"]
    narrowing = narrowing_from(request.GET)
    filters = {field: getattr(product, field) for param, field, _ in NARROWING if narrowing[param]}
    similar = similar_products(product, get_backbone(), **filters)
    record_timing(request, similar=similar.seconds)
    return {"product": product, "similar": similar, "chips": filter_chips(product, narrowing)}
