"""A tiny Store subclass that tests name by dotted path in STORAGE_BACKEND (tests/test_storage_backend.py)."""

from __future__ import annotations

from django_river_ml.storage.shelve import ShelveStore


class CountingStore(ShelveStore):
    """The shelve store under another name, counting the models it was asked to create."""

    backend_name = "counting-shelve"
    created = 0

    def create_model(self, *args, **kwargs):
        CountingStore.created += 1
        return super().create_model(*args, **kwargs)


class NotAStore:
    backend_name = "nothing"
