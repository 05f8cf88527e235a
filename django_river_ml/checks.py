"""System checks: a bad DJANGO_RIVER_ML setting stops start-up with a clear message."""

import os

from django.apps import apps
from django.core.checks import Error, Tags, Warning, register

from django_river_ml.settings import river_settings


@register(Tags.compatibility)
def check_settings(app_configs=None, **kwargs):
    return [
        Error(problem, hint="Fix DJANGO_RIVER_ML in settings or the DJANGO_RIVER_ML_* environment variable.",
              id="django_river_ml.E001")
        for problem in river_settings.problems()
    ]


@register(Tags.compatibility, deploy=True)
def check_hash_seed(app_configs=None, **kwargs):
    """Replaying a model's log must give the same model in every process and after restarts.

    Some river models iterate over sets of feature names while they learn (KMeans
    draws its random centers in that order), and set order follows Python's
    per-process hash seed.
    """
    if os.environ.get("PYTHONHASHSEED", "").isdigit():
        return []
    return [Warning(
        "PYTHONHASHSEED is not set to a fixed number: worker processes started separately (after a restart, "
        "or on other hosts sharing Redis) may replay some models (such as KMeans) into different states.",
        hint="Start the server with PYTHONHASHSEED=0 (any fixed number, the same for every process).",
        id="django_river_ml.W001",
    )]


@register(Tags.security)
def check_authentication(app_configs=None, **kwargs):
    if river_settings.problems() or river_settings.DISABLE_AUTHENTICATION:
        return []
    if not apps.is_installed("rest_framework.authtoken"):
        return [Error(
            "Authentication is on, but rest_framework.authtoken (the users' API tokens) is not installed.",
            hint="Add 'rest_framework.authtoken' to INSTALLED_APPS and migrate, or set DISABLE_AUTHENTICATION.",
            id="django_river_ml.E002",
        )]
    return []
