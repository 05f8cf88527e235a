"""``manage.py river_ingest``: learn from a Redis stream, exactly once per entry (see :mod:`django_river_ml.ingest`)."""

from __future__ import annotations

import os
import signal
import socket

from django.core.management.base import BaseCommand, CommandError

from django_river_ml.exceptions import RiverMLError
from django_river_ml.settings import river_settings


class Command(BaseCommand):
    help = ("Learn the examples of a Redis stream through a consumer group, each exactly once, until SIGTERM or "
            "SIGINT. An entry has the fields model, features (JSON), ground_truth (JSON) and identifier.")

    def add_arguments(self, parser):
        parser.add_argument("--redis-url", help="The stream's Redis (default: the REDIS_URL setting, else REDIS_HOST, "
                                                "REDIS_PORT, REDIS_DB and REDIS_PASSWORD), whatever the model store.")
        parser.add_argument("--redis-cluster", action="store_true",
                            help="The stream's Redis is a Redis Cluster (without --redis-url: as REDIS_CLUSTER says).")
        parser.add_argument("--stream", default="river-ml:learn", help="The stream (default: %(default)s).")
        parser.add_argument("--group", default="river-ml", help="The consumer group, made at the start of the stream "
                                                                "if missing (default: %(default)s).")
        parser.add_argument("--consumer", default=f"{socket.gethostname()}-{os.getpid()}",
                            help="This ingester's name in the group (default: <host>-<pid>). An ingester restarted "
                                 "under its old name reads its pending entries at once; others take them over after "
                                 "--claim-idle.")
        parser.add_argument("--batch", type=int, default=500, help="Entries read at once, at most MAX_BATCH_ROWS "
                                                                   "(default: %(default)s).")
        parser.add_argument("--block", type=int, default=1000, help="Milliseconds to wait for new entries before "
                                                                    "looking again (default: %(default)s).")
        parser.add_argument("--claim-idle", type=int, default=60_000,
                            help="Milliseconds after which another consumer's unacknowledged entries are taken over "
                                 "(default: %(default)s).")
        parser.add_argument("--dead-letter", help="The stream failed entries are moved to, with their error "
                                                  "(default: <stream>:dead; '' to only log them).")
        parser.add_argument("--report", type=float, default=10.0, help="Seconds between progress lines (default: "
                                                                       "%(default)s; 0: only at the end).")

    def handle(self, *args, redis_url, redis_cluster, stream, group, consumer, batch, block, claim_idle, dead_letter, report,
               **options):
        from django_river_ml.ingest import Ingester
        from django_river_ml.storage.redis import connect

        if not 1 <= batch <= river_settings.MAX_BATCH_ROWS:
            raise CommandError(f"--batch must be 1 to MAX_BATCH_ROWS ({river_settings.MAX_BATCH_ROWS}).")
        if block < 1 or claim_idle < 1:
            raise CommandError("--block and --claim-idle are milliseconds, at least 1.")
        try:
            cluster = redis_cluster or (not redis_url and river_settings.REDIS_CLUSTER)
            ingester = Ingester(connect(river_settings, url=redis_url, wait_seconds=block / 1000, cluster=cluster),
                                stream, group,
                                consumer, batch=batch, block_ms=block, claim_idle_ms=claim_idle,
                                dead_letter=dead_letter, report=self.report, report_seconds=report)
        except RiverMLError as error:  # a stream name that cannot make keys, a store that records none
            raise CommandError(error.message) from None

        def stop(signum, frame):
            ingester.stop.set()  # the batch at hand is learned and acknowledged first

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self.report(f"river_ingest: reading {stream} as {consumer} of group {group}.")
        ingester.run()

    def report(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()  # a line as it happens, also into a pipe or a container's log
