"""Admin for integrator access: API tokens (issued and revoked through ``accessctl.tokens``), webhook
subscriptions and the webhook delivery log. Imported by ``accessctl/admin.py``.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from accessctl.exceptions import DomainError
from accessctl.models import ApiToken, WebhookDelivery, WebhookSubscription
from accessctl.tokens import api_token_grant_check, api_token_issue, api_token_revoke
from accessctl.webhook_targets import WebhookTargetRefused, webhook_target_check
from accessctl.webhooks import EVENT_TYPE_CHOICES, webhook_redeliver, webhook_secret_generate


class ApiTokenForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=ApiToken.Scope.choices, widget=forms.CheckboxSelectMultiple, required=True
    )

    # Set per request by ApiTokenAdmin.get_form: who is issuing or changing the token.
    granted_by: Any = None

    class Meta:
        model = ApiToken
        fields = ["name", "user", "scopes", "rate_limit_per_minute", "expires_at"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        owner = cleaned.get("user") or (self.instance.user if self.instance.pk else None)
        if owner is not None and cleaned.get("scopes") and self.granted_by is not None:
            try:
                api_token_grant_check(owner=owner, granted_by=self.granted_by, scopes=cleaned["scopes"])
            except DomainError as exc:
                missing = (exc.details or {}).get("missing_permissions") if isinstance(exc.details, dict) else None
                detail = "; ".join(f"{scope}: {', '.join(perms)}" for scope, perms in (missing or {}).items())
                raise forms.ValidationError(f"{exc.message} ({detail})" if detail else exc.message) from exc
        return cleaned

    def clean_expires_at(self) -> Any:
        expires_at = self.cleaned_data.get("expires_at")
        if expires_at is not None and expires_at <= timezone.now() and self.instance.pk is None:
            raise forms.ValidationError("Must be in the future.")
        return expires_at

    def clean_rate_limit_per_minute(self) -> int:
        value = self.cleaned_data["rate_limit_per_minute"]
        if value < 1:
            raise forms.ValidationError("At least 1.")
        return value


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    form = ApiTokenForm
    list_display = [
        "name", "prefix", "user", "scope_list", "rate_limit_per_minute", "last_used_at", "expires_at", "revoked_at",
    ]  # fmt: skip
    list_filter = ["revoked_at", "expires_at"]
    search_fields = ["name", "prefix", "user__username"]
    list_select_related = ["user"]
    readonly_fields = ["prefix", "issued_by", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke_tokens"]

    @admin.display(description="scopes")
    def scope_list(self, token: ApiToken) -> str:
        # Grouped per resource ("people:read+write") so the list stays narrow (issue 16).
        grouped: dict[str, list[str]] = {}
        for scope in token.scopes or []:
            resource, _, access = scope.partition(":")
            grouped.setdefault(resource, []).append(access)
        return ", ".join(f"{r}:{'+'.join(a)}" if any(a) else r for r, a in grouped.items())

    # Only superusers see, issue and change the tokens of other users (accessctl.tokens).
    def get_queryset(self, request: HttpRequest) -> QuerySet[ApiToken]:
        queryset = super().get_queryset(request)
        return queryset if request.user.is_superuser else queryset.filter(user=request.user)

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "user" and not request.user.is_superuser:
            kwargs["queryset"] = db_field.remote_field.model.objects.filter(pk=request.user.pk)
            kwargs["initial"] = request.user.pk
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_form(self, request: HttpRequest, obj: ApiToken | None = None, change: bool = False, **kwargs: Any) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        return type(form.__name__, (form,), {"granted_by": request.user})

    def get_readonly_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> list[str]:
        if obj is None:
            return []
        return [*self.readonly_fields, "user"]

    def get_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> list[str]:
        fields = ["name", "user", "scopes", "rate_limit_per_minute", "expires_at"]
        return fields if obj is None else [*fields, "prefix", "issued_by", "created_at", "last_used_at", "revoked_at"]

    def save_model(self, request: HttpRequest, obj: ApiToken, form: forms.ModelForm, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        data = form.cleaned_data
        token, plaintext = api_token_issue(
            user=data["user"],
            issued_by=request.user,
            name=data["name"],
            scopes=data["scopes"],
            expires_at=data.get("expires_at"),
            rate_limit_per_minute=data["rate_limit_per_minute"],
        )
        for field in ApiToken._meta.concrete_fields:
            setattr(obj, field.attname, getattr(token, field.attname))
        obj._state.adding = False
        messages.warning(
            request,
            f"API token for {token.name}: {plaintext} — copy it now, it is not shown again. "
            f"Use it as 'Authorization: Bearer {plaintext}'.",
        )

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke_tokens(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        count = 0
        for token in queryset.filter(revoked_at__isnull=True):
            api_token_revoke(token=token)
            count += 1
        self.message_user(request, f"{count} token(s) revoked.", messages.SUCCESS)


class WebhookSubscriptionForm(forms.ModelForm):
    url = forms.URLField(max_length=500, assume_scheme="https")
    event_types = forms.MultipleChoiceField(choices=EVENT_TYPE_CHOICES, widget=forms.CheckboxSelectMultiple)
    secret = forms.CharField(required=False, max_length=100, help_text="HMAC-SHA256 key; leave empty to generate one.")

    class Meta:
        model = WebhookSubscription
        fields = ["name", "url", "event_types", "active", "secret"]

    def clean_secret(self) -> str:
        return self.cleaned_data.get("secret") or self.instance.secret or webhook_secret_generate()

    def clean_url(self) -> str:
        url = self.cleaned_data["url"]
        try:
            webhook_target_check(url=url)
        except WebhookTargetRefused as exc:
            raise forms.ValidationError(str(exc)) from exc
        return url


@admin.register(WebhookSubscription)
class WebhookSubscriptionAdmin(admin.ModelAdmin):
    form = WebhookSubscriptionForm
    list_display = ["name", "url", "event_type_list", "active", "created_at"]
    list_filter = ["active"]
    search_fields = ["name", "url"]

    @admin.display(description="event types")
    def event_type_list(self, subscription: WebhookSubscription) -> str:
        return ", ".join(subscription.event_types or [])


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    """The delivery log: read-only, with a redeliver action."""

    list_display = [
        "created_at", "event_type", "subscription", "status", "attempts", "last_status_code", "delivered_at",
    ]  # fmt: skip
    list_filter = ["status", "event_type", "subscription"]
    search_fields = ["delivery_id", "last_error"]
    date_hierarchy = "created_at"
    list_select_related = ["subscription"]
    readonly_fields = [
        "delivery_id", "subscription", "event_type", "payload", "status", "attempts", "last_status_code",
        "last_error", "created_at", "delivered_at",
    ]  # fmt: skip
    actions = ["redeliver"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Send selected deliveries again", permissions=["change"])
    def redeliver(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        with transaction.atomic():
            count = sum(1 for delivery in queryset if webhook_redeliver(delivery=delivery))
        self.message_user(request, f"{count} deliveries queued again.", messages.SUCCESS)
