"""The example site under ASGI (``make serve``): the app's handler runs its sync views as fast as WSGI does."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")

from django_river_ml.asgi import get_asgi_application  # noqa: E402 - after the settings module is named

application = get_asgi_application()
