from django.apps import AppConfig


class DjangoRiverMLConfig(AppConfig):
    name = "django_river_ml"
    verbose_name = "Django River ML"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django.core.signals import request_started

        from django_river_ml import checks, signals  # noqa: F401 - checks register themselves
        from django_river_ml.sandbox import prewarm

        signals.connect()
        request_started.connect(prewarm, dispatch_uid="django_river_ml.sandbox.prewarm")
