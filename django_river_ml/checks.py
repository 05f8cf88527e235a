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


#: SECRET_KEYs published in this project's repository (the example site's old fallback).
PUBLISHED_SECRET_KEYS = frozenset({"example-project-insecure-key-change-me"})


@register(Tags.security)
def check_signing_key(app_configs=None, **kwargs):
    """JWTs are signed with a key derived from SECRET_KEY: a published one lets anyone forge them."""
    from django.conf import settings

    if settings.DEBUG or river_settings.problems() or river_settings.DISABLE_AUTHENTICATION:
        return []
    if river_settings.JWT_SERVER_SECRET or settings.SECRET_KEY not in PUBLISHED_SECRET_KEYS:
        return []
    return [Error(
        "SECRET_KEY is a key published in django-river-ml's repository, and DEBUG is off: anyone can sign "
        "JWTs (and sessions) that this site accepts.",
        hint="Set a secret SECRET_KEY (the example site reads DJANGO_SECRET_KEY, or makes one in its data "
             "directory when it is unset), or a secret JWT_SERVER_SECRET.",
        id="django_river_ml.E003",
    )]


@register(Tags.security, deploy=True)
def check_throttle_cache(app_configs=None, **kwargs):
    """Throttles count in THROTTLE_CACHE; an in-memory cache counts in each worker process alone."""
    from django.conf import settings

    if river_settings.problems():
        return []
    backend = settings.CACHES[river_settings.THROTTLE_CACHE].get("BACKEND", "")
    if not backend.endswith(("locmem.LocMemCache", "dummy.DummyCache")):
        return []
    return [Warning(
        f"THROTTLE_CACHE ({river_settings.THROTTLE_CACHE!r}) is {backend.rsplit('.', 1)[-1]}: with several worker "
        "processes, each counts rate limits and failed authentications alone (or, with DummyCache, nothing counts).",
        hint="Point THROTTLE_CACHE at a cache every process shares: Django's Redis cache, or a FileBasedCache "
             "on one host.",
        id="django_river_ml.W002",
    )]


@register(Tags.security, deploy=True)
def check_sandbox(app_configs=None, **kwargs):
    """Uploads are loaded in a confined process; say which of the kernel's walls it goes without."""
    from django_river_ml.sandbox import confine

    missing = confine.report().missing()
    if not missing:
        return []
    return [Warning(
        f"The process that loads uploaded models runs without {', '.join(missing)} on this machine: it still "
        "has its resource limits and the restricted unpickler, but fewer walls if those were ever broken.",
        hint="Run on Linux 5.13+ with Landlock enabled, unprivileged user namespaces (or as root), and "
             "libseccomp installed (pip install pyseccomp; apt-get install libseccomp2). See docs/security.md.",
        id="django_river_ml.W003",
    )]


@register(Tags.compatibility)
def check_eventstream(app_configs=None, **kwargs):
    """The live streams read django-eventstream's storage and channel manager: they must be ours (or built on them)."""
    from django.conf import settings
    from django.utils.module_loading import import_string

    from django_river_ml.apps import EVENTSTREAM_DEFAULTS

    found = []
    for name, ours in EVENTSTREAM_DEFAULTS.items():
        value = getattr(settings, name, ours)
        try:
            usable = issubclass(import_string(value), import_string(ours))
        except (ImportError, TypeError):
            usable = False
        if not usable:
            found.append(Error(
                f"{name} is {value!r}: the live streams (/stream/events/, /stream/metrics/) need {ours} "
                "or a subclass of it.",
                hint=f"Remove {name} from the settings (the app sets it), or subclass {ours}.",
                id="django_river_ml.E004",
            ))
    return found
