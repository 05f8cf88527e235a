"""Model ownership, sharing and quotas, on both storage backends.

Every model belongs to the user who uploaded it; only its owner, staff, and the users and groups it
is shared with reach it, and everyone else is told it does not exist. Pending identifiers are never
replaced, their number and size are bounded, and so is the number of models a user owns.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from django.contrib.auth.models import AnonymousUser, Group, User
from django.core import checks
from django.test import override_settings
from rest_framework.authtoken.models import Token

from django_river_ml.client import DjangoClient
from django_river_ml.exceptions import (
    AccessDenied,
    AuthenticationRequired,
    Conflict,
    IdentifierConflict,
    IdentifierNotFound,
    InvalidInput,
    ModelNotFound,
    PayloadTooLarge,
    QuotaExceeded,
)
from django_river_ml.settings import river_settings
from django_river_ml.storage import Access, get_store
from django_river_ml.storage.base import CONFLICT, OK, OVER_QUOTA
from flavored_models import examples, make_model

EXAMPLE_PROJECT = Path(__file__).resolve().parent.parent / "example_project"
SPEC = [{"class": "preprocessing.StandardScaler"}, {"class": "linear_model.LinearRegression"}]
HIDDEN = "No model named 'alices'."

pytestmark = pytest.mark.django_db


@pytest.fixture
def secured(backend, settings):
    """Authentication on (the default)."""
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "DISABLE_AUTHENTICATION": False}
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast, for tests only
    return backend


@pytest.fixture
def people(secured):
    return SimpleNamespace(
        alice=User.objects.create_user("alice"),
        bob=User.objects.create_user("bob"),
        carol=User.objects.create_user("carol"),
        staff=User.objects.create_user("root", is_staff=True),
    )


@pytest.fixture
def alices(people):
    """A regression model of Alice's, named "alices"."""
    return as_user(people.alice).upload_model(make_model("regression"), "regression", "alices")


def as_user(user, public: bool = False) -> DjangoClient:
    return DjangoClient(user=user, public=public)


def set_quota(settings, **values):
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, **values}


X, Y = examples("regression", 1)[0]


# -- the store: access lives with the model, writes are compare-and-set -------------------------

def test_store_keeps_the_access_with_the_model(backend):
    store = get_store()
    access = Access("1", ("2", "3"), ("7",))
    assert store.create_model("m", "regression", "inc-1", b"snapshot", access) == OK
    info = store.model_info("m")
    assert info.access == access
    assert [(i.name, i.access) for i in store.model_infos()] == [("m", access)]
    assert store.owned_count("1") == 1
    assert store.delete_model("m")
    assert store.model_info("m") is None and store.model_infos() == []
    assert store.owned_count("1") == 0  # deleting the model removes its ownership too


def test_store_create_is_a_compare_and_set(backend):
    store = get_store()
    assert store.create_model("m", "regression", "a", b"s", Access("1"), expect=None) == OK
    assert store.create_model("m", "regression", "b", b"s", Access("2"), expect=None) == CONFLICT
    assert store.create_model("m", "regression", "b", b"s", Access("2"), expect="not-a") == CONFLICT
    assert store.create_model("absent", "regression", "c", b"s", Access("2"), expect="a") == CONFLICT
    info = store.model_info("m")
    assert (info.incarnation, info.access.owner) == ("a", "1")
    assert store.model_info("absent") is None
    assert store.create_model("m", "regression", "b", b"s", Access("1", ("5",)), expect="a") == OK
    assert store.model_info("m").incarnation == "b"
    assert store.owned_count("1") == 1
    # Without ``expect``, whatever is there is replaced (ModelRegistry.create's own call).
    assert store.create_model("m", "regression", "d", b"s") == OK
    assert store.model_info("m").access == Access()
    assert store.owned_count("1") == 0


def test_store_counts_each_owners_models_for_the_quota(backend):
    store = get_store()
    for name in ("m0", "m1"):
        assert store.create_model(name, "regression", f"inc-{name}", b"s", Access("1"), None, max_owned=2) == OK
    assert store.create_model("m2", "regression", "inc-m2", b"s", Access("1"), None, max_owned=2) == OVER_QUOTA
    assert store.model_info("m2") is None
    # Replacing one of one's own models adds nothing.
    assert store.create_model("m0", "regression", "inc-m0b", b"s", Access("1"), "inc-m0", max_owned=2) == OK
    # Other owners, and models without an owner, are counted apart.
    assert store.create_model("m2", "regression", "inc-m2", b"s", Access("2"), None, max_owned=2) == OK
    assert store.create_model("free", "regression", "inc-free", b"s", Access(), None, max_owned=1) == OK
    # Deleting makes room.
    assert store.delete_model("m1")
    assert store.create_model("m3", "regression", "inc-m3", b"s", Access("1"), None, max_owned=2) == OK
    assert (store.owned_count("1"), store.owned_count("2")) == (2, 1)


def test_store_set_access_checks_the_incarnation_and_the_new_owners_quota(backend):
    store = get_store()
    store.create_model("m", "regression", "a", b"s", Access("1"))
    store.create_model("x", "regression", "x", b"s", Access("2"))
    assert store.set_access("m", "not-a", Access("2")) == CONFLICT
    assert store.set_access("gone", "a", Access("2")) == CONFLICT
    assert store.set_access("m", "a", Access("2", ("3",), ("9",)), max_owned=1) == OVER_QUOTA
    assert store.model_info("m").access == Access("1")
    assert store.set_access("m", "a", Access("2", ("3",), ("9",)), max_owned=2) == OK
    assert store.model_info("m").access == Access("2", ("3",), ("9",))
    assert (store.owned_count("1"), store.owned_count("2")) == (0, 2)
    # The same owner is not counted again.
    assert store.set_access("m", "a", Access("2"), max_owned=1) == OK
    assert store.model_info("m").access == Access("2")


