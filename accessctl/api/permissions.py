"""API permissions that fail closed.

Token requests (``request.auth`` is an :class:`~accessctl.models.ApiToken`) need the scope the view
declares for the action: ``action_scopes[action]``, else ``read_scope`` for safe methods and
``write_scope`` for the others. A view that declares nothing refuses every token. A token also needs
its owner to hold, now, the Django permissions a session would need for the same request: what a
token can do is its scopes intersected with its owner's current permissions.

Session requests (a signed-in staff member using the API from a browser) need Django model
permissions, like DRF's ``DjangoModelPermissions`` but also for reads: ``view_<model>`` for safe
methods, ``add_``/``change_``/``delete_`` for writes, on ``permission_model`` (default: the view's
queryset model) — or an explicit ``session_permissions`` entry keyed ``"<action>:<METHOD>"``,
``"<action>"`` or ``"<METHOD>"``. Superusers have them all.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema
from rest_framework import permissions
from rest_framework.request import Request

from accessctl.models import ApiToken
from accessctl.tokens import SCOPE_PERMISSIONS

_METHOD_ACTIONS = {
    "GET": "view",
    "HEAD": "view",
    "OPTIONS": "view",
    "POST": "add",
    "PUT": "change",
    "PATCH": "change",
    "DELETE": "delete",
}


def required_scope(view: Any, method: str) -> str | None:
    """The scope a token needs for this view's current action and ``method``; None: no token may."""
    action = getattr(view, "action", None)
    action_scopes: dict[str, str] = getattr(view, "action_scopes", None) or {}
    if action and action in action_scopes:
        return action_scopes[action]
    if method.upper() in permissions.SAFE_METHODS:
        return getattr(view, "read_scope", None)
    return getattr(view, "write_scope", None)


def required_model_perms(view: Any, method: str) -> list[str] | None:
    """Django permissions a session user needs; None: nothing declared (deny)."""
    action = getattr(view, "action", None)
    explicit: dict[str, list[str]] = getattr(view, "session_permissions", None) or {}
    for key in (f"{action}:{method.upper()}", action, method.upper()):
        if key and key in explicit:
            return list(explicit[key])
    model = getattr(view, "permission_model", None)
    if model is None:
        queryset = getattr(view, "queryset", None)
        model = getattr(queryset, "model", None)
    verb = _METHOD_ACTIONS.get(method.upper())
    if model is None or verb is None:
        return None
    return [f"{model._meta.app_label}.{verb}_{model._meta.model_name}"]


class ScopeOrModelPermission(permissions.BasePermission):
    """Scopes for tokens, model permissions for sessions; anything undeclared is refused."""

    message = "Not allowed."

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if not user or not user.is_authenticated or not user.is_active:
            return False
        if getattr(view, (request.method or "").lower(), None) is None:
            return True  # no handler for this method: DRF answers 405 and runs nothing
        if isinstance(request.auth, ApiToken):
            scope = required_scope(view, request.method or "GET")
            if scope is None or scope not in (request.auth.scopes or []):
                self.message = f"This token lacks the required scope: {scope}." if scope else "Not available to tokens."
                return False
        perms = required_model_perms(view, request.method or "GET")
        if perms is None:
            self.message = "Not allowed."
            return False
        if not user.has_perms(perms):
            # For a token: its owner lost (or never had) the permission; the scope alone grants nothing.
            self.message = (
                "The token's owner lacks the permission for this action."
                if isinstance(request.auth, ApiToken)
                else "You do not have permission to perform this action."
            )
            return False
        return True


_API_PERMISSIONS = sorted({perm for perms in SCOPE_PERMISSIONS.values() for perm in perms})


class ApiUser(permissions.BasePermission):
    """Whoever can use some endpoint: any valid token (whatever its scopes), or a signed-in user
    holding a permission of some scope. For the API's root and its unknown paths, which show no data:
    strangers get 401/403 there as everywhere else in the API."""

    message = "You have no access to the API."

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if not user or not user.is_authenticated or not user.is_active:
            return False
        return isinstance(request.auth, ApiToken) or any(user.has_perm(perm) for perm in _API_PERMISSIONS)


class ScopedAutoSchema(AutoSchema):
    """Adds the required token scope to each operation's description (and as ``x-required-scope``)."""

    def _scope(self) -> str | None:
        return required_scope(self.view, self.method)

    def get_description(self) -> str:
        description = super().get_description() or ""
        scope = self._scope()
        note = f"Token scope: `{scope}`." if scope else "Not available to API tokens."
        return f"{description}\n\n{note}".strip()

    def get_operation(self, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        operation = super().get_operation(*args, **kwargs)
        if operation is not None:
            scope = self._scope()
            if scope:
                operation["x-required-scope"] = scope
        return operation
