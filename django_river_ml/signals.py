"""Every new user gets an API token (for the auth/token route and ``Authorization: Token``)."""

from django.apps import apps
from django.conf import settings
from django.db.models.signals import post_save


def create_api_token(sender, instance, created, **kwargs):
    if created:
        from rest_framework.authtoken.models import Token

        Token.objects.get_or_create(user=instance)


def connect() -> None:
    if apps.is_installed("rest_framework.authtoken"):
        post_save.connect(create_api_token, sender=settings.AUTH_USER_MODEL, dispatch_uid="django_river_ml.api_token")