def test_store_delete_can_be_limited_to_one_incarnation(backend):
    store = get_store()
    store.create_model("m", "regression", "a", b"s", Access("1"))
    assert not store.delete_model("m", incarnation="b")
    assert store.model_info("m").incarnation == "a"
    assert store.delete_model("m", incarnation="a")
    assert not store.delete_model("m")


def test_store_never_replaces_a_pending_identifier(backend):
    store = get_store()
    assert store.put_identifier("m", "i", b"first", 60) is True
    assert store.put_identifier("m", "i", b"second", 60) is False
    assert store.pop_identifier("m", "i") == b"first"
    assert store.put_identifier("m", "i", b"third", 60) is True  # labelled: free again
    assert store.pop_identifier("m", "i") == b"third"


def test_store_reuses_an_expired_identifier(backend):
    store = get_store()
    assert store.put_identifier("m", "i", b"old", 1)
    time.sleep(1.2)
    assert store.put_identifier("m", "i", b"new", 60)
    assert store.pop_identifier("m", "i") == b"new"


def test_store_evicts_the_oldest_pending_identifiers(backend):
    store = get_store()
    for i in range(5):
        assert store.put_identifier("m", f"id{i}", b"r%d" % i, 60 + i, max_pending=3)
    store.put_identifier("other", "id0", b"o", 60, max_pending=3)  # another model is counted apart
    assert [store.pop_identifier("m", f"id{i}") for i in range(5)] == [None, None, b"r2", b"r3", b"r4"]
    # Labels made room: three more fit, a fourth evicts the oldest of them.
    for i in range(5, 9):
        assert store.put_identifier("m", f"id{i}", b"r%d" % i, 60 + i, max_pending=3)
    assert [store.pop_identifier("m", f"id{i}") for i in range(5, 9)] == [None, b"r6", b"r7", b"r8"]
    assert store.pop_identifier("other", "id0") == b"o"


def test_store_forgets_a_deleted_models_identifiers_and_their_count(backend):
    store = get_store()
    store.create_model("m", "regression", "a", b"s")
    for i in range(3):
        store.put_identifier("m", f"old{i}", b"x", 60, max_pending=3)
    store.delete_model("m")
    store.create_model("m", "regression", "b", b"s")
    for i in range(3):
        store.put_identifier("m", f"new{i}", b"y", 60 + i, max_pending=3)
    assert [store.pop_identifier("m", f"new{i}") for i in range(3)] == [b"y"] * 3
    assert store.pop_identifier("m", "old0") is None


