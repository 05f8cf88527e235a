"""Who may do what with a model: its owner, whom it is shared with, staff, and server code.

Every model has an :class:`~django_river_ml.storage.base.Access` in the store:
its owner (the user who uploaded it) and the users and groups it is shared
with, by primary key, so renaming a user keeps their models and a new account
that reuses a deleted user's name does not inherit them. A :class:`Caller` is
who is asking:

- full access: server code (``DjangoClient()`` without a user) and the API
  with ``DISABLE_AUTHENTICATION`` (everything shared, as before owners existed);
- staff (``is_staff`` or ``is_superuser``): every model, like full access,
  but what they upload is theirs;
- a user: the models they own or that are shared with them or their groups;
  sharing gives everything but changing the sharing: see, use, download,
  replace and delete;
- anonymous: nothing of their own.

``public`` marks a route the site left open through ``AUTHENTICATED_VIEWS``:
there every caller may read and use every model (list, inspect, download,
metrics, stats, learn, predict, label), as the site chose; uploading,
deleting and sharing still need a signed-in caller with the rights above.

Everyone else is told the model does not exist (the same 404 as a missing one).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Iterable

from django_river_ml.exceptions import InvalidInput
from django_river_ml.storage.base import Access

#: Most users, and most groups, one model may be shared with.
MAX_GRANTS = 1000


class Caller:
    """Who calls DjangoClient. ``user=None`` is full access (server code); any user object acts as that user."""

    def __init__(self, user: Any = None, public: bool = False):
        self.user = user
        self.public = public

    @property
    def full(self) -> bool:
        """Every model, every operation (server code, staff)."""
        return self.user is None or self.is_staff

    @cached_property
    def is_staff(self) -> bool:
        user = self.user
        return bool(user is not None and self.user_id is not None
                    and (getattr(user, "is_staff", False) or getattr(user, "is_superuser", False)))

    @property
    def exempt_from_quotas(self) -> bool:
        return self.full

    @cached_property
    def user_id(self) -> str | None:
        """The signed-in, active user's primary key (None for server code and anonymous callers)."""
        user = self.user
        if user is None or not getattr(user, "is_authenticated", False) or not getattr(user, "is_active", True):
            return None
        return str(user.pk)

    @property
    def identified(self) -> bool:
        return self.user is None or self.user_id is not None

    @cached_property
    def group_ids(self) -> frozenset[str]:
        groups = getattr(self.user, "groups", None) if self.user_id is not None else None
        if groups is None:
            return frozenset()
        return frozenset(str(pk) for pk in groups.values_list("pk", flat=True))

    def unrestricted(self, public: bool = True) -> bool:
        """Whether every model is open to this caller (``public``: whether an open route lets everyone)."""
        return self.full or (public and self.public)

    def may_use(self, access: Access, public: bool = True) -> bool:
        """See, use, download, replace or delete (``public``: whether an open route lets everyone)."""
        if self.unrestricted(public):
            return True
        user_id = self.user_id
        if user_id is None:
            return False
        if user_id == access.owner or user_id in access.users:
            return True
        return bool(access.groups) and not self.group_ids.isdisjoint(access.groups)

    def may_manage(self, access: Access) -> bool:
        """See and change whom the model is shared with: its owner and staff."""
        return self.full or (self.user_id is not None and self.user_id == access.owner)


# Names in the API, primary keys in the store.

def _user_model():
    from django.contrib.auth import get_user_model

    return get_user_model()


def _group_model():
    from django.apps import apps

    if not apps.is_installed("django.contrib.auth"):
        raise InvalidInput("Sharing with groups needs django.contrib.auth in INSTALLED_APPS.")
    from django.contrib.auth.models import Group

    return Group


def _names(field: str, names: Any) -> list[str]:
    if not isinstance(names, (list, tuple)) or not all(isinstance(name, str) and name for name in names):
        raise InvalidInput(f"{field} must be a list of names.")
    if len(names) > MAX_GRANTS:
        raise InvalidInput(f"{field} has {len(names)} entries; a model may be shared with at most {MAX_GRANTS}.")
    return list(dict.fromkeys(names))


def user_ids(names: Iterable[str], field: str = "users") -> tuple[str, ...]:
    """Primary keys of the users of these names (a 400 naming the first unknown one)."""
    names = _names(field, names)
    if not names:
        return ()
    model = _user_model()
    found = {getattr(user, model.USERNAME_FIELD): str(user.pk)
             for user in model._default_manager.filter(**{f"{model.USERNAME_FIELD}__in": names})}
    for name in names:
        if name not in found:
            raise InvalidInput(f"No user named {name!r}.")
    return tuple(found[name] for name in names)


def group_ids(names: Iterable[str]) -> tuple[str, ...]:
    names = _names("groups", names)
    if not names:
        return ()
    found = {group.name: str(group.pk) for group in _group_model().objects.filter(name__in=names)}
    for name in names:
        if name not in found:
            raise InvalidInput(f"No group named {name!r}.")
    return tuple(found[name] for name in names)


def describe(access: Access) -> dict:
    """The API's view of an access: names, not keys (users or groups deleted since are left out)."""
    users: dict[str, str] = {}
    wanted = [pk for pk in (access.owner, *access.users) if pk is not None]
    if wanted:
        model = _user_model()
        users = {str(user.pk): user.get_username() for user in model._default_manager.filter(pk__in=wanted)}
    groups: dict[str, str] = {}
    if access.groups:
        groups = {str(group.pk): group.name for group in _group_model().objects.filter(pk__in=access.groups)}
    return {
        "owner": users.get(access.owner) if access.owner is not None else None,
        "users": [users[pk] for pk in access.users if pk in users],
        "groups": [groups[pk] for pk in access.groups if pk in groups],
    }
