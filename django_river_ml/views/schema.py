"""The River API's OpenAPI schema and its docs page (drf-spectacular's views, configured here).

Both pass :data:`django_river_ml.schema.SPECTACULAR_SETTINGS` themselves, so a site needs no
``SPECTACULAR_SETTINGS``; both follow the River API's authentication and throttling settings.
The docs page is Swagger UI served from the ``drf-spectacular-sidecar`` static files (no CDN):
it needs ``drf_spectacular`` (its template) and ``drf_spectacular_sidecar`` (its static files)
in INSTALLED_APPS, and the site's static files served.
"""

from __future__ import annotations

from django.apps import apps
from django.http import JsonResponse
from django.urls import NoReverseMatch, reverse
from drf_spectacular.plumbing import get_relative_url, set_query_parameters
from drf_spectacular.settings import patched_settings
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from django_river_ml.schema import SPECTACULAR_SETTINGS, exclude
from django_river_ml.views.api import RiverAPIView

DOCS_APPS = ("drf_spectacular", "drf_spectacular_sidecar")


class SchemaView(RiverAPIView, SpectacularAPIView):
    """The schema: YAML by default, JSON with ``?format=json`` or ``Accept: application/vnd.oai.openapi+json``."""

    renderer_classes = SpectacularAPIView.renderer_classes
    custom_settings = SPECTACULAR_SETTINGS
    serve_public = True  # every route, whoever asks

    @exclude
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class DocsView(RiverAPIView, SpectacularSwaggerView):
    """Swagger UI for the schema of the same URL namespace."""

    renderer_classes = SpectacularSwaggerView.renderer_classes
    title = f"{SPECTACULAR_SETTINGS['TITLE']} docs"

    @exclude
    def get(self, request, *args, **kwargs):
        missing = [name for name in DOCS_APPS if not apps.is_installed(name)]
        if missing:
            return JsonResponse({"message": (
                f"The API docs page needs {' and '.join(missing)} in INSTALLED_APPS; "
                "the schema itself is served without them."
            )}, status=404)
        try:
            self.schema_url = self._schema_url(request)
        except NoReverseMatch:
            return JsonResponse({"message": "The docs page needs the schema route (API_VIEWS_ENABLED)."}, status=404)
        with patched_settings(SPECTACULAR_SETTINGS):
            return super().get(request, *args, **kwargs)

    def _schema_url(self, request) -> str:
        namespace = request.resolver_match.namespace if request.resolver_match else ""
        url = reverse(f"{namespace}:schema" if namespace else "schema")
        return set_query_parameters(url=get_relative_url(url), lang=request.GET.get("lang"),
                                    version=request.GET.get("version"))

    def _get_schema_url(self, request):
        return self.schema_url