def test_an_older_sqlite_file_is_upgraded_when_opened(tmp_path):
    import sqlite3

    from django_river_ml.storage.shelve import ShelveStore

    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE models (name TEXT PRIMARY KEY, flavor TEXT NOT NULL, incarnation TEXT NOT NULL UNIQUE,
                             head INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL);
        CREATE TABLE identifiers (name TEXT NOT NULL, identifier TEXT NOT NULL, expires REAL NOT NULL,
                                  record BLOB NOT NULL, PRIMARY KEY (name, identifier));
        INSERT INTO models VALUES ('m', 'regression', 'inc', 0, 1.0);
    """)
    now = time.time()
    old.executemany("INSERT INTO identifiers VALUES ('m', ?, ?, ?)", [("a", now + 60, b"r"), ("b", now + 61, b"r")])
    old.commit()
    old.close()
    store = ShelveStore(path)
    assert store.model_info("m").access == Access()  # a model from before owners: nobody's
    assert store.owned_count("1") == 0
    # The pending identifiers were counted: one more over a limit of 2 evicts the oldest.
    assert store.put_identifier("m", "c", b"r", 62, max_pending=2)
    assert [store.pop_identifier("m", i) for i in "abc"] == [None, b"r", b"r"]
    assert store.set_access("m", "inc", Access("1")) == OK
    assert ShelveStore(path).model_info("m").access == Access("1")  # and opening it again changes nothing


# -- DjangoClient: who may do what -------------------------------------------------------------

def operations() -> dict:
    """Every operation on a model, as a call on a DjangoClient."""
    return {
        "learn": lambda c, n: c.learn(n, X, ground_truth=Y),
        "predict": lambda c, n: c.predict(n, X),
        "label": lambda c, n: c.label(Y, "some-identifier", n),
        "learn with identifier": lambda c, n: c.learn(n, ground_truth=Y, identifier="some-identifier"),
        "metrics": lambda c, n: c.metrics(n),
        "stats": lambda c, n: c.stats(n),
        "model json": lambda c, n: c.get_model_json(n),
        "download": lambda c, n: c.download_model(n),
        "get model": lambda c, n: c.get_model(n),
        "delete": lambda c, n: c.delete_model(n),
        "get access": lambda c, n: c.get_access(n),
        "set access": lambda c, n: c.set_access(n, users=["carol"]),
        "replace by upload": lambda c, n: c.upload_model(make_model("regression"), "regression", n),
        "replace by pickle": lambda c, n: c.upload_model(pickle.dumps(make_model("regression")), "regression", n),
        "replace by spec": lambda c, n: c.upload_spec(SPEC, "regression", n),
    }


def assert_untouched(name: str = "alices", owner: str = "alice") -> None:
    full = DjangoClient()
    assert name in full.models()
    assert {op: s["n_calls"] for op, s in full.stats(name).items()} == {"learn": 0, "predict": 0, "label": 0, "drift": 0}
    assert full.get_access(name) == {"owner": owner, "users": [], "groups": []}


@pytest.mark.parametrize("operation", list(operations()))
def test_everyone_else_is_told_the_model_does_not_exist(people, alices, operation):
    call = operations()[operation]
    incarnation = get_store().model_info("alices").incarnation
    with pytest.raises(ModelNotFound) as hidden:
        call(as_user(people.bob), "alices")
    assert hidden.value.message == HIDDEN and hidden.value.status_code == 404
    if not operation.startswith("replace"):  # an upload under a free name creates it
        with pytest.raises(ModelNotFound) as missing:
            call(as_user(people.bob), "ghost")
        assert missing.value.message == HIDDEN.replace("alices", "ghost")
    assert get_store().model_info("alices").incarnation == incarnation
    assert_untouched()


def test_a_hidden_models_pending_prediction_is_not_taken(people, alices):
    identifier = as_user(people.alice).predict("alices", X)["identifier"]
    for take in (lambda c: c.label(Y, identifier, "alices"),
                 lambda c: c.learn("alices", ground_truth=Y, identifier=identifier)):
        with pytest.raises(ModelNotFound):
            take(as_user(people.bob))
    assert as_user(people.alice).label(Y, identifier, "alices")["identifier"] == identifier


def test_the_owner_does_everything(people, alices):
    alice = as_user(people.alice)
    alice.learn("alices", X, ground_truth=Y)
    identifier = alice.predict("alices", X)["identifier"]
    alice.label(Y, identifier, "alices")
    assert alice.stats("alices")["label"]["n_calls"] == 1
    assert set(alice.metrics("alices")) == {"MAE", "RMSE", "SMAPE"}
    assert "LinearRegression" in alice.get_model_json("alices")
    assert pickle.loads(alice.download_model("alices")) is not None
    assert alice.get_access("alices") == {"owner": "alice", "users": [], "groups": []}
    assert alice.upload_model(make_model("regression"), "regression", "alices") == "alices"
    assert alice.get_access("alices")["owner"] == "alice"
    alice.delete_model("alices")
    assert DjangoClient().models() == []


def test_listing_shows_only_what_the_caller_may_see(people):
    alice, bob = as_user(people.alice), as_user(people.bob)
    alice.upload_model(make_model("regression"), "regression", "a1")
    alice.upload_model(make_model("regression"), "regression", "a2")
    bob.upload_model(make_model("regression"), "regression", "b1")
    DjangoClient().upload_model(make_model("regression"), "regression", "server")
    everything = ["a1", "a2", "b1", "server"]
    assert alice.models() == ["a1", "a2"]
    assert bob.models() == ["b1"]
    assert as_user(people.carol).models() == []
    assert as_user(AnonymousUser()).models() == []
    assert as_user(people.staff).models() == everything
    assert DjangoClient().models() == everything
    alice.set_access("a2", users=["bob"])
    assert bob.models() == ["a2", "b1"]


def test_a_model_can_be_shared_with_a_user(people, alices):
    alice, bob = as_user(people.alice), as_user(people.bob)
    assert alice.set_access("alices", users=["bob"]) == {"owner": "alice", "users": ["bob"], "groups": []}
    bob.learn("alices", X, ground_truth=Y)
    identifier = bob.predict("alices", X)["identifier"]
    bob.label(Y, identifier, "alices")
    assert bob.stats("alices")["learn"]["n_calls"] == 1
    assert bob.metrics("alices")["MAE"] >= 0
    assert pickle.loads(bob.download_model("alices")) is not None
    assert bob.models() == ["alices"]
    # Bob may replace it: the model stays Alice's, shared as before.
    assert bob.upload_spec(SPEC, "regression", "alices") == "alices"
    assert alice.get_access("alices") == {"owner": "alice", "users": ["bob"], "groups": []}
    assert alice.stats("alices")["learn"]["n_calls"] == 0  # a fresh model
    # Only Alice (and staff) may see or change whom it is shared with.
    for call in (lambda: bob.get_access("alices"), lambda: bob.set_access("alices", users=["bob", "carol"])):
        with pytest.raises(AccessDenied, match="owner") as denied:
            call()
        assert denied.value.status_code == 403
    with pytest.raises(ModelNotFound):
        as_user(people.carol).predict("alices", X)
    # Unshared: Bob is told it does not exist again.
    alice.set_access("alices", users=[])
    with pytest.raises(ModelNotFound):
        bob.predict("alices", X)
    assert bob.models() == []


def test_a_user_it_is_shared_with_may_delete_it(people, alices):
    as_user(people.alice).set_access("alices", users=["bob"])
    as_user(people.bob).delete_model("alices")
    assert DjangoClient().models() == []
    assert get_store().owned_count(str(people.alice.pk)) == 0


def test_a_model_can_be_shared_with_a_group(people, alices):
    analysts = Group.objects.create(name="analysts")
    people.bob.groups.add(analysts)
    result = as_user(people.alice).set_access("alices", groups=["analysts"])
    assert result == {"owner": "alice", "users": [], "groups": ["analysts"]}
    assert as_user(people.bob).predict("alices", X)["model"] == "alices"
    assert as_user(people.bob).models() == ["alices"]
    with pytest.raises(ModelNotFound):
        as_user(people.carol).predict("alices", X)
    people.bob.groups.remove(analysts)
    with pytest.raises(ModelNotFound):
        as_user(people.bob).predict("alices", X)


@pytest.mark.parametrize(("change", "words"), [
    ({"owner": "nobody"}, "No user named 'nobody'"),
    ({"owner": ""}, "owner must be a user name"),
    ({"owner": 7}, "owner must be a user name"),
    ({"users": ["bob", "ghost"]}, "No user named 'ghost'"),
    ({"users": "bob"}, "users must be a list of names"),
    ({"users": [""]}, "users must be a list of names"),
    ({"users": ["bob"] * 1001}, "at most 1000"),
    ({"groups": ["ghosts"]}, "No group named 'ghosts'"),
    ({"groups": [None]}, "groups must be a list of names"),
])
def test_bad_access_changes_are_refused_and_change_nothing(people, alices, change, words):
    with pytest.raises(InvalidInput, match=words):
        as_user(people.alice).set_access("alices", **change)
    assert_untouched()


def test_only_staff_give_a_model_to_another_user(people, alices):
    # An owner who could give models away could fill another user's quota and model list with models
    # they still control as a shared user (found by a red team): only staff may change an owner.
    alice, bob = as_user(people.alice), as_user(people.bob)
    with pytest.raises(AccessDenied, match="Only staff") as refused:
        alice.set_access("alices", owner="bob", users=["alice"])
    assert refused.value.status_code == 403
    assert DjangoClient().get_access("alices") == {"owner": "alice", "users": [], "groups": []}
    assert bob.models() == []
    assert alice.set_access("alices", owner="alice")["owner"] == "alice"  # naming herself changes nothing
    assert as_user(people.staff).set_access("alices", owner="bob")["owner"] == "bob"
    with pytest.raises(ModelNotFound):
        alice.predict("alices", X)
    assert bob.get_access("alices") == {"owner": "bob", "users": [], "groups": []}
    store = get_store()
    assert (store.owned_count(str(people.alice.pk)), store.owned_count(str(people.bob.pk))) == (0, 1)


def test_staff_may_give_a_model_to_a_user_at_the_quota(people, settings):
    set_quota(settings, MAX_MODELS_PER_USER=1)
    as_user(people.bob).upload_model(make_model("regression"), "regression", "bobs")
    as_user(people.alice).upload_model(make_model("regression"), "regression", "alices")
    assert as_user(people.staff).set_access("alices", owner="bob")["owner"] == "bob"
    assert as_user(people.bob).models() == ["alices", "bobs"]


def test_staff_reach_every_model_and_own_what_they_upload(people, alices):
    staff = as_user(people.staff)
    staff.learn("alices", X, ground_truth=Y)
    assert staff.get_access("alices")["owner"] == "alice"
    staff.set_access("alices", users=["carol"])
    assert as_user(people.carol).models() == ["alices"]
    staff.upload_model(make_model("regression"), "regression", "alices")  # a replacement stays Alice's
    assert staff.get_access("alices")["owner"] == "alice"
    staff.upload_model(make_model("regression"), "regression", "roots")
    assert staff.get_access("roots") == {"owner": "root", "users": [], "groups": []}
    staff.delete_model("alices")
    superuser = User.objects.create_user("super", is_superuser=True)  # without is_staff
    assert as_user(superuser).models() == ["roots"]


def test_an_inactive_user_reaches_nothing(people, alices):
    people.alice.is_active = False
    alice = as_user(people.alice)
    assert alice.models() == []
    with pytest.raises(ModelNotFound):
        alice.predict("alices", X)
    with pytest.raises(AuthenticationRequired):
        alice.upload_model(make_model("regression"), "regression", "more")


def test_server_code_has_full_access_and_its_uploads_belong_to_nobody(people):
    server = DjangoClient()
    server.upload_model(make_model("regression"), "regression", "shared-service")
    assert server.get_access("shared-service") == {"owner": None, "users": [], "groups": []}
    with pytest.raises(ModelNotFound):
        as_user(people.alice).predict("shared-service", X)
    assert as_user(people.staff).predict("shared-service", X)["model"] == "shared-service"
    server.set_access("shared-service", owner="alice")  # e.g. after turning authentication on
    assert as_user(people.alice).models() == ["shared-service"]


def test_an_anonymous_caller_owns_nothing_and_reaches_nothing(people, alices):
    anonymous = as_user(AnonymousUser())
    assert anonymous.models() == []
    with pytest.raises(ModelNotFound):
        anonymous.predict("alices", X)
    for call in (lambda: anonymous.upload_model(make_model("regression"), "regression", "mine"),
                 lambda: anonymous.upload_spec(SPEC, "regression"),
                 lambda: anonymous.delete_model("alices"),
                 lambda: anonymous.get_access("alices")):
        with pytest.raises(AuthenticationRequired) as refused:
            call()
        assert refused.value.status_code == 401
    assert_untouched()


def test_on_an_open_route_everyone_reads_and_uses_every_model_but_owns_nothing(people, alices):
    anonymous = as_user(AnonymousUser(), public=True)
    assert anonymous.models() == ["alices"]
    assert set(anonymous.metrics("alices")) == {"MAE", "RMSE", "SMAPE"}
    assert anonymous.stats("alices")["learn"]["n_calls"] == 0
    assert "LinearRegression" in anonymous.get_model_json("alices")
    identifier = anonymous.predict("alices", X)["identifier"]
    anonymous.label(Y, identifier, "alices")
    for call in (lambda: anonymous.upload_model(make_model("regression"), "regression", "mine"),
                 lambda: anonymous.upload_model(make_model("regression"), "regression", "alices"),
                 lambda: anonymous.delete_model("alices"),
                 lambda: anonymous.get_access("alices"),
                 lambda: anonymous.set_access("alices", users=[])):
        with pytest.raises(AuthenticationRequired):
            call()
    bob = as_user(people.bob, public=True)
    assert bob.models() == ["alices"]
    bob.learn("alices", X, ground_truth=Y)
    for call in (lambda: bob.delete_model("alices"),
                 lambda: bob.upload_model(make_model("regression"), "regression", "alices"),
                 lambda: bob.get_access("alices")):
        with pytest.raises(ModelNotFound):
            call()
    bob.upload_model(make_model("regression"), "regression", "bobs")
    assert DjangoClient().get_access("bobs")["owner"] == "bob"
    assert DjangoClient().get_access("alices")["owner"] == "alice"


def test_sharing_needs_authentication_on(backend):
    DjangoClient().upload_model(make_model("regression"), "regression", "open")
    with pytest.raises(InvalidInput, match="DISABLE_AUTHENTICATION"):
        DjangoClient().set_access("open", users=[])


def test_grants_follow_accounts_not_names(people, alices):
    alice = as_user(people.alice)
    alice.set_access("alices", users=["bob", "carol"])
    people.alice.username = "alicia"  # a renamed owner keeps her model
    people.alice.save()
    assert alice.get_access("alices") == {"owner": "alicia", "users": ["bob", "carol"], "groups": []}
    people.carol.delete()  # a deleted user's grant goes, and a new account of that name does not get it
    carol_again = User.objects.create_user("carol")
    assert alice.get_access("alices")["users"] == ["bob"]
    with pytest.raises(ModelNotFound):
        as_user(carol_again).predict("alices", X)
    people.alice.delete()  # a model whose owner is gone belongs to nobody: staff and server code only
    assert DjangoClient().get_access("alices") == {"owner": None, "users": ["bob"], "groups": []}
    assert as_user(people.staff).models() == ["alices"]


def test_a_model_replaced_between_the_check_and_its_use_is_not_served(people, alices, monkeypatch):
    """Bob may use Alice's model; if Carol's model takes its name meanwhile, Bob must not get Carol's."""
    as_user(people.alice).set_access("alices", users=["bob"])
    bob = as_user(people.bob)
    registry = bob.registry
    real_replica = registry.replica
    swapped = []

    def replica_after_a_swap(name):
        if not swapped:
            swapped.append(True)
            DjangoClient().delete_model(name)
            as_user(people.carol).upload_model(make_model("regression"), "regression", name)
        return real_replica(name)

    monkeypatch.setattr(registry, "replica", replica_after_a_swap)
    with pytest.raises(ModelNotFound):
        bob.get_model_json("alices")
    assert DjangoClient().get_access("alices")["owner"] == "carol"


