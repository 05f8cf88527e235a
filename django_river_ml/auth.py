"""Authentication for the River API: API tokens, short-lived JWTs, sessions, throttling.

The flow the riverapi client implements: a protected route answers 401 with
``WWW-Authenticate: Bearer realm="<base>/<prefix>/auth/token",service="<base>"``;
the client GETs the realm with HTTP Basic ``user:<API token>`` (DRF's
``rest_framework.authtoken`` key), receives a JWT valid ``TOKEN_EXPIRES_SECONDS``
and retries with ``Authorization: Bearer <jwt>``. ``Authorization: Token <key>``
and a logged-in Django session are accepted as well.

>>> from django.contrib.auth.models import User
>>> token = issue_jwt(User(username="ada"))
>>> decode_jwt(token["token"])["sub"]
'ada'
"""

from __future__ import annotations

import time

import jwt
from django.contrib.auth import get_user_model
from django.utils.crypto import salted_hmac
from rest_framework import authentication, exceptions, permissions, throttling

from django_river_ml.settings import river_settings

JWT_ALGORITHM = "HS256"
JWT_ISSUER = "django-river-ml"

#: Route names that never need credentials (the token route checks its own).
OPEN_ROUTES = ("service_info", "auth_token", "auth_token_realm", "not_found", "schema", "docs")


def jwt_secret() -> str:
    """``JWT_SERVER_SECRET``, else a key derived from Django's SECRET_KEY."""
    return river_settings.JWT_SERVER_SECRET or salted_hmac("django_river_ml.jwt", "signing key").hexdigest()


def issue_jwt(user) -> dict:
    """A short-lived token for ``user``, in the answer shape of ``GET /api/auth/token/``."""
    issued_at = int(time.time())
    expires_in = int(river_settings.TOKEN_EXPIRES_SECONDS)
    claims = {"sub": user.get_username(), "iat": issued_at, "exp": issued_at + expires_in, "iss": JWT_ISSUER}
    return {"token": jwt.encode(claims, jwt_secret(), algorithm=JWT_ALGORITHM), "expires_in": expires_in,
            "issued_at": issued_at}


def decode_jwt(token: str) -> dict:
    try:
        return jwt.decode(token, jwt_secret(), algorithms=[JWT_ALGORITHM], issuer=JWT_ISSUER,
                          options={"require": ["exp", "iat", "sub"]})
    except jwt.ExpiredSignatureError:
        raise exceptions.AuthenticationFailed("The token has expired; get a new one from the auth/token route.")
    except jwt.InvalidTokenError as error:
        raise exceptions.AuthenticationFailed(f"The token is not valid ({error}).")


def _active_user(username: str):
    try:
        user = get_user_model()._default_manager.get_by_natural_key(username)
    except get_user_model().DoesNotExist:
        raise exceptions.AuthenticationFailed("The token's user does not exist.") from None
    if not user.is_active:
        raise exceptions.AuthenticationFailed("The token's user is inactive.")
    return user


def token_realm(request) -> str:
    base = (river_settings.DOMAIN_URL or request.build_absolute_uri("/")).rstrip("/")
    prefix = river_settings.URL_PREFIX.strip("/")
    return f"{base}/{prefix}/auth/token" if prefix else f"{base}/auth/token", base


class BearerJWTAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer <jwt>`` issued by the token route; its challenge leads clients there."""

    keyword = b"bearer"

    def authenticate(self, request):
        parts = authentication.get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword:
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("The Bearer header must be 'Bearer <token>'.")
        try:
            token = parts[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("The token is not valid.") from None
        claims = decode_jwt(token)
        return _active_user(claims["sub"]), claims

    def authenticate_header(self, request):
        realm, service = token_realm(request)
        return f'Bearer realm="{realm}",service="{service}"'


class APITokenAuthentication(authentication.TokenAuthentication):
    """DRF's ``Authorization: Token <key>``."""


class BasicAPITokenAuthentication(authentication.BasicAuthentication):
    """HTTP Basic ``user:<API token>``, accepted only by the token route."""

    www_authenticate_realm = "django-river-ml"

    def authenticate_credentials(self, userid, password, request=None):
        from rest_framework.authtoken.models import Token

        token = Token.objects.select_related("user").filter(key=password).first()
        if token is None or token.user.get_username() != userid:
            raise exceptions.AuthenticationFailed("Invalid user or API token.")
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed("The user is inactive.")
        return token.user, token


class SessionAuthentication(authentication.SessionAuthentication):
    """A logged-in Django session (the browser dashboard); CSRF is enforced on writes."""


def route_name(request) -> str | None:
    match = getattr(request, "resolver_match", None)
    return match.url_name if match else None


def authentication_required(request) -> bool:
    if river_settings.DISABLE_AUTHENTICATION:
        return False
    name = route_name(request)
    protected = river_settings.AUTHENTICATED_VIEWS
    if protected is None:
        return name not in OPEN_ROUTES
    return name in protected


class IsAuthenticatedWhereRequired(permissions.BasePermission):
    """Credentials are required on the routes ``AUTHENTICATED_VIEWS`` names (default: all but service info)."""

    def has_permission(self, request, view):
        if not authentication_required(request):
            return True
        return bool(request.user and request.user.is_authenticated)


class RouteRateThrottle(throttling.SimpleRateThrottle):
    """``VIEW_RATE_LIMIT``: one rate for every route (``"100/minute"``) or one per route name.

    Counts per user when authenticated, else per client address, in Django's
    default cache (use a shared cache, e.g. Redis, when several processes serve).
    """

    def __init__(self):  # the rate depends on the route, known only in allow_request
        pass

    def allow_request(self, request, view):
        limit = river_settings.VIEW_RATE_LIMIT
        self.scope = route_name(request) or "river"
        self.rate = limit.get(self.scope) if isinstance(limit, dict) else limit
        if not self.rate:
            return True
        self.num_requests, self.duration = self.parse_rate(self.rate)
        return super().allow_request(request, view)

    def get_cache_key(self, request, view):
        ident = request.user.pk if request.user and request.user.is_authenticated else self.get_ident(request)
        return self.cache_format % {"scope": f"django_river_ml:{self.scope}", "ident": ident}
