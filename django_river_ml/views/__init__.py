from django_river_ml.views.api import (
    LabelView,
    LearnView,
    MetricsView,
    ModelDeleteView,
    ModelDownloadView,
    ModelsView,
    ModelUploadView,
    ModelView,
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
    "PredictView",
    "ServiceInfoView",
    "StatsView",
]