@pytest.mark.parametrize("write", ["create_model", "set_access", "delete_model"])
def test_a_model_that_keeps_changing_is_a_409_not_a_loop(people, alices, monkeypatch, write):
    store = get_store()
    monkeypatch.setattr(store, write, lambda *args, **kwargs: False if write == "delete_model" else CONFLICT)
    alice = as_user(people.alice)
    call = {
        "create_model": lambda: alice.upload_model(make_model("regression"), "regression", "alices"),
        "set_access": lambda: alice.set_access("alices", users=["bob"]),
        "delete_model": lambda: alice.delete_model("alices"),
    }[write]
    with pytest.raises(Conflict, match="kept changing") as refused:
        call()
    assert refused.value.status_code == 409
    monkeypatch.undo()
    assert_untouched()


# -- quotas -----------------------------------------------------------------------------------

def test_models_per_user(people, settings):
    set_quota(settings, MAX_MODELS_PER_USER=2)
    alice = as_user(people.alice)
    alice.upload_model(make_model("regression"), "regression", "a1")
    alice.upload_spec(SPEC, "regression", "a2")
    for upload in (lambda: alice.upload_model(make_model("regression"), "regression", "a3"),
                   lambda: alice.upload_model(make_model("regression"), "regression"),
                   lambda: alice.upload_spec(SPEC, "regression"),
                   # refused for the quota before the body is even read
                   lambda: alice.upload_model(b"not a pickle", "regression", "a3")):
        with pytest.raises(QuotaExceeded, match="MAX_MODELS_PER_USER") as refused:
            upload()
        assert refused.value.status_code == 409
    assert DjangoClient().models() == ["a1", "a2"]
    alice.upload_model(make_model("regression"), "regression", "a1")  # a replacement adds nothing
    alice.delete_model("a2")
    alice.upload_model(make_model("regression"), "regression", "a3")
    assert alice.models() == ["a1", "a3"]
    # Staff and server code are exempt.
    for client in (as_user(people.staff), DjangoClient()):
        for _ in range(3):
            client.upload_model(make_model("regression"), "regression")
    assert len(DjangoClient().models()) == 8


