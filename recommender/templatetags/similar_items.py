"""{% similar_items product %}: the product page's row of visually similar products, with filter chips."""

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlencode

from django import template

from catalog.colours import colour_family, family_label
from catalog.models import Product

from ..active import active_backbone
from ..similar import similar_products
from ..timing import record_timing

register = template.Library()


@dataclass(frozen=True)
class Narrowing:
    """A chip that narrows the similar items to the product's own value of one filter."""

    param: str  # query parameter
    filter: str  # similar_products keyword
    value: Callable[[Product], str]  # the product's value ("" when unknown: no chip)
    label: Callable[[str], str] = str


NARROWING = (
    Narrowing("same_gender", "gender", lambda product: product.gender),
    Narrowing("same_type", "article_type", lambda product: product.article_type),
    Narrowing("same_colour", "colour", lambda product: colour_family(product.base_colour), family_label),
)


@dataclass(frozen=True)
class Chip:
    label: str
    url: str
    selected: bool


def narrowing_from(params, product) -> dict[str, bool]:
    """Which narrowings the query string asks for, among those the product allows."""
    return {option.param: params.get(option.param) == "1" and bool(option.value(product)) for option in NARROWING}


def filter_chips(product, narrowing: dict[str, bool]) -> list[Chip]:
    """ "All", then one chip per narrowing the product allows; each links to the page with it toggled."""
    chips = [Chip("All", "?", not any(narrowing.values()))]
    for option in NARROWING:
        value = option.value(product)
        if value:
            toggled = {**narrowing, option.param: not narrowing[option.param]}
            query = urlencode({name: "1" for name, on in toggled.items() if on})
            chips.append(Chip(f"Only {option.label(value)}", f"?{query}", narrowing[option.param]))
    return chips


@register.inclusion_tag("recommender/partials/similar_items.html", takes_context=True)
def similar_items(context, product):
    request = context["request"]
    narrowing = narrowing_from(request.GET, product)
    filters = {option.filter: option.value(product) for option in NARROWING if narrowing[option.param]}
    similar = similar_products(product, active_backbone(), **filters)
    record_timing(request, similar=similar.seconds)
    return {"product": product, "similar": similar, "chips": filter_chips(product, narrowing)}
