from django.urls import include, path
from django.views.generic import TemplateView

urlpatterns = [
    path("", TemplateView.as_view(template_name="example_project/index.html"), name="home"),
    path("", include("django_river_ml.urls")),
]
