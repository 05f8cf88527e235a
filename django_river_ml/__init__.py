"""Serve river online-learning models from Django."""

from django_river_ml.version import __version__

__all__ = ["__version__"]
