from django.apps import AppConfig


class DjangoRiverMLConfig(AppConfig):
    name = "django_river_ml"
    verbose_name = "Django River ML"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django_river_ml import checks, signals  # noqa: F401 - checks register themselves

        signals.connect()