def test_racing_uploads_cannot_pass_the_quota_together(people, settings):
    set_quota(settings, MAX_MODELS_PER_USER=1)
    alice = as_user(people.alice)
    outcomes: list[str] = []

    def upload(index: int) -> None:
        try:
            alice.upload_model(make_model("regression"), "regression", f"race-{index}")
            outcomes.append("created")
        except QuotaExceeded:
            outcomes.append("refused")

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes) == ["created"] + ["refused"] * 5
    assert len(alice.models()) == 1


def test_a_pending_identifier_is_never_replaced(people, alices):
    alice, bob = as_user(people.alice), as_user(people.bob)
    alice.set_access("alices", users=["bob"])
    (x1, _), (x2, _) = examples("regression", 2)
    alice.predict("alices", x1, identifier="order-1")
    with pytest.raises(IdentifierConflict, match="order-1") as refused:
        bob.predict("alices", x2, identifier="order-1")
    assert refused.value.status_code == 409
    assert pickle.loads(get_store().pop_identifier("alices", "order-1"))["x"] == x1
    # Once labelled (here: taken), the identifier is free again.
    assert bob.predict("alices", x2, identifier="order-1")["identifier"] == "order-1"


def test_the_oldest_pending_predictions_are_forgotten(backend, settings):
    set_quota(settings, MAX_PENDING_IDENTIFIERS=3)
    client = DjangoClient()
    client.upload_model(make_model("regression"), "regression", "reg")
    identifiers = [client.predict("reg", x)["identifier"] for x, _ in examples("regression", 5)]
    for identifier in identifiers[:2]:
        with pytest.raises(IdentifierNotFound):
            client.label(1.0, identifier, "reg")
    for identifier in identifiers[2:]:
        assert client.label(1.0, identifier, "reg")["identifier"] == identifier


