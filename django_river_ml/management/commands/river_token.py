"""Print a user's API token (made if the user has none): ``manage.py river_token alice``."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Print a user's API token for the River API, creating the token (and with --create-user, the user)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--create-user", action="store_true", help="Create the user if it does not exist.")

    def handle(self, *args, username, create_user, **options):
        from django.apps import apps

        if not apps.is_installed("rest_framework.authtoken"):
            raise CommandError("Add 'rest_framework.authtoken' to INSTALLED_APPS (and migrate) to use API tokens.")
        from rest_framework.authtoken.models import Token

        users = get_user_model()._default_manager
        try:
            user = users.get_by_natural_key(username)
        except get_user_model().DoesNotExist:
            if not create_user:
                raise CommandError(f"No user {username!r}; pass --create-user to create one.") from None
            user = users.create_user(**{get_user_model().USERNAME_FIELD: username})
        token, _ = Token.objects.get_or_create(user=user)
        self.stdout.write(token.key)
