"""One settings object for the app, in the manner of DRF's ``api_settings``.

Values come, in order of precedence, from an environment variable
``DJANGO_RIVER_ML_<NAME>``, from the ``DJANGO_RIVER_ML`` dict in the Django
settings, and from :data:`DEFAULTS`. Attributes are resolved lazily and the
cache is dropped whenever Django's ``setting_changed`` signal fires, so
``override_settings(DJANGO_RIVER_ML={...})`` works in tests.

>>> from django_river_ml.settings import river_settings
>>> river_settings.URL_PREFIX
'api'
"""

from __future__ import annotations

import ipaddress
import math
import os
from pathlib import Path
from typing import Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed

ENV_PREFIX = "DJANGO_RIVER_ML_"
SETTINGS_NAME = "DJANGO_RIVER_ML"

STORAGE_BACKENDS = ("shelve", "redis")

DEFAULTS: dict[str, Any] = {
    # Routes live under /<URL_PREFIX>/ (read when the urls module is imported).
    "URL_PREFIX": "api",
    # Route names to serve; empty means every route.
    "API_VIEWS_ENABLED": [],
    # "shelve" (embedded, one SQLite file under DATA_DIR) or "redis".
    "STORAGE_BACKEND": "shelve",
    # Where the embedded store keeps its data. None: <BASE_DIR>/river_ml_data,
    # or ./river_ml_data when the site has no BASE_DIR. Never the package dir.
    "DATA_DIR": None,
    # Full path of the embedded store file; None: <DATA_DIR>/river-ml.sqlite3.
    "SHELVE_PATH": None,
    # Redis: a URL wins over host/port/db when given.
    "REDIS_URL": None,
    "REDIS_HOST": "localhost",
    "REDIS_PORT": 6379,
    "REDIS_DB": 0,
    "REDIS_PASSWORD": None,
    # Every Redis key starts with this, so several sites can share one server.
    "REDIS_KEY_PREFIX": "river-ml",
    # The Redis is a Redis Cluster; REDIS_URL (or host and port) names any of its nodes (docs/redis-cluster.md).
    "REDIS_CLUSTER": False,
    # Replicas that must have a write (a learn, an upload, a version) before it is acknowledged (Redis WAIT).
    # None: 1 on a cluster, 0 on one Redis. Over REDIS_WAIT_SECONDS without them, the call answers 503.
    "REDIS_WAIT_REPLICAS": None,
    "REDIS_WAIT_SECONDS": 1.0,
    # Make a uuid4 identifier for every prediction (a client may send its own).
    "GENERATE_IDENTIFIERS": True,
    # Unlabelled identifiers are forgotten after this many seconds.
    "IDENTIFIER_TTL_SECONDS": 24 * 3600,
    # A learn's idempotency key is remembered this many seconds: a retry with it within the window is
    # acknowledged again, not learned twice (docs/api.md#idempotent-learning).
    "IDEMPOTENCY_SECONDS": 24 * 3600.0,
    # Idempotency keys remembered per model; beyond it the oldest are forgotten.
    "MAX_IDEMPOTENCY_KEYS": 100_000,
    # Write a snapshot of a model every this many log entries.
    "SNAPSHOT_EVERY": 1000,
    # How many snapshots to keep per model (the log before the oldest is trimmed).
    "SNAPSHOTS_KEPT": 3,
    # Versions kept per model (docs/lifecycle.md): the newest VERSIONS_KEPT, the newest of each of the last
    # VERSIONS_HOURLY hours and VERSIONS_DAILY days, and the newest VERSIONS_MARKED taken on purpose
    # (upload, POST .../versions/, rollback, promotion). Each is a whole snapshot of the model.
    "VERSIONS_KEPT": 10,
    "VERSIONS_HOURLY": 24,
    "VERSIONS_DAILY": 7,
    "VERSIONS_MARKED": 20,
    # Challengers one model may have (each learns every example its champion learns).
    "MAX_CHALLENGERS": 5,
    # The drift detector of a new supervised model (river.drift: ADWIN, PageHinkley, KSWIN, ...; None: none),
    # fed with its errors, and what a detection does: "none" (an event), "reset" (a fresh copy of the
    # model) or "promote" (its best challenger). Both can be chosen per model at upload.
    "DRIFT_DETECTOR": "ADWIN",
    "DRIFT_POLICY": "none",
    # The checkpoint guard (docs/lifecycle.md): when a model's first metric falls more than this fraction below
    # (or above, for an error) its best recent version's, it rolls back to that version by itself. None: off.
    "ROLLBACK_MARGIN": None,
    # Weight of the newest call in the exponentially weighted mean durations.
    "STATS_EWM_ALPHA": 0.3,
    # Each process writes its call stats to the store this often (0: with every call); see callstats.py.
    "STATS_FLUSH_SECONDS": 1.0,
    # Memory each worker spends on model replicas (estimated from their size as stored; 0: no limit).
    "REPLICA_MEMORY_BYTES": 256 * 1024 * 1024,
    # A starting worker loads this many of the models called most recently (see warmup.py).
    "WARM_MODELS": 8,
    # Module prefixes, besides river's own, whose classes an uploaded pickle may use.
    "ALLOWED_MODEL_MODULES": [],
    # Largest model upload accepted, in bytes (JSON bodies follow DATA_UPLOAD_MAX_MEMORY_SIZE).
    "MAX_UPLOAD_SIZE": 64 * 1024 * 1024,
    # Most features one example may have.
    "MAX_FEATURES": 10_000,
    # Public URL of the site (service info "baseurl"); None: taken from the request.
    "DOMAIN_URL": None,
    # Authentication is on unless this is true: every route but service info needs credentials.
    "DISABLE_AUTHENTICATION": False,
    # Route names that need credentials; None: every route but service info.
    "AUTHENTICATED_VIEWS": None,
    # Lifetime of the JWTs the auth/token route issues.
    "TOKEN_EXPIRES_SECONDS": 600,
    # Key that signs JWTs; None: derived from Django's SECRET_KEY.
    "JWT_SERVER_SECRET": None,
    # DRF throttling: None (off), one rate for all routes ("100/minute"), or {route name: rate}.
    "VIEW_RATE_LIMIT": None,
    # Failed authentications (a wrong API token, a forged JWT) one client address may make; over it,
    # 429 with Retry-After and no credential is looked at. None (or "off") turns it off.
    "AUTH_FAILURE_RATE_LIMIT": "10/minute",
    # Proxies of yours in front of the server: 0 counts clients by REMOTE_ADDR only; n > 0 by the
    # X-Forwarded-For entry the farthest of n proxies added (a client writes the rest itself).
    "NUM_PROXIES": 0,
    # The Django cache (an alias in CACHES) the throttles count in. Share it between worker processes.
    "THROTTLE_CACHE": "default",
    # Quotas (docs/settings.md#quotas). Models one user may own; an upload over it is a 409.
    # Staff and server code (DjangoClient() without a user) are exempt.
    "MAX_MODELS_PER_USER": 100,
    # Unlabelled predictions kept per model; beyond it the oldest are forgotten.
    "MAX_PENDING_IDENTIFIERS": 10_000,
    # Bytes one kept prediction (its features and prediction, pickled) may take; a predict
    # whose record is larger is a 413.
    "MAX_IDENTIFIER_BYTES": 64 * 1024,
    # Redis timeouts, in seconds: to connect, and to wait for an answer. A stalled Redis costs a
    # request at most this long; it then answers 503 with Retry-After (redis-py's own retries are off).
    "REDIS_SOCKET_CONNECT_TIMEOUT": 2.0,
    "REDIS_SOCKET_TIMEOUT": 5.0,
    # Uploads are loaded and tried in a confined process (docs/security.md#the-loading-path).
    # Memory an upload may use there, beyond the loader's own interpreter, numpy and river.
    "SANDBOX_MEMORY_BYTES": 1024 * 1024 * 1024,
    # CPU seconds, and wall-clock seconds, one upload may take to load, build and try.
    "SANDBOX_CPU_SECONDS": 20,
    "SANDBOX_TIMEOUT_SECONDS": 60,
    # Seconds the trial (two learns and a predict on a made-up row) may take.
    "TRIAL_SECONDS": 2.0,
    # Start the sandbox's loader process with the server instead of at the first upload.
    "SANDBOX_PREWARM": False,
    # Largest a model may grow, in bytes as stored (checked at upload and at every snapshot).
    "MAX_MODEL_BYTES": 64 * 1024 * 1024,
    # Seconds one learn or predict may run inside the model; over it the call is rejected as if the
    # model had raised (on every worker). 0 turns the limit off.
    "CALL_TIME_LIMIT_SECONDS": 5.0,
    # Bytes one learn or predict may grow the server process by (resident memory, Linux); over it the
    # call is stopped and rejected like one over its time limit.
    "CALL_MEMORY_LIMIT_BYTES": 512 * 1024 * 1024,
    # Where service info's documentationUrl points: an http(s) URL or a path on this site. None: this
    # site's own API docs page (the docs route, else the schema), which documents the version it runs.
    "DOCUMENTATION_URL": None,
    # Live streams (/stream/events/, /stream/metrics/): events kept per channel for Last-Event-ID
    # resumes, and the shortest time between two metrics events of one model (across all workers).
    # Most examples one batch learn or predict may carry (over it: 413), and most bytes its body may have.
    "MAX_BATCH_ROWS": 10_000,
    "MAX_BATCH_BYTES": 32 * 1024 * 1024,
    "STREAM_RETENTION": 1000,
    "STREAM_RETENTION_SECONDS": 7 * 24 * 3600,
    "STREAM_METRICS_INTERVAL_SECONDS": 0.5,
    # Most models one stream follows (named with ?model=, or those a restricted caller may read).
    "STREAM_MAX_MODELS": 100,
    # Events a worker holds while its event store is slow or down; beyond it they are dropped and counted.
    "STREAM_QUEUE_SIZE": 10_000,
    # Seconds between two looks at the embedded store's event table (each worker, while streams are open).
    "STREAM_POLL_SECONDS": 0.05,
    # The Prometheus endpoint (docs/monitoring.md): its path where the site includes the app's urls (None: not
    # served). It refuses every scrape until one of the two below is set; with both set, a scrape needs both.
    "PROMETHEUS_PATH": "metrics",
    # The token a scraper sends as "Authorization: Bearer <token>" (at least 16 characters).
    "PROMETHEUS_TOKEN": None,
    # Client addresses or networks ("10.0.0.0/8") that may scrape, as NUM_PROXIES finds the client.
    "PROMETHEUS_ALLOWED_ADDRESSES": [],
    # Export each model's metrics (MAE, Accuracy, ...): a scrape catches up every model's replica in its worker.
    "PROMETHEUS_MODEL_METRICS": True,
}

