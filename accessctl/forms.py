"""Forms for the operator pages: parsing only, no rules."""

from __future__ import annotations

from django import forms

from accessctl.codes import DECISION_CHOICES, REASON_CHOICES
from accessctl.models import Door, Person
from accessctl.selectors import EventFilter


class SingleOrManySelect(forms.SelectMultiple):
    """Rendered as one drop-down; ``?reason=a&reason=b`` (links, API-like use) still selects several."""

    allow_multiple_selected = False


class EventFilterForm(forms.Form):
    """Audit browser filters (GET). Times are in the server's time zone."""

    since = forms.DateTimeField(
        required=False, label="From", widget=forms.DateTimeInput(attrs={"type": "datetime-local"})
    )
    until = forms.DateTimeField(
        required=False, label="Until", widget=forms.DateTimeInput(attrs={"type": "datetime-local"})
    )
    door = forms.ModelChoiceField(queryset=Door.objects.order_by("name"), required=False, empty_label="All doors")
    person = forms.CharField(
        required=False,
        max_length=200,
        label="Person",
        widget=forms.TextInput(attrs={"type": "search", "placeholder": "Name or external id"}),
    )
    decision = forms.ChoiceField(choices=[("", "Any decision"), *DECISION_CHOICES], required=False)
    reason = forms.MultipleChoiceField(
        choices=[("", "Any reason"), *REASON_CHOICES], required=False, widget=SingleOrManySelect
    )

    def clean(self) -> dict:
        data = super().clean()
        since, until = data.get("since"), data.get("until")
        if since and until and until <= since:
            self.add_error("until", "Must be after the start of the range.")
        return data

    def to_filter(self, *, person: Person | None = None) -> EventFilter:
        data = self.cleaned_data if self.is_valid() else {}
        return EventFilter(
            since=data.get("since"),
            until=data.get("until"),
            door=data.get("door"),
            person=person,
            person_query=(data.get("person") or "").strip(),
            decision=data.get("decision") or "",
            reasons=tuple(r for r in data.get("reason") or () if r),
        )


class PersonCreateForm(forms.ModelForm):
    class Meta:
        model = Person
        fields = ["name", "external_id", "kind"]
        widgets = {"name": forms.TextInput(attrs={"autofocus": True, "placeholder": "Full name"})}


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleImageField(forms.FileField):
    """Several files in one field (``<input type=file multiple>``)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("widget", MultipleFileInput(attrs={"accept": "image/jpeg,image/png"}))
        super().__init__(*args, **kwargs)

    def clean(self, data: object, initial: object = None) -> list:
        single = super().clean
        if isinstance(data, list | tuple) and data:
            return [single(item, initial) for item in data]
        result = single(None if isinstance(data, list | tuple) else data, initial)
        return [result] if result else []


class PhotoUploadForm(forms.Form):
    photos = MultipleImageField(label="Photos of the person's face")


class PhotoRejectForm(forms.Form):
    reason = forms.CharField(required=False, max_length=200)
