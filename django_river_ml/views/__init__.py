from django_river_ml.views.api import (
    AuthTokenView,
    LabelView,
    LearnView,
    MetricsView,
    ModelAccessView,
    ModelDeleteView,
    ModelDownloadView,
    ModelsView,
    ModelUploadView,
    ModelView,
    NotFoundView,
    PredictView,
    ServiceInfoView,
    StatsView,
)
from django_river_ml.views.streams import EventStreamView, MetricStreamView
from django_river_ml.views.dashboard import DashboardView  # noqa: F401 - served by urls.py

__all__ = [
    "EventStreamView",
    "MetricStreamView",
    "AuthTokenView",
    "LabelView",
    "LearnView",
    "MetricsView",
    "ModelAccessView",
    "ModelDeleteView",
    "ModelDownloadView",
    "ModelUploadView",
    "ModelView",
    "ModelsView",
    "NotFoundView",
    "PredictView",
    "ServiceInfoView",
    "StatsView",
]