# Whole numbers of at least 1.
COUNT_SETTINGS = ("IDENTIFIER_TTL_SECONDS", "SNAPSHOT_EVERY", "SNAPSHOTS_KEPT", "MAX_UPLOAD_SIZE", "MAX_FEATURES",
                  "TOKEN_EXPIRES_SECONDS", "MAX_MODELS_PER_USER", "MAX_PENDING_IDENTIFIERS", "MAX_IDENTIFIER_BYTES",
                  "SANDBOX_MEMORY_BYTES", "SANDBOX_CPU_SECONDS", "SANDBOX_TIMEOUT_SECONDS", "MAX_MODEL_BYTES",
                  "CALL_MEMORY_LIMIT_BYTES", "STREAM_RETENTION", "STREAM_RETENTION_SECONDS", "MAX_BATCH_ROWS", "MAX_BATCH_BYTES", "STREAM_MAX_MODELS",
                  "STREAM_QUEUE_SIZE", "MAX_IDEMPOTENCY_KEYS")
# Seconds, above 0 (or at least 0 where 0 turns the limit off).
SECONDS_SETTINGS = {"STATS_FLUSH_SECONDS": "at least", "REDIS_WAIT_SECONDS": "above", "REDIS_SOCKET_CONNECT_TIMEOUT": "above", "REDIS_SOCKET_TIMEOUT": "above",
                    "TRIAL_SECONDS": "above", "CALL_TIME_LIMIT_SECONDS": "at least", "IDEMPOTENCY_SECONDS": "above",
                    "STREAM_METRICS_INTERVAL_SECONDS": "at least", "STREAM_POLL_SECONDS": "above"}



