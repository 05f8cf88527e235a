"""Routes of the River API under ``/<URL_PREFIX>/``.

Include them in a site's urls: ``path("", include("django_river_ml.urls"))``.
``API_VIEWS_ENABLED`` (route names) limits which are served. :data:`ROUTE_NAMES` is the one list
of route names: the system check holds ``API_VIEWS_ENABLED``, ``AUTHENTICATED_VIEWS`` and
``VIEW_RATE_LIMIT`` to it, and docs/settings.md's table is tested against it. The Prometheus scrape
(``PROMETHEUS_PATH``, ``/metrics`` by default) comes with them, outside the prefix and those settings.
"""

import re

from django.urls import path, re_path

from django_river_ml import views
from django_river_ml.settings import river_settings
from django_river_ml.views import lifecycle
from django_river_ml.views.prometheus import PrometheusView
from django_river_ml.views.schema import DocsView, SchemaView

app_name = "django_river_ml"

prefix = river_settings.URL_PREFIX.strip("/")
prefix = f"{prefix}/" if prefix else ""

routes = [
    path(f"{prefix}", views.ServiceInfoView.as_view(), name="service_info"),
    path(f"{prefix}auth/token/", views.AuthTokenView.as_view(), name="auth_token"),
    # The realm of the 401 challenge, as clients request it (no trailing slash).
    path(f"{prefix}auth/token", views.AuthTokenView.as_view(), name="auth_token_realm"),
    path(f"{prefix}learn/", views.LearnView.as_view(), name="learn"),
    path(f"{prefix}predict/", views.PredictView.as_view(), name="predict"),
    path(f"{prefix}label/", views.LabelView.as_view(), name="label"),
    path(f"{prefix}metrics/", views.MetricsView.as_view(), name="metrics"),
    path(f"{prefix}stats/", views.StatsView.as_view(), name="stats"),
    path(f"{prefix}models/", views.ModelsView.as_view(), name="models"),
    path(f"{prefix}model/", views.ModelDeleteView.as_view(), name="model_delete"),
    path(f"{prefix}model/download/<str:name>/", views.ModelDownloadView.as_view(), name="model_download"),
    # Before model_upload, which would take "access" for a flavor (as "download" above).
    path(f"{prefix}model/access/<str:name>/", views.ModelAccessView.as_view(), name="model_access"),
    # The lifecycle (docs/lifecycle.md), before model_upload, which would take "versions" … for a model name.
    path(f"{prefix}model/<str:name>/versions/", lifecycle.VersionsView.as_view(), name="model_versions"),
    path(f"{prefix}model/<str:name>/rollback/", lifecycle.RollbackView.as_view(), name="model_rollback"),
    path(f"{prefix}model/<str:name>/challengers/", lifecycle.ChallengersView.as_view(), name="model_challengers"),
    path(f"{prefix}model/<str:name>/challengers/<str:challenger>/", lifecycle.ChallengerView.as_view(),
         name="model_challenger"),
    path(f"{prefix}model/<str:name>/promote/", lifecycle.PromoteView.as_view(), name="model_promote"),
    path(f"{prefix}model/<str:name>/", views.ModelView.as_view(), name="model"),
    path(f"{prefix}model/<str:flavor>/<str:name>/", views.ModelUploadView.as_view(), name="model_upload"),
    path(f"{prefix}stream/events/", views.EventStreamView.as_view(), name="stream_events"),
    path(f"{prefix}stream/metrics/", views.MetricStreamView.as_view(), name="stream_metrics"),
    path(f"{prefix}dashboard/", views.DashboardView.as_view(), name="dashboard"),
    # The OpenAPI schema of the routes above, and Swagger UI for it.
    path(f"{prefix}schema/", SchemaView.as_view(), name="schema"),
    path(f"{prefix}docs/", DocsView.as_view(), name="docs"),
]

#: The names settings may use for the routes, in the order above.
ROUTE_NAMES = tuple(route.name for route in routes)

enabled = set(river_settings.API_VIEWS_ENABLED)
urlpatterns = [route for route in routes if not enabled or route.name in enabled]
# The Prometheus scrape (docs/monitoring.md): not an API route (it has access settings of its own), at the site's
# root by default, where PROMETHEUS_PATH says (and before the prefix's JSON 404, should the path be under it).
if river_settings.PROMETHEUS_PATH:
    urlpatterns.append(path(river_settings.PROMETHEUS_PATH, PrometheusView.as_view(), name="prometheus"))
if prefix:  # everything else under the prefix is a JSON 404 (and no APPEND_SLASH redirect that drops bodies)
    urlpatterns.append(re_path(rf"^{re.escape(prefix)}", views.NotFoundView.as_view(), name="not_found"))
