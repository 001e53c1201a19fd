"""What the shopper's product grid shows: facet choices, their counts and breadcrumbs."""

from dataclasses import dataclass, field
from urllib.parse import urlencode

from django.db.models import Count, QuerySet
from django.urls import reverse

from .models import Product


@dataclass(frozen=True)
class Facet:
    param: str  # query-string name
    field: str  # Product field
    label: str


FACETS = (
    Facet("gender", "gender", "Gender"),
    Facet("category", "master_category", "Category"),
    Facet("type", "article_type", "Article type"),
    Facet("colour", "base_colour", "Colour"),
)


@dataclass
class FacetOption:
    value: str
    count: int
    selected: bool
    url: str


@dataclass
class FacetBlock:
    facet: Facet
    options: list[FacetOption] = field(default_factory=list)


@dataclass(frozen=True)
class BrowseQuery:
    """The shopper's filters and keywords, as read from the query string."""

    filters: dict[str, str]
    text: str = ""

    @classmethod
    def from_params(cls, params) -> "BrowseQuery":
        def read(name: str) -> str:
            # PostgreSQL refuses NUL in text, and no product value contains one.
            return params.get(name, "").replace("\x00", "").strip()

        filters = {facet.param: read(facet.param) for facet in FACETS}
        return cls(filters={name: value for name, value in filters.items() if value}, text=read("q"))

    def products(self) -> QuerySet:
        """The matching products in display order: best keyword match first, else catalogue order."""
        products = self._filtered(excluded=None)
        return products.search(self.text) if self.text else products

    def _filtered(self, excluded: Facet | None) -> QuerySet:
        products = Product.objects.filter(
            **{
                facet.field: self.filters[facet.param]
                for facet in FACETS
                if facet.param in self.filters and facet != excluded
            }
        )
        return products.matching(self.text) if self.text else products

    def url(self, **changes: str) -> str:
        """The grid URL with some parameters changed; an empty value removes the parameter."""
        params = {**self.filters, "q": self.text, **changes}
        query = urlencode({name: value for name, value in params.items() if value})
        return reverse("catalog:product-list") + (f"?{query}" if query else "")

    def removable_choices(self) -> list[tuple[str, str]]:
        """(label, url without it) for each active filter and the keywords."""
        choices = [(value, self.url(**{name: ""})) for name, value in self.filters.items()]
        if self.text:
            choices.append((f"“{self.text}”", self.url(q="")))
        return choices

    def facet_blocks(self) -> list[FacetBlock]:
        """Each facet's values with counts under the other facets' filters, so choices never lead to nothing."""
        blocks = []
        for facet in FACETS:
            selected = self.filters.get(facet.param, "")
            rows = (
                self._filtered(excluded=facet)
                .exclude(**{facet.field: ""})
                .order_by()
                .values(facet.field)
                .annotate(count=Count("pk"))
                .order_by("-count", facet.field)
            )
            block = FacetBlock(facet)
            for row in rows:
                value = row[facet.field]
                block.options.append(
                    FacetOption(
                        value=value,
                        count=row["count"],
                        selected=value == selected,
                        url=self.url(**{facet.param: "" if value == selected else value}),
                    )
                )
            blocks.append(block)
        return blocks


def product_breadcrumbs(product: Product) -> list[tuple[str, str]]:
    """(label, url) pairs from the shop's front page down to the product's article type."""
    crumbs = [("All products", reverse("catalog:product-list"))]
    path: dict[str, str] = {}
    for facet, value in (
        (FACETS[0], product.gender),
        (FACETS[1], product.master_category),
        (FACETS[2], product.article_type),
    ):
        if value:
            path[facet.param] = value
            crumbs.append((value, BrowseQuery(filters=dict(path)).url()))
    return crumbs