def test_a_prediction_too_large_to_keep_is_refused(backend, settings):
    set_quota(settings, MAX_IDENTIFIER_BYTES=2000)
    client = DjangoClient()
    client.upload_model(make_model("regression"), "regression", "reg")
    big = {f"feature_{i:04d}": float(i) for i in range(200)}
    for identifier in (None, "big-one"):
        with pytest.raises(PayloadTooLarge, match="MAX_IDENTIFIER_BYTES") as refused:
            client.predict("reg", big, identifier=identifier)
        assert refused.value.status_code == 413
    assert get_store().pop_identifier("reg", "big-one") is None
    assert "identifier" in client.predict("reg", {"a": 1.0})
    # Nothing kept, nothing to limit.
    set_quota(settings, GENERATE_IDENTIFIERS=False)
    assert set(client.predict("reg", big)) == {"model", "prediction"}


def test_a_cluster_prediction_too_large_to_keep_is_refused_before_it_is_logged(backend, settings):
    set_quota(settings, MAX_IDENTIFIER_BYTES=2000)
    client = DjangoClient()
    client.upload_model(make_model("cluster"), "cluster", "clu")
    head = get_store().model_info("clu").head
    with pytest.raises(PayloadTooLarge):
        client.predict("clu", {f"feature_{i:04d}": float(i) for i in range(200)})
    assert get_store().model_info("clu").head == head
    client.predict("clu", {"a": 1.0})
    assert get_store().model_info("clu").head == head + 1


def test_by_default_a_prediction_with_ten_thousand_features_is_not_kept(backend):
    """The issue's case: 20 such predictions kept 42 MB for a day."""
    client = DjangoClient()
    client.upload_model(make_model("regression"), "regression", "reg")
    wide = {f"f{i:05d}": float(i) for i in range(river_settings.MAX_FEATURES)}
    with pytest.raises(PayloadTooLarge, match="MAX_IDENTIFIER_BYTES"):
        client.predict("reg", wide)


# -- settings -----------------------------------------------------------------------------------

def test_quota_defaults_and_environment(monkeypatch):
    river_settings.reload()
    with override_settings(DJANGO_RIVER_ML={}):
        assert (river_settings.MAX_MODELS_PER_USER, river_settings.MAX_PENDING_IDENTIFIERS,
                river_settings.MAX_IDENTIFIER_BYTES) == (100, 10_000, 65_536)
    monkeypatch.setenv("DJANGO_RIVER_ML_MAX_MODELS_PER_USER", "5")
    monkeypatch.setenv("DJANGO_RIVER_ML_MAX_IDENTIFIER_BYTES", "1024")
    river_settings.reload()
    assert (river_settings.MAX_MODELS_PER_USER, river_settings.MAX_IDENTIFIER_BYTES) == (5, 1024)
    monkeypatch.undo()
    river_settings.reload()


@pytest.mark.parametrize("name", ["MAX_MODELS_PER_USER", "MAX_PENDING_IDENTIFIERS", "MAX_IDENTIFIER_BYTES"])
@pytest.mark.parametrize("value", [0, -1, "many", True, 1.5])
def test_bad_quota_settings_fail_the_system_check(name, value):
    with override_settings(DJANGO_RIVER_ML={name: value}):
        errors = [e.msg for e in checks.run_checks() if e.id == "django_river_ml.E001"]
    assert any(name in error for error in errors), errors


def test_bad_quota_in_the_environment_fails_the_system_check(monkeypatch):
    monkeypatch.setenv("DJANGO_RIVER_ML_MAX_PENDING_IDENTIFIERS", "lots")
    river_settings.reload()
    errors = [e.msg for e in checks.run_checks() if e.id == "django_river_ml.E001"]
    monkeypatch.undo()
    river_settings.reload()
    assert any("DJANGO_RIVER_ML_MAX_PENDING_IDENTIFIERS" in error for error in errors), errors


# -- the REST API -------------------------------------------------------------------------------

def token(user) -> dict:
    return {"HTTP_AUTHORIZATION": f"Token {Token.objects.get(user=user).key}"}


def send(api, method, path, body=None, user=None):
    headers = token(user) if user is not None else {}
    if body == "pickle":
        return api.post(path, data=pickle.dumps(make_model("regression")), content_type="application/octet-stream",
                        **headers)
    if body == "spec":
        return api.post(path, data=json.dumps(SPEC), content_type="application/json", **headers)
    return getattr(api, method)(path, body, format="json", **headers)


def model_requests(name: str) -> list[tuple]:
    """Every request that names a model (but uploads, which create a model under a free name)."""
    return [
        ("post", "/api/learn/", {"model": name, "features": X, "ground_truth": Y}),
        ("post", "/api/predict/", {"model": name, "features": X}),
        ("post", "/api/label/", {"model": name, "identifier": "i", "label": Y}),
        ("get", f"/api/metrics/?model={name}", None),
        ("get", f"/api/stats/?model={name}", None),
        ("get", f"/api/model/{name}/", None),
        ("get", f"/api/model/download/{name}/", None),
        ("get", f"/api/model/access/{name}/", None),
        ("put", f"/api/model/access/{name}/", {"users": ["carol"]}),
        ("delete", f"/api/model/?model={name}", None),
        ("delete", f"/api/model/{name}/", None),
    ]


@pytest.mark.parametrize("index", range(len(model_requests("x"))))
def test_rest_everyone_else_gets_the_answer_of_a_missing_model(api, people, alices, index):
    hidden = send(api, *model_requests("alices")[index], user=people.bob)
    missing = send(api, *model_requests("ghost")[index], user=people.bob)
    assert hidden.status_code == missing.status_code == 404, hidden.content
    assert hidden.json() == {"message": HIDDEN}
    assert missing.json() == {"message": HIDDEN.replace("alices", "ghost")}
    assert_untouched()


@pytest.mark.parametrize("body", ["pickle", "spec"])
def test_rest_an_upload_under_someone_elses_model_is_404(api, people, alices, body):
    incarnation = get_store().model_info("alices").incarnation
    response = send(api, "post", "/api/model/regression/alices/", body, user=people.bob)
    assert response.status_code == 404 and response.json() == {"message": HIDDEN}
    assert get_store().model_info("alices").incarnation == incarnation
    assert_untouched()
    assert send(api, "post", "/api/model/regression/alices/", body, user=people.alice).status_code == 201


