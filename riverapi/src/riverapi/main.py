"""riverapi 0.0.21's module: ``from riverapi.main import Client`` keeps working."""

from riverapi.client import Client

__all__ = ["Client"]
