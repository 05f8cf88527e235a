"""A gunicorn worker for the River API under ASGI: uvicorn-worker's, which ends open event streams on stop.

uvicorn waits for open responses before a worker stops, and an event stream never ends by
itself, so a stop (a deploy, Ctrl-C on ``make serve``) would wait for gunicorn's graceful
timeout and then kill the worker. This worker's server first sets
:func:`django_river_ml.streams.closing`: the open streams end at once, and their clients
reconnect, to another worker or the restarted server, and resume with ``Last-Event-ID``.

    gunicorn mysite.asgi:application -k django_river_ml.worker.UvicornWorker --forwarded-allow-ips=
"""

from __future__ import annotations

import asyncio
import sys

import uvicorn
import uvicorn_worker
from gunicorn.arbiter import Arbiter

from django_river_ml.streams import closing


class StreamClosingServer(uvicorn.Server):
    async def shutdown(self, sockets=None):
        closing().set()
        await asyncio.sleep(0)  # the streams see it before uvicorn waits for open responses
        await super().shutdown(sockets=sockets)


class UvicornWorker(uvicorn_worker.UvicornWorker):
    """uvicorn-worker's gunicorn worker, with :class:`StreamClosingServer` (and no ASGI lifespan: Django has none)."""

    CONFIG_KWARGS = {**uvicorn_worker.UvicornWorker.CONFIG_KWARGS, "lifespan": "off"}

    async def _serve(self) -> None:  # uvicorn-worker's, with our server class
        self.config.app = self.wsgi
        server = StreamClosingServer(config=self.config)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