def test_rest_listing_and_uploads_follow_the_caller(api, people, alices):
    assert send(api, "post", "/api/model/regression/bobs/", "pickle", user=people.bob).status_code == 201
    generated = send(api, "post", "/api/model/regression/", "pickle", user=people.bob).json()["name"]
    assert send(api, "get", "/api/models/", user=people.bob).json() == {"models": sorted(["bobs", generated])}
    assert send(api, "get", "/api/models/", user=people.alice).json() == {"models": ["alices"]}
    assert send(api, "get", "/api/models/", user=people.carol).json() == {"models": []}
    assert send(api, "get", "/api/models/", user=people.staff).json() == {
        "models": sorted(["alices", "bobs", generated])}
    assert DjangoClient().get_access(generated)["owner"] == "bob"


def test_rest_access_route(api, people, alices):
    path = "/api/model/access/alices/"
    assert send(api, "get", path, user=people.alice).json() == {"owner": "alice", "users": [], "groups": []}
    Group.objects.create(name="analysts")
    shared = send(api, "put", path, {"users": ["bob"], "groups": ["analysts"]}, user=people.alice)
    assert shared.status_code == 200
    assert shared.json() == {"owner": "alice", "users": ["bob"], "groups": ["analysts"]}
    assert send(api, "get", "/api/models/", user=people.bob).json() == {"models": ["alices"]}
    # A field left out keeps its value.
    assert send(api, "put", path, {"groups": []}, user=people.alice).json() == {
        "owner": "alice", "users": ["bob"], "groups": []}
    # Bob may use it, not see or change whom it is shared with.
    for method, body in (("get", None), ("put", {"users": ["bob", "carol"]})):
        denied = send(api, method, path, body, user=people.bob)
        assert denied.status_code == 403 and "owner" in denied.json()["message"]
    # Carol is told it does not exist; an anonymous caller is asked to sign in.
    assert send(api, "get", path, user=people.carol).json() == {"message": HIDDEN}
    anonymous = api.get(path)
    assert anonymous.status_code == 401 and anonymous["WWW-Authenticate"].startswith("Bearer realm=")
    # Staff may, and may give it away.
    assert send(api, "put", path, {"owner": "bob"}, user=people.staff).json()["owner"] == "bob"
    assert send(api, "get", path, user=people.bob).status_code == 200


@pytest.mark.parametrize(("body", "words"), [
    ({"users": "bob"}, "users"),
    ({"owner": None}, "owner"),
    ({"owner": ["bob"]}, "owner"),
    ({"users": ["ghost"]}, "No user named 'ghost'"),
    ({"groups": ["ghosts"]}, "No group named 'ghosts'"),
    ([], "JSON object"),
])
def test_rest_bad_access_bodies_are_400(api, people, alices, body, words):
    response = send(api, "put", "/api/model/access/alices/", body, user=people.alice)
    assert response.status_code == 400 and words in response.json()["message"], response.content
    assert_untouched()


def test_rest_access_route_with_authentication_disabled(api, people, alices, settings):
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "DISABLE_AUTHENTICATION": True}
    assert api.get("/api/model/access/alices/").json() == {"owner": "alice", "users": [], "groups": []}
    refused = api.put("/api/model/access/alices/", {"users": ["bob"]}, format="json")
    assert refused.status_code == 400 and "DISABLE_AUTHENTICATION" in refused.json()["message"]


def test_rest_with_authentication_disabled_everything_stays_shared(api, people, alices, settings):
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "DISABLE_AUTHENTICATION": True}
    assert api.get("/api/models/").json() == {"models": ["alices"]}
    assert api.post("/api/predict/", {"model": "alices", "features": X}, format="json").status_code == 201
    assert send(api, "post", "/api/model/regression/alices/", "pickle").status_code == 201
    assert send(api, "post", "/api/model/regression/anyones/", "pickle").status_code == 201
    assert DjangoClient().get_access("anyones")["owner"] is None
    assert api.delete("/api/model/alices/").status_code == 200


def test_rest_routes_the_site_left_open(api, people, alices, settings):
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "AUTHENTICATED_VIEWS": ["learn", "label"]}
    # Anonymous callers read and use every model through the open routes...
    assert api.get("/api/models/").json() == {"models": ["alices"]}
    assert api.get("/api/metrics/?model=alices").status_code == 200
    assert api.post("/api/predict/", {"model": "alices", "features": X}, format="json").status_code == 201
    # ...but only a signed-in caller uploads, deletes or shares: 401 with the challenge clients follow.
    for response in (send(api, "post", "/api/model/regression/anonymous/", "pickle"),
                     send(api, "post", "/api/model/regression/", "spec"),
                     api.delete("/api/model/alices/"),
                     api.delete("/api/model/", {"model": "alices"}, format="json"),
                     api.get("/api/model/access/alices/")):
        assert response.status_code == 401, response.content
        assert response["WWW-Authenticate"].startswith("Bearer realm=")
        assert "sign in" in response.json()["message"]
    # The protected routes still need credentials, and an owner's rights.
    assert api.post("/api/learn/", {"model": "alices", "features": X, "ground_truth": Y},
                    format="json").status_code == 401
    assert send(api, "post", "/api/learn/", {"model": "alices", "features": X, "ground_truth": Y},
                user=people.bob).json() == {"message": HIDDEN}
    # A signed-in user on an open route sees what anyone sees there, and still owns only their own.
    assert send(api, "get", "/api/models/", user=people.bob).json() == {"models": ["alices"]}
    assert send(api, "delete", "/api/model/alices/", user=people.bob).status_code == 404
    assert send(api, "post", "/api/model/regression/alices/", "pickle", user=people.bob).status_code == 404
    assert send(api, "post", "/api/model/regression/bobs/", "pickle", user=people.bob).status_code == 201
    assert DjangoClient().get_access("bobs")["owner"] == "bob"
    assert DjangoClient().get_access("alices")["owner"] == "alice"
    assert DjangoClient().models() == ["alices", "bobs"]


