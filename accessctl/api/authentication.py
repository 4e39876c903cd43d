"""DRF authentication with integrator tokens: ``Authorization: Bearer <prefix>.<secret>``.

A request without a bearer header is left to the next authentication class (session). A bearer
header that is malformed, unknown, revoked or expired is refused with 401; it never falls back to
the session.
"""

from __future__ import annotations

import logging

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from accessctl.models import ApiToken
from accessctl.tokens import api_token_is_usable, api_token_secret_matches, api_token_split, api_token_touch

logger = logging.getLogger(__name__)

KEYWORD = "Bearer"


class ApiTokenAuthentication(authentication.BaseAuthentication):
    """Authenticates as the token's user; ``request.auth`` is the :class:`ApiToken` (its scopes apply)."""

    def authenticate(self, request: Request) -> tuple[object, ApiToken] | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != KEYWORD.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Invalid bearer header: expected 'Bearer <prefix>.<secret>'.")
        try:
            presented = header[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Invalid token.") from None
        parts = api_token_split(presented)
        if parts is None:
            raise exceptions.AuthenticationFailed("Invalid token.")
        prefix, secret = parts
        token = ApiToken.objects.select_related("user").filter(prefix=prefix).first()
        if not api_token_secret_matches(token, secret):
            logger.info("api auth refused: unknown token or wrong secret (prefix %s)", prefix)
            raise exceptions.AuthenticationFailed("Invalid token.")
        assert token is not None
        if not api_token_is_usable(token):
            logger.info("api auth refused: token %s revoked or expired", prefix)
            raise exceptions.AuthenticationFailed("Token revoked or expired.")
        if not token.user.is_active:
            logger.info("api auth refused: token %s belongs to inactive user %s", prefix, token.user_id)
            raise exceptions.AuthenticationFailed("Token user is inactive.")
        api_token_touch(token=token)
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        # Makes DRF answer 401 (with this challenge) rather than 403 to unauthenticated requests.
        return f'{KEYWORD} realm="api"'


class ApiTokenAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "accessctl.api.authentication.ApiTokenAuthentication"
    name = "apiToken"

    def get_security_definition(self, auto_schema: object) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "<prefix>.<secret>",
            "description": "API token issued in the admin. Each operation lists the scope it requires.",
        }
