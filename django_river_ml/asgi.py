"""Serving the River API under ASGI as fast as under WSGI, and stopping with streams open.

``make serve`` runs gunicorn with :class:`UvicornWorker` on a site whose ``asgi.py`` uses
:func:`get_asgi_application`, so that an open event stream costs a coroutine, not a worker:

    gunicorn mysite.asgi:application -k django_river_ml.worker.UvicornWorker --forwarded-allow-ips=

- :class:`SyncFirstASGIHandler`: Django's ASGI handler gives every request a new thread and,
  with middleware that is not async-only (every ``MiddlewareMixin``, WhiteNoise), crosses
  between the event loop and that thread about a dozen times per request: measured here, twice
  the CPU per request of gunicorn's sync workers (bench/rest_throughput.py). The River API's
  views are synchronous, so this handler runs a sync view with the whole middleware chain in one
  switch, on a thread kept for later requests (asgiref's ``ThreadSensitiveContext`` with an
  executor of one thread), as a WSGI server does. Async views, and the body of every streaming
  response (the event streams), take Django's async path.
- :class:`django_river_ml.worker.UvicornWorker` ends the open streams when the server stops.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import ThreadSensitiveContext, iscoroutinefunction, sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.base import BaseHandler
from django.urls import Resolver404, get_resolver

# Request threads kept for the next requests (more are made while more requests are in flight).
IDLE_THREADS_KEPT = 16


class SyncFirstASGIHandler(ASGIHandler):
    """Django's ASGI handler, with sync views run as a WSGI server runs them (see the module's docs)."""

    def __init__(self):
        super().__init__()
        self._sync = BaseHandler()
        self._sync.load_middleware(is_async=False)
        self._idle: list[ThreadPoolExecutor] = []  # used from the event loop only

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await super().__call__(scope, receive, send)
        # One thread per request in flight, as Django's handler, but kept for the next request.
        executor = self._idle.pop() if self._idle else ThreadPoolExecutor(1, thread_name_prefix="django-request")
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            if len(self._idle) < IDLE_THREADS_KEPT:
                self._idle.append(executor)
            else:
                executor.shutdown(wait=False)

    async def get_response_async(self, request):
        if self._view_is_async(request):
            return await super().get_response_async(request)
        return await sync_to_async(self._sync.get_response, thread_sensitive=True)(request)

    @staticmethod
    def _view_is_async(request) -> bool:
        try:
            return iscoroutinefunction(get_resolver(getattr(request, "urlconf", None)).resolve(request.path_info).func)
        except Resolver404:
            return False


def get_asgi_application() -> SyncFirstASGIHandler:
    """Like ``django.core.asgi.get_asgi_application``, with :class:`SyncFirstASGIHandler`.

    The worker then warms up in the background (see :mod:`django_river_ml.warmup`).
    """
    import django

    django.setup(set_prefix=False)
    handler = SyncFirstASGIHandler()
    from django_river_ml import warmup

    warmup.start()
    return handler
