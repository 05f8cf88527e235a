"""Settings of the example site used by the demo, the docs and the tests.

Every DJANGO_RIVER_ML value can be overridden with an environment variable
DJANGO_RIVER_ML_<NAME>, e.g. DJANGO_RIVER_ML_STORAGE_BACKEND=redis. The site's own:
DJANGO_SECRET_KEY, DJANGO_DEBUG, DJANGO_DATABASE_PATH.
"""

import os
from pathlib import Path

from example_project.secret_key import secret_key

BASE_DIR = Path(__file__).resolve().parent.parent
# The embedded store, the generated secret key and the throttles' cache live here.
DATA_DIR = Path(os.environ.get("DJANGO_RIVER_ML_DATA_DIR") or BASE_DIR / "river_ml_data")

# Never a key from the repository: DJANGO_SECRET_KEY, else a random one made on first run in
# DATA_DIR/secret_key (mode 0600) and reused by every worker and restart.
SECRET_KEY = secret_key(DATA_DIR)
DEBUG = os.environ.get("DJANGO_DEBUG", "false").lower() in ("1", "true", "yes")
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]", "testserver"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_river_ml",
    # The River API's docs page (/api/docs/): Swagger UI's template, and its static files (no CDN).
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "example_project",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files (the API docs page's Swagger UI) under gunicorn too.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]

ROOT_URLCONF = "example_project.urls"
WSGI_APPLICATION = "example_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_DATABASE_PATH", BASE_DIR / "db.sqlite3"),
    }
}

# Rate limits and failed-authentication counts must be shared by gunicorn's worker processes
# (Django's default in-memory cache is per process): a file cache serves every process of one host.
# Serving from several hosts, use Django's Redis cache instead.
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache", "LOCATION": DATA_DIR / "cache"},
}

# The dashboard (/api/dashboard/) sends a browser that is not signed in to this page, and back.
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "django_river_ml:dashboard"
LOGOUT_REDIRECT_URL = "login"

STATIC_URL = "static/"
# Serve app static files straight from the apps (no collectstatic step for the example site).
WHITENOISE_USE_FINDERS = True
USE_TZ = True
TIME_ZONE = "UTC"  # Django's default is America/Chicago (worker logs would disagree with the server's)

# Authentication is on by default: every route but service info needs a credential. Get a token
# with `python manage.py river_token <user> --create-user`. For local play, turn it off with
# DJANGO_RIVER_ML_DISABLE_AUTHENTICATION=true (or "DISABLE_AUTHENTICATION": True below).
DJANGO_RIVER_ML = {
    # The embedded store lives here unless DJANGO_RIVER_ML_DATA_DIR says otherwise.
    "DATA_DIR": DATA_DIR,
    # The demo's custom-flavor model class may be uploaded as a pickle.
    "ALLOWED_MODEL_MODULES": ["example_project.custom_models"],
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
