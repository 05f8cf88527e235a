"""System checks: a bad DJANGO_RIVER_ML setting stops start-up with a clear message."""

from django.core.checks import Error, Tags, register

from django_river_ml.settings import river_settings


@register(Tags.compatibility)
def check_settings(app_configs=None, **kwargs):
    return [
        Error(problem, hint="Fix DJANGO_RIVER_ML in settings or the DJANGO_RIVER_ML_* environment variable.",
              id="django_river_ml.E001")
        for problem in river_settings.problems()
    ]
