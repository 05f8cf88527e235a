"""Authentication for the River API: API tokens, short-lived JWTs, sessions, throttling.

The flow the riverapi client implements: a protected route answers 401 with
``WWW-Authenticate: Bearer realm="<base>/<prefix>/auth/token",service="<base>"``;
the client GETs the realm with HTTP Basic ``user:<API token>`` (DRF's
``rest_framework.authtoken`` key), receives a JWT valid ``TOKEN_EXPIRES_SECONDS``
and retries with ``Authorization: Bearer <jwt>``. ``Authorization: Token <key>``
and a logged-in Django session are accepted as well.

A JWT is accepted only if it lives no longer than ``TOKEN_EXPIRES_SECONDS`` and was not
issued in the future: even with the signing key, no one mints a token for years. Failed
authentications are throttled per client (:mod:`django_river_ml.throttling`).

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
from rest_framework import authentication, exceptions, permissions

from django_river_ml.settings import river_settings
from django_river_ml.throttling import FailedAuthenticationThrottle, RouteRateThrottle  # noqa: F401 - re-exported

JWT_ALGORITHM = "HS256"
JWT_ISSUER = "django-river-ml"
#: Clock skew tolerated between the hosts that issue and check JWTs (on exp, iat and the lifetime).
JWT_LEEWAY_SECONDS = 30

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


class ExpiredToken(exceptions.AuthenticationFailed):
    """A token we signed, past its time: the client's normal cue to get a new one, not a guess."""


def decode_jwt(token: str) -> dict:
    try:
        claims = jwt.decode(token, jwt_secret(), algorithms=[JWT_ALGORITHM], issuer=JWT_ISSUER,
                            leeway=JWT_LEEWAY_SECONDS, options={"require": ["exp", "iat", "sub"]})
    except jwt.ExpiredSignatureError:
        raise ExpiredToken("The token has expired; get a new one from the auth/token route.") from None
    except jwt.InvalidTokenError as error:
        raise exceptions.AuthenticationFailed(f"The token is not valid ({error}).") from None
    lifetime = int(claims["exp"]) - int(claims["iat"])  # both checked to be whole numbers by jwt.decode
    if lifetime > int(river_settings.TOKEN_EXPIRES_SECONDS) + JWT_LEEWAY_SECONDS:
        raise exceptions.AuthenticationFailed(
            f"The token is not valid (it lives {lifetime} s; this server issues tokens for "
            f"{river_settings.TOKEN_EXPIRES_SECONDS} s).")
    return claims


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


class ThrottledFailures:
    """Authenticator mixin: refused credentials count against the client (``AUTH_FAILURE_RATE_LIMIT``);
    over the limit, the client gets 429 and its credentials are not looked at.

    With ``check_first = False`` a credential is checked before the limit is: for JWTs, which
    cannot be guessed, so a valid one costs no cache read and keeps working behind a busy NAT.
    """

    check_first = True

    def authenticate(self, request):
        if not authentication.get_authorization_header(request):
            return super().authenticate(request)
        throttle = FailedAuthenticationThrottle()
        if self.check_first:
            self._refuse_if_blocked(throttle, request)
        try:
            return super().authenticate(request)
        except ExpiredToken:
            raise
        except exceptions.AuthenticationFailed:
            if not self.check_first:
                self._refuse_if_blocked(throttle, request)
            throttle.record_failure(request)
            raise

    @staticmethod
    def _refuse_if_blocked(throttle, request):
        wait = throttle.seconds_blocked(request)
        if wait is not None:
            raise exceptions.Throttled(wait, detail="Too many failed authentications from this address.")


class PlainBearerJWTAuthentication(authentication.BaseAuthentication):
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


class BearerJWTAuthentication(ThrottledFailures, PlainBearerJWTAuthentication):
    """The Bearer JWT, its failures throttled (after the check: a valid JWT costs no cache read)."""

    check_first = False


class APITokenAuthentication(ThrottledFailures, authentication.TokenAuthentication):
    """DRF's ``Authorization: Token <key>``."""


class BasicAPITokenAuthentication(ThrottledFailures, authentication.BasicAuthentication):
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
    return route_requires_authentication(route_name(request))


def route_requires_authentication(name: str | None) -> bool:
    """Whether the route of that name needs credentials (DISABLE_AUTHENTICATION, AUTHENTICATED_VIEWS)."""
    if river_settings.DISABLE_AUTHENTICATION:
        return False
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
