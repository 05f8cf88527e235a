from django_river_ml.views.api import (
    LabelView,
    LearnView,
    MetricsView,
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

__all__ = [
    "LabelView",
    "LearnView",
    "MetricsView",
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
