"""The product form staff use in admin: classification fields offer the values already in use."""

from django import forms

from .models import Product
from .vocabulary import CLASSIFICATION_FIELDS, Vocabulary, field_label, tidy


class ValueListInput(forms.TextInput):
    """A text box that suggests the given values (an HTML datalist) and still takes a new one."""

    template_name = "catalog/widgets/value_list_input.html"

    def __init__(self, values=(), attrs=None):
        super().__init__(attrs)
        self.values = list(values)

    def get_context(self, name, value, attrs):
        context = super().get_context(name, value, attrs)
        datalist_id = f"{context['widget']['attrs'].get('id') or name}-values"
        context["widget"]["attrs"]["list"] = datalist_id
        context["widget"]["attrs"].setdefault("autocomplete", "off")
        context["widget"].update(datalist_id=datalist_id, values=self.values)
        return context


class ProductForm(forms.ModelForm):
    """Each classification value is spelt as it already is in the catalogue; `respellings` and
    `new_values` say what the form changed or added, for the message staff see after saving."""

    class Meta:
        model = Product
        fields = "__all__"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.vocabulary = Vocabulary.in_use()
        self.respellings: list[str] = []
        self.new_values: list[str] = []
        for name in CLASSIFICATION_FIELDS:
            if name in self.fields:
                self.fields[name].widget = ValueListInput(self.vocabulary.values(name), attrs={"class": "vTextField"})

    def clean(self):
        cleaned = super().clean()
        for name in CLASSIFICATION_FIELDS:
            typed = cleaned.get(name)
            if not typed or name not in self.changed_data:
                continue
            value = tidy(typed)
            preferred = self.vocabulary.preferred_spelling(name, value)
            if preferred is None:
                self.new_values.append(f"{field_label(name)} “{value}” is a new value.")
            elif preferred != value:
                self.respellings.append(
                    f"{field_label(name)} “{typed}” was saved as “{preferred}”, the spelling already in use."
                )
            cleaned[name] = preferred or value
        return cleaned
