"""The dashboard: ``GET /<prefix>/dashboard/``, a live page of the models the caller may read.

The page carries no model data of its own. Its script reads the JSON routes once (the first
paint), then follows the two event streams (``stream/events/`` and ``stream/metrics/``, no
polling) with the browser's session: it shows exactly what the API shows the signed-in user.

Authentication is the API's (the same authenticators, ``AUTHENTICATED_VIEWS``,
``DISABLE_AUTHENTICATION``, ``VIEW_RATE_LIMIT``). Where the route needs credentials, a browser
that is not signed in is sent to the site's login page (``LOGIN_URL``, when that URL is served
here), else it gets a 401 page saying how to sign in. The page's script, styles and chart
library are the app's static files (no CDN).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings as django_settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpResponse
from django.shortcuts import render, resolve_url
from django.template.loader import render_to_string
from django.urls import NoReverseMatch, Resolver404, resolve, reverse
from rest_framework.exceptions import NotAuthenticated
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.renderers import StaticHTMLRenderer

from django_river_ml import schema as openapi
from django_river_ml.exceptions import AuthenticationRequired
from django_river_ml.views.api import RiverAPIView

#: Route names whose URLs the page's script uses, as the config's keys.
PAGE_ROUTES = {
    "info": "service_info",
    "models": "models",
    "metrics": "metrics",
    "stats": "stats",
    "events": "stream_events",
    "metricsStream": "stream_metrics",
    "docs": "docs",
}
#: Stands for a model's name in the model URL the page fills in.
MODEL_PLACEHOLDER = "__MODEL__"
#: Events the page keeps per model in its feed.
FEED_SIZE = 20


class HTMLOnly(BaseContentNegotiation):
    """The page is HTML whatever the client accepts (and errors are HTML pages too)."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


def login_url() -> str | None:
    """``LOGIN_URL`` if a browser can sign in there: another site's URL, or a path this site serves."""
    try:
        url = resolve_url(django_settings.LOGIN_URL)
    except NoReverseMatch:  # a route name that is not a route
        return None
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme or parts.netloc:
        return url
    try:
        match = resolve(parts.path)
    except Resolver404:
        return None
    if match.url_name == "not_found" and match.app_name == "django_river_ml":  # the API's JSON 404
        return None
    return url


def logout_url() -> str | None:
    """The site's ``logout`` route (django.contrib.auth's name for it), if it has one."""
    try:
        return reverse("logout")
    except NoReverseMatch:
        return None


def route_urls(request) -> dict[str, str | None]:
    """The URLs of the routes the page uses, in the namespace it is served from (None: not served)."""
    match = request.resolver_match
    namespace = f"{match.namespace}:" if match and match.namespace else ""
    urls = {}
    for key, name in PAGE_ROUTES.items():
        try:
            urls[key] = reverse(namespace + name)
        except NoReverseMatch:
            urls[key] = None
    try:
        urls["model"] = reverse(namespace + "model", kwargs={"name": MODEL_PLACEHOLDER})
    except NoReverseMatch:
        urls["model"] = None
    return urls


class DashboardView(RiverAPIView):
    """The dashboard page; every error is an HTML page, and a browser not signed in goes to the login page."""

    renderer_classes = [StaticHTMLRenderer]
    content_negotiation_class = HTMLOnly
    http_method_names = ["get", "head"]

    @openapi.exclude
    def get(self, request):
        user = request.user
        signed_in = bool(user and user.is_authenticated)
        config = {"urls": route_urls(request), "modelPlaceholder": MODEL_PLACEHOLDER, "loginUrl": login_url(),
                  "feedSize": FEED_SIZE}
        context = {"config": config, "username": user.get_username() if signed_in else None,
                   "logout_url": logout_url() if signed_in else None}
        response = render(request, "django_river_ml/dashboard.html", context)
        response["Cache-Control"] = "no-store"
        return response

    def handle_exception(self, exc):
        if isinstance(exc, AuthenticationRequired):
            exc = NotAuthenticated(exc.message)
        if isinstance(exc, NotAuthenticated):  # no credential at all: a browser that has not signed in
            url = login_url()
            if url:
                return redirect_to_login(self.request.get_full_path(), url)
        answer = super().handle_exception(exc)  # status, message and headers (WWW-Authenticate, Retry-After)
        return self.error_page(answer)

    def error_page(self, answer) -> HttpResponse:
        status = answer.status_code
        message = answer.data.get("message", "") if isinstance(answer.data, dict) else str(answer.data)
        sign_in = login_url() if status == 401 else None
        if sign_in:
            sign_in = redirect_to_login(self.request.get_full_path(), sign_in)["Location"]
        context = {"status": status, "message": message, "unauthenticated": status == 401, "sign_in": sign_in}
        page = HttpResponse(render_to_string("django_river_ml/dashboard_error.html", context, self.request),
                            status=status, content_type="text/html; charset=utf-8")
        for header in ("WWW-Authenticate", "Retry-After"):
            if header in answer:
                page[header] = answer[header]
        page["Cache-Control"] = "no-store"
        return page