_BOOLEAN_WORDS = {
    "1": True, "true": True, "yes": True, "on": True,
    "0": False, "false": False, "no": False, "off": False,
}

# Settings whose default is None but which hold a list (read from the environment as one).
LIST_SETTINGS = ("AUTHENTICATED_VIEWS",)
# Settings with a default that can be turned off from the environment ("none", "off").
NULLABLE_SETTINGS = ("AUTH_FAILURE_RATE_LIMIT", "PROMETHEUS_PATH", "DRIFT_DETECTOR")
# Settings that are a number or None (off), None by default.
OPTIONAL_NUMBER_SETTINGS = ("ROLLBACK_MARGIN",)
# Settings that are a whole number or None (the default, worked out from other settings).
OPTIONAL_COUNT_SETTINGS = ("REDIS_WAIT_REPLICAS",)
#: The shortest PROMETHEUS_TOKEN accepted.
MIN_PROMETHEUS_TOKEN_LENGTH = 16


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class SettingError(ValueError):
    """A setting has a value the app cannot use."""


def _parse_env(name: str, raw: str) -> Any:
    """Turn an environment string into the type of the setting's default."""
    default = DEFAULTS[name]
    text = raw.strip()
    if isinstance(default, bool):
        try:
            return _BOOLEAN_WORDS[text.lower()]
        except KeyError:
            raise SettingError(f"{ENV_PREFIX}{name}={raw!r} is not a boolean (use true or false)") from None
    if name == "VIEW_RATE_LIMIT" and "=" in text:  # "learn=10/second,predict=100/second"
        return dict(part.strip().split("=", 1) for part in text.split(",") if part.strip())
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            raise SettingError(f"{ENV_PREFIX}{name}={raw!r} is not a whole number") from None
    if name in OPTIONAL_COUNT_SETTINGS:
        if text.lower() in ("", "none", "null"):
            return None
        try:
            return int(text)
        except ValueError:
            raise SettingError(f"{ENV_PREFIX}{name}={raw!r} is not a whole number") from None
    if name in OPTIONAL_NUMBER_SETTINGS and text.lower() in ("", "none", "null", "off"):
        return None
    if isinstance(default, float) or name in OPTIONAL_NUMBER_SETTINGS:
        try:
            return float(text)
        except ValueError:
            raise SettingError(f"{ENV_PREFIX}{name}={raw!r} is not a number") from None
    if isinstance(default, list) or name in LIST_SETTINGS:
        return [part.strip() for part in text.split(",") if part.strip()]
    if (default is None or name in NULLABLE_SETTINGS) and text.lower() in ("", "none", "null", "off"):
        return None
    return text