def test_rest_predict_under_a_pending_identifier_is_409(api, people, alices):
    body = {"model": "alices", "features": X, "identifier": "order-7"}
    assert send(api, "post", "/api/predict/", body, user=people.alice).status_code == 201
    again = send(api, "post", "/api/predict/", body, user=people.alice)
    assert again.status_code == 409 and "order-7" in again.json()["message"]


def test_rest_quota_and_record_size_answers(api, people, alices, settings):
    set_quota(settings, MAX_MODELS_PER_USER=1, MAX_IDENTIFIER_BYTES=1000)
    over = send(api, "post", "/api/model/regression/another/", "pickle", user=people.alice)
    assert over.status_code == 409 and "MAX_MODELS_PER_USER" in over.json()["message"]
    big = {f"feature_{i:04d}": float(i) for i in range(100)}
    too_large = send(api, "post", "/api/predict/", {"model": "alices", "features": big}, user=people.alice)
    assert too_large.status_code == 413 and "MAX_IDENTIFIER_BYTES" in too_large.json()["message"]


def test_schema_documents_the_access_route_and_the_new_answers(client, settings):
    settings.DJANGO_RIVER_ML = {**getattr(settings, "DJANGO_RIVER_ML", {}), "DISABLE_AUTHENTICATION": True}
    document = json.loads(client.get("/api/schema/?format=json").content)
    paths = document["paths"]
    access = paths["/api/model/access/{name}/"]
    assert set(access) == {"get", "put"}
    assert (access["get"]["operationId"], access["put"]["operationId"]) == ("get_access", "set_access")
    ok = access["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ok.endswith("/AccessResult")
    assert set(document["components"]["schemas"]["AccessResult"]["properties"]) == {"owner", "users", "groups"}
    assert access["put"]["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/Access")
    assert {"403", "404"} <= set(access["get"]["responses"])
    assert {"400", "403", "404", "409"} <= set(access["put"]["responses"])
    assert "409" in paths["/api/predict/"]["post"]["responses"]
    for upload in (paths["/api/model/{flavor}/{name}/"]["post"], paths["/api/model/{name}/"]["post"]):
        assert {"404", "409"} <= set(upload["responses"])


# -- a live multi-worker server with authentication on ------------------------------------------

def river_token(server, username: str) -> str:
    created = subprocess.run([sys.executable, "manage.py", "river_token", username, "--create-user"],
                             cwd=EXAMPLE_PROJECT, env=server.env, capture_output=True, text=True, check=True,
                             timeout=120)
    return created.stdout.strip()


@pytest.mark.live
@pytest.mark.parametrize("store", ["shelve", "redis"])
def test_live_owners_and_sharing_hold_on_every_worker(live_server_factory, store):
    server = live_server_factory(store, workers=3, DISABLE_AUTHENTICATION="false")
    keys = {name: river_token(server, name) for name in ("ada", "bob")}
    session = requests.Session()

    def call(user, method, path, **kwargs):
        return session.request(method, server.url + path, headers={"Authorization": f"Token {keys[user]}"},
                               timeout=30, **kwargs)

    model = pickle.dumps(make_model("regression"))
    uploaded = call("ada", "POST", "/api/model/regression/adas/", data=model)
    assert uploaded.status_code == 201, (uploaded.text, server.log_text()[-2000:])
    missing = call("bob", "GET", "/api/model/ghost/").json()["message"]
    for _ in range(9):  # spread over the workers
        assert call("bob", "GET", "/api/models/").json() == {"models": []}
        hidden = call("bob", "GET", "/api/model/adas/")
        assert hidden.status_code == 404 and hidden.json()["message"] == missing.replace("ghost", "adas")
        assert call("bob", "POST", "/api/predict/", json={"model": "adas", "features": X}).status_code == 404
        assert call("ada", "GET", "/api/models/").json() == {"models": ["adas"]}
    assert call("bob", "POST", "/api/model/regression/adas/", data=model).status_code == 404
    assert call("bob", "DELETE", "/api/model/adas/").status_code == 404

    shared = call("ada", "PUT", "/api/model/access/adas/", json={"users": ["bob"]})
    assert shared.json() == {"owner": "ada", "users": ["bob"], "groups": []}
    for _ in range(9):
        assert call("bob", "GET", "/api/models/").json() == {"models": ["adas"]}
        assert call("bob", "POST", "/api/predict/", json={"model": "adas", "features": X}).status_code == 201
    assert call("bob", "GET", "/api/model/access/adas/").status_code == 403

    assert call("ada", "DELETE", "/api/model/adas/").status_code == 200
    for _ in range(3):
        assert call("bob", "GET", "/api/models/").json() == {"models": []}
        assert call("ada", "GET", "/api/models/").json() == {"models": []}


def test_an_append_checked_against_one_upload_never_lands_in_the_next(backend):
    # A learn checks access to the model as it is, then appends; if the name was deleted and uploaded
    # again (by someone else) in between, the append must not land in the newcomer.
    from django_river_ml.exceptions import ModelNotFound

    client = DjangoClient()
    client.upload_model(make_model("regression"), "regression", model_name="swap")
    checked = client.store.model_info("swap").incarnation
    client.delete_model("swap")
    client.upload_model(make_model("regression"), "regression", model_name="swap")
    with pytest.raises(ModelNotFound):
        client.registry.append("swap", lambda flavor: {"x": {"a": 1.0}, "y": 1.0}, incarnation=checked)
    assert client.store.model_info("swap").head == 0
