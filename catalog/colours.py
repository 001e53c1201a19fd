"""Colour families: the catalogue's base colours grouped the way a shopper sees them.

The Kaggle-style catalogue has ~46 base colours, many of them near-synonyms that staff pick
inconsistently ("Navy Blue" or "Blue", "Off White" or "Cream"). A shopper asking for "the same
colour" means the family, and so does the recommender's colour evaluation (raw labels are too noisy
to learn or judge alone). Colours not listed are their own family (lower-cased).
"""

FAMILIES: dict[str, tuple[str, ...]] = {
    "black": ("Black", "Charcoal"),
    "white": ("White", "Off White", "Cream"),
    "grey": ("Grey", "Grey Melange", "Steel"),
    "blue": ("Blue", "Navy Blue", "Teal", "Turquoise Blue"),
    "brown": ("Brown", "Coffee Brown", "Tan", "Mushroom Brown", "Taupe"),
    "beige": ("Beige", "Khaki", "Nude", "Skin"),
    "red": ("Red", "Maroon", "Burgundy", "Rust"),
    "pink": ("Pink", "Magenta", "Peach", "Rose"),
    "purple": ("Purple", "Lavender", "Mauve"),
    "green": ("Green", "Olive", "Sea Green", "Fluorescent Green", "Lime Green"),
    "yellow": ("Yellow", "Mustard"),
    "orange": ("Orange",),
    "metallic": ("Silver", "Gold", "Bronze", "Copper", "Metallic"),
    "multi": ("Multi",),
}
UNKNOWN = ("", "NA")
LABELS = {"multi": "Multicolour"}  # how a family is named to shoppers, when not just capitalised
_FAMILY_OF = {colour.casefold(): family for family, colours in FAMILIES.items() for colour in colours}


def colour_family(colour: str) -> str:
    """The family of a base colour ("" when the colour is unknown)."""
    colour = colour.strip()
    if colour in UNKNOWN:
        return ""
    return _FAMILY_OF.get(colour.casefold(), colour.casefold())


def colours_in_family(family: str) -> list[str]:
    """The base colours of a family, as stored (a colour outside every family is its own)."""
    return list(FAMILIES.get(family, ())) or ([family] if family else [])


def family_label(family: str) -> str:
    """A family as shoppers read it: "blue" -> "Blue"."""
    return LABELS.get(family, family.capitalize())