class RiverSettings:
    """Lazily resolved settings; ``reload()`` drops the cache."""

    def __init__(self, defaults: dict[str, Any] | None = None):
        self.defaults = defaults or DEFAULTS
        self._cached: set[str] = set()

    @property
    def user_settings(self) -> dict[str, Any]:
        return getattr(django_settings, SETTINGS_NAME, None) or {}

    def __getattr__(self, name: str) -> Any:
        if name not in self.defaults:
            raise AttributeError(f"Invalid django-river-ml setting: {name!r}")
        env_value = os.environ.get(ENV_PREFIX + name)
        if env_value is not None:
            value = _parse_env(name, env_value)
        else:
            value = self.user_settings.get(name, self.defaults[name])
        self._cached.add(name)
        setattr(self, name, value)
        return value

    def reload(self) -> None:
        for name in self._cached:
            if name in self.__dict__:
                delattr(self, name)
        self._cached.clear()

    # Derived values -----------------------------------------------------

    @property
    def data_dir(self) -> Path:
        if self.DATA_DIR:
            return Path(self.DATA_DIR)
        base = getattr(django_settings, "BASE_DIR", None)
        return Path(base or os.getcwd()) / "river_ml_data"

    @property
    def shelve_path(self) -> Path:
        return Path(self.SHELVE_PATH) if self.SHELVE_PATH else self.data_dir / "river-ml.sqlite3"

    @property
    def redis_wait_replicas(self) -> int:
        """REDIS_WAIT_REPLICAS, or its default: 1 on a Redis Cluster, 0 on one Redis."""
        if self.REDIS_WAIT_REPLICAS is None:
            return 1 if self.REDIS_CLUSTER else 0
        return self.REDIS_WAIT_REPLICAS

    @property
    def prometheus_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """PROMETHEUS_ALLOWED_ADDRESSES as networks (an address is a network of one); SettingError if one is not."""
        entries = self.PROMETHEUS_ALLOWED_ADDRESSES
        if not isinstance(entries, (list, tuple)):
            raise SettingError(f"PROMETHEUS_ALLOWED_ADDRESSES must be a list of addresses or networks, not {entries!r}")
        networks = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(str(entry).strip(), strict=False))
            except ValueError:
                raise SettingError(f"PROMETHEUS_ALLOWED_ADDRESSES has {entry!r}, which is not an IP address or "
                                   "network ('10.0.0.5', '10.0.0.0/8', '::1')") from None
        return networks

    def problems(self) -> list[str]:
        """Every reason the current settings cannot work (used by the system check)."""
        found = []
        for name in self.defaults:
            try:
                getattr(self, name)
            except SettingError as error:
                found.append(str(error))
        if found:
            return found
        if self.STORAGE_BACKEND not in STORAGE_BACKENDS:  # a dotted path: of a Store subclass the site can import?
            from django_river_ml.storage import backend_problem

            problem = backend_problem(self.STORAGE_BACKEND)
            if problem:
                found.append(problem)
        for name in COUNT_SETTINGS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                found.append(f"{name} must be a whole number of at least 1, not {value!r}")
        for name, bound in SECONDS_SETTINGS.items():
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
                    or value < 0 or (bound == "above" and value == 0):
                found.append(f"{name} must be a number of seconds {bound} 0, not {value!r}")
        replicas = self.REDIS_WAIT_REPLICAS
        if replicas is not None and (not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0):
            found.append(f"REDIS_WAIT_REPLICAS must be None or a whole number of at least 0, not {replicas!r}")
        elif self.redis_wait_replicas and _number(self.REDIS_WAIT_SECONDS) and _number(self.REDIS_SOCKET_TIMEOUT) \
                and self.REDIS_WAIT_SECONDS >= self.REDIS_SOCKET_TIMEOUT:
            found.append(f"REDIS_WAIT_SECONDS ({self.REDIS_WAIT_SECONDS}) must be below REDIS_SOCKET_TIMEOUT "
                         f"({self.REDIS_SOCKET_TIMEOUT}): the wait for replicas is part of one call to Redis")
        prefix = self.REDIS_KEY_PREFIX
        if not isinstance(prefix, str) or "{" in prefix or "}" in prefix:
            found.append(f"REDIS_KEY_PREFIX must be a string without braces (they make Redis Cluster hash tags), "
                         f"not {prefix!r}")
        alpha = self.STATS_EWM_ALPHA
        if not isinstance(alpha, (int, float)) or not 0 < float(alpha) <= 1:
            found.append(f"STATS_EWM_ALPHA must be a number in (0, 1], not {alpha!r}")
        prefix = self.URL_PREFIX
        if not isinstance(prefix, str) or prefix != prefix.strip("/") or " " in prefix:
            found.append(f"URL_PREFIX must be a path without leading or trailing slashes, not {prefix!r}")
        for name in ("ALLOWED_MODEL_MODULES", "API_VIEWS_ENABLED"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                found.append(f"{name} must be a list of strings, not {value!r}")
        views = self.AUTHENTICATED_VIEWS
        if views is not None and (not isinstance(views, (list, tuple)) or not all(isinstance(v, str) for v in views)):
            found.append(f"AUTHENTICATED_VIEWS must be None or a list of route names, not {views!r}")
        found.extend(_route_name_problems(self))
        found.extend(_rate_problems(self.VIEW_RATE_LIMIT))
        failure_limit = self.AUTH_FAILURE_RATE_LIMIT
        if failure_limit is not None and not isinstance(failure_limit, str):
            found.append(f"AUTH_FAILURE_RATE_LIMIT must be one rate ('10/minute') or None, not {failure_limit!r}")
        found.extend(_rate_problems(failure_limit, "AUTH_FAILURE_RATE_LIMIT"))
        for name in ("NUM_PROXIES", "REPLICA_MEMORY_BYTES", "WARM_MODELS", "VERSIONS_KEPT", "VERSIONS_HOURLY",
                     "VERSIONS_DAILY", "VERSIONS_MARKED", "MAX_CHALLENGERS"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                found.append(f"{name} must be a whole number of at least 0, not {value!r}")
        from django_river_ml.lifecycle import drift_problems

        found.extend(drift_problems(self.DRIFT_DETECTOR, self.DRIFT_POLICY))
        margin = self.ROLLBACK_MARGIN
        if margin is not None and (not isinstance(margin, (int, float)) or isinstance(margin, bool)
                                   or not math.isfinite(margin) or margin <= 0):
            found.append(f"ROLLBACK_MARGIN must be None or a number above 0 (0.2: 20% worse), not {margin!r}")
        if self.THROTTLE_CACHE not in django_settings.CACHES:
            found.append(f"THROTTLE_CACHE is {self.THROTTLE_CACHE!r}, which is not a cache in CACHES")
        docs_url = self.DOCUMENTATION_URL
        url_like = isinstance(docs_url, str) and docs_url.startswith(("https://", "http://", "/"))
        if docs_url is not None and not url_like:
            found.append(f"DOCUMENTATION_URL must be None, an http(s) URL or a path starting with '/', "
                         f"not {docs_url!r}")
        found.extend(_prometheus_problems(self))
        return found

    def documentation_url(self, baseurl: str = "") -> str:
        """Service info's documentationUrl: DOCUMENTATION_URL, else this site's docs page (or schema)."""
        from django.urls import NoReverseMatch, reverse

        url = self.DOCUMENTATION_URL
        if url is None:
            for route in ("docs", "schema"):
                try:
                    url = reverse(f"django_river_ml:{route}")
                    break
                except NoReverseMatch:  # not served (API_VIEWS_ENABLED), or the urls not included
                    continue
            else:
                return ""
        return baseurl.rstrip("/") + url if url.startswith("/") else url


def _prometheus_problems(river: RiverSettings) -> list[str]:
    problems = []
    path = river.PROMETHEUS_PATH
    if path is not None and (not isinstance(path, str) or not path or path != path.strip("/") or " " in path):
        problems.append(f"PROMETHEUS_PATH must be None or a path without leading or trailing slashes, not {path!r}")
    token = river.PROMETHEUS_TOKEN
    if token is not None and not (isinstance(token, str) and len(token) >= MIN_PROMETHEUS_TOKEN_LENGTH
                                  and token.isascii() and token.isprintable() and " " not in token):
        # The value is a secret: not in the message.
        problems.append(f"PROMETHEUS_TOKEN must be None or at least {MIN_PROMETHEUS_TOKEN_LENGTH} printable ASCII "
                        "characters without spaces")
    try:
        river.prometheus_networks
    except SettingError as error:
        problems.append(str(error))
    return problems


def _route_name_problems(river: RiverSettings) -> list[str]:
    """Route names no route has: a typo would otherwise leave a route unprotected, unserved or unthrottled."""
    from django_river_ml.urls import ROUTE_NAMES

    named = {"API_VIEWS_ENABLED": river.API_VIEWS_ENABLED, "AUTHENTICATED_VIEWS": river.AUTHENTICATED_VIEWS}
    if isinstance(river.VIEW_RATE_LIMIT, dict):
        named["VIEW_RATE_LIMIT"] = list(river.VIEW_RATE_LIMIT)
    problems = []
    for setting, names in named.items():
        if not isinstance(names, (list, tuple)):
            continue  # reported above
        unknown = [name for name in names if name not in ROUTE_NAMES]
        if unknown:
            problems.append(f"{setting} names {', '.join(map(repr, unknown))}, which "
                            f"{'is not a route name' if len(unknown) == 1 else 'are not route names'}; "
                            f"the route names are {', '.join(ROUTE_NAMES)}")
    return problems


def _rate_problems(limit: Any, name: str = "VIEW_RATE_LIMIT") -> list[str]:
    rates = limit.values() if isinstance(limit, dict) else [limit]
    problems = []
    for rate in rates:
        if rate is None:
            continue
        number, _, period = str(rate).partition("/")
        if not number.isdigit() or not period or period[0] not in "smhd":
            problems.append(f"{name} rate {rate!r} must look like '100/minute' (per second, minute, hour, day)")
    return problems


river_settings = RiverSettings()


def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting == SETTINGS_NAME or setting == "BASE_DIR":
        river_settings.reload()


setting_changed.connect(_reload)
