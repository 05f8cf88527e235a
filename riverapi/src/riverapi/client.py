"""The River API client: one ``requests.Session``, typed errors, retries, the token flow.

>>> from riverapi import Client
>>> cli = Client("http://127.0.0.1:8000", quiet=True, timeout=5)
>>> cli.apiroot
'http://127.0.0.1:8000/api'

Every call goes through :meth:`Client._request`, so a new server route is a few lines::

    def explain(self, model_name, x):
        return self._json("POST", "/explain/", json={"model": model_name, "features": x})
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import pickle
import re
import tempfile
import time
from pathlib import Path
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import quote, urlencode

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from riverapi import defaults
from riverapi.auth import parse_auth_header, request_token
from riverapi.exceptions import (
    AuthenticationError,
    BadRequest,
    RiverAPIError,
    ServerUnavailable,
    error_for_response,
)
from riverapi.streams import EventStream
from riverapi.version import __version__

__all__ = ["Client", "pickle_model"]

logger = logging.getLogger("riverapi")
logger.addHandler(logging.NullHandler())

#: Methods that are retried on connection errors and 502/503/504 (they change nothing twice).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})
RETRY_STATUSES = (502, 503, 504)
#: The header that carries a learn's idempotency key (django-river-ml learns a repeated key once).
IDEMPOTENCY_HEADER = "Idempotency-Key"
_NO_JSON = object()
#: django-eventstream's own events, which carry nothing of the models.
HOUSEKEEPING_EVENTS = ("stream-open", "keep-alive")
#: Rows per request of :meth:`Client.learn_many` and :meth:`Client.predict_many` (servers refuse
#: batches over their ``MAX_BATCH_ROWS``, 10,000 by default, with a 413).
BATCH_SIZE = 1000


def pickle_model(model: Any) -> bytes:
    """The upload body for a model object: ``dill.dumps`` when dill is installed, else ``pickle``."""
    try:
        import dill
    except ImportError:
        return pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
    return dill.dumps(model)


def _segment(value: str, what: str) -> str:
    """One URL path segment. Names and flavors never hold a ``/`` (servers decode ``%2F`` before
    routing, so one would reach another route): refused here, as an empty one is."""
    if not isinstance(value, str) or not value or "/" in value:
        raise ValueError(f"{what} must be a non-empty string without '/', not {value!r}.")
    return quote(value, safe="")


class _NoProgress:
    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        pass

    def update(self, n: int) -> None:
        pass


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _reason(error: BaseException) -> str:
    """A short reason for a connection error (not urllib3's repr of the pool and connection)."""
    cause: Any = error.args[0] if error.args else error
    cause = getattr(cause, "reason", None) or cause
    # Not urllib3's description of its connection object: "<...HTTPConnection object at 0x..>: " or
    # "HTTPConnection(host='h', port=1): ".
    text = re.sub(r"^(<[^>]*>|\w*Connection\w*\([^)]*\)): ", "", str(cause))
    return text or type(error).__name__


class Client:
    """Talk to a River API server (django-river-ml).

    ``baseurl`` defaults to ``$RIVER_API_URL`` (as for the command line), else
    ``http://127.0.0.1:8000``, and ``prefix`` to ``api``: calls go to
    ``<baseurl>/<prefix>/...``. ``quiet=False`` logs every call on the ``riverapi`` logger (INFO;
    the answers at DEBUG). ``timeout`` (seconds, or a ``(connect, read)`` pair) applies to every
    call; GET, DELETE and HEAD are retried ``retries`` times with exponential back-off
    (``backoff_factor * 2 ** (retry - 1)`` s) on connection errors and 502/503/504. POST calls are
    retried only when the connection could not be made (nothing was sent), but for learns and
    labels that carry idempotency keys, which are retried like GETs. ``user`` and ``token``
    default to ``$RIVER_ML_USER`` and ``$RIVER_ML_TOKEN``.

    Errors are raised as :mod:`riverapi.exceptions` types; nothing calls ``sys.exit``.
    """

    #: What a 401 asking for credentials tells to do (the command line, which has no such
    #: arguments, says its own).
    credentials_hint = (f"export {defaults.USER_ENV} and {defaults.TOKEN_ENV} "
                        "(or pass user= and token= to Client)")

    #: The flavors the server documents. Informational only: the server judges a flavor.
    flavors = ("regression", "binary", "multiclass", "cluster", "anomaly", "custom")

    def __init__(self, baseurl: str | None = None, quiet: bool = False, prefix: str = defaults.prefix, *,
                 timeout: float | tuple[float, float] | None = defaults.timeout, retries: int = defaults.retries,
                 backoff_factor: float = defaults.backoff_factor, user: str | None = None,
                 token: str | None = None, session: requests.Session | None = None):
        self.baseurl = (baseurl or defaults.default_baseurl()).rstrip("/")
        self.quiet = quiet
        self.prefix = prefix if prefix is not None else ""
        self.timeout = timeout
        self.retries, self.backoff_factor = retries, backoff_factor
        self.headers = {"Accept": "application/json", "User-Agent": f"riverapi-python/{__version__}"}
        self.session = session if session is not None else self.make_session(retries, backoff_factor)
        self.user: str | None = None
        self.token: str | None = None
        #: The batch routes ("learn", "predict") the server turned out not to have: rows are sent
        #: one request each.
        self.unbatched_routes: set[str] = set()
        self.getenv()
        if user is not None:
            self.user = user
        if token is not None:
            self.token = token

    def __repr__(self) -> str:
        return f"Client(baseurl={self.baseurl!r}, prefix={self.prefix!r})"

    def __str__(self) -> str:
        return "[riverapi-client]"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the session's pooled connections."""
        self.session.close()

    # -- set-up ---------------------------------------------------------------------------

    @staticmethod
    def make_session(retries: int = defaults.retries, backoff_factor: float = defaults.backoff_factor
                     ) -> requests.Session:
        """A session whose connections are reused, with retries for idempotent methods."""
        retry = Retry(
            total=retries, connect=retries, read=retries, status=retries, other=0,
            backoff_factor=backoff_factor, status_forcelist=RETRY_STATUSES, allowed_methods=IDEMPOTENT_METHODS,
            raise_on_status=False, respect_retry_after_header=False,
        )
        adapter = HTTPAdapter(max_retries=retry)
        session = requests.Session()
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    def getenv(self) -> None:
        """Read the user and API token from ``RIVER_ML_USER`` and ``RIVER_ML_TOKEN``."""
        self.token = os.environ.get(defaults.TOKEN_ENV)
        self.user = os.environ.get(defaults.USER_ENV)

    @property
    def apiroot(self) -> str:
        """The base URL and the prefix: where the routes live."""
        prefix = self.prefix.strip("/")
        return f"{self.baseurl}/{prefix}" if prefix else self.baseurl

    def set_header(self, name: str, value: str) -> None:
        """Send a header with every call."""
        self.headers[name] = value

    def set_basic_auth(self, username: str, password: str) -> None:
        """Send HTTP Basic credentials with every call."""
        import base64

        encoded = base64.b64encode(f"{username}:{password}".encode()).decode()
        self.set_header("Authorization", f"Basic {encoded}")

    def check_flavor(self, flavor: str) -> None:
        """Refuse what cannot be a flavor; which flavors exist is for the server to say."""
        _segment(flavor, "The flavor")

    # -- the one request helper ---------------------------------------------------------

    def _request(self, method: str, path: str, *, params: dict | None = None, json: Any = _NO_JSON,
                 data: Any = None, headers: dict[str, str] | None = None, stream: bool = False,
                 timeout: Any = None) -> requests.Response:
        """Send one call to ``<apiroot><path>``; answer the 401 token challenge once; raise
        the typed error for any answer that is not 2xx. Returns the response."""
        method = method.upper()
        url = self.apiroot + "/" + path.lstrip("/")
        for attempt in (1, 2):
            kwargs: dict[str, Any] = {
                "params": params, "data": data, "headers": {**self.headers, **(headers or {})}, "stream": stream,
                "timeout": self.timeout if timeout is None else timeout,
            }
            if json is not _NO_JSON:
                kwargs["json"] = json
            try:
                response = self.session.request(method, url, **kwargs)
            except requests.exceptions.InvalidJSONError as error:
                raise BadRequest(f"The request cannot be sent as JSON: {error}") from error
            except (requests.ConnectionError, requests.Timeout) as error:
                raise ServerUnavailable(f"Cannot reach {url}: {_reason(error)}") from error
            except requests.RequestException as error:
                raise RiverAPIError(f"{method} {url} failed: {error}") from error
            if not self.quiet:
                logger.info("%s %s -> %s", method, response.url, response.status_code)
            if response.status_code == 401 and attempt == 1 and self._authenticate(response):
                response.close()
                continue
            break
        if not 200 <= response.status_code < 300:
            error = error_for_response(response)
            response.close()
            raise error
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        """:meth:`_request`, returning the answer's JSON (``None`` for an empty answer)."""
        response = self._request(method, path, **kwargs)
        if not response.content:
            return None
        try:
            answer = response.json()
        except ValueError:
            raise RiverAPIError(
                f"{method} {response.url} answered {response.status_code} with a body that is not JSON.",
                status_code=response.status_code, response=response) from None
        if not self.quiet:
            logger.debug("%s answered %s", response.url, answer)
        return answer

    def _authenticate(self, response: requests.Response) -> bool:
        """Answer a 401 challenge: get a token from its realm; True when the call may be retried."""
        raw = response.headers.get("Www-Authenticate")
        if not raw:
            return False
        challenge = parse_auth_header(raw)
        if not challenge.realm:
            return False
        if not (self.user and self.token):
            raise AuthenticationError(f"{response.url} requires a token: {self.credentials_hint}.",
                                      status_code=response.status_code, response=response)
        bearer = request_token(self.session, challenge, self.user, self.token, timeout=self.timeout,
                               headers={"User-Agent": self.headers["User-Agent"]}, server=self.baseurl)
        self.headers["Authorization"] = f"Bearer {bearer}"
        if not self.quiet:
            logger.info("Got a token from %s", challenge.realm)
        return True

    def authenticate_request(self, originalResponse: requests.Response) -> bool:  # noqa: N803 - 0.0.21's name
        """riverapi 0.0.21's name for answering a 401 challenge."""
        return self._authenticate(originalResponse)

    # -- riverapi 0.0.21's low-level calls (paths relative to apiroot) -------------------

    def do_request(self, typ: str, url: str, data: Any = None, json: Any = None, headers: dict | None = None,
                   return_json: bool = True, stream: bool = False) -> Any:
        """A call as riverapi 0.0.21 made it: the JSON answer, or the response with
        ``return_json=False`` or ``stream=True``."""
        body = {"json": json} if json else {"data": data}
        if return_json and not stream:
            return self._json(typ, url, headers=headers, **body)
        return self._request(typ, url, headers=headers, stream=stream, **body)

    def get(self, url: str, data: Any = None, json: Any = None, headers: dict | None = None,
            return_json: bool = True, stream: bool = False) -> Any:
        return self.do_request("get", url, data=data, json=json, headers=headers, return_json=return_json,
                               stream=stream)

    def post(self, url: str, data: Any = None, json: Any = None, headers: dict | None = None,
             return_json: bool = True) -> Any:
        return self.do_request("post", url, data=data, json=json, headers=headers, return_json=return_json)

    def delete(self, url: str, data: Any = None, json: Any = None, headers: dict | None = None,
               return_json: bool = True) -> Any:
        return self.do_request("delete", url, data=data, json=json, headers=headers, return_json=return_json)

    # -- the River API ------------------------------------------------------------------

    def info(self) -> dict:
        """The service info: ``{baseurl, id, status, name, prefix, storage, river_version, ...}``."""
        return self._json("GET", "/")

    def check(self) -> dict:
        """Service info, then take the ``prefix`` and ``baseurl`` the server says it has."""
        info = self.info()
        for field in ("prefix", "baseurl"):
            if isinstance(info, dict) and isinstance(info.get(field), str):
                updated = info[field].strip("/")
                if not self.quiet:
                    logger.info("Updating %s to %s", field, updated)
                setattr(self, field, updated)
        return info

    def upload_model(self, model: Any, flavor: str, model_name: str | None = None, *,
                     challenger_of: str | None = None, drift_detector: str | None = None,
                     drift_policy: str | None = None) -> str:
        """Upload a model object (pickled with dill, else pickle) or already pickled ``bytes``;
        returns the model's name (generated by the server when ``model_name`` is not given).

        ``challenger_of``: the model joins that model as a challenger instead (see
        :meth:`add_challenger`); the name returned is the challenger's. ``drift_detector`` (a
        river.drift detector's name: ``ADWIN``, ``PageHinkley``, ``KSWIN``, for classifiers ``DDM``,
        ``EDDM``, ``FHDDM``, ``HDDMA``, ``HDDMW``; ``"none"`` for none) and ``drift_policy`` (``none``,
        ``reset`` or ``promote``) choose the model's drift detection instead of the server's
        defaults. The server judges all three (a :class:`BadRequest` names what it refused). A
        server without the model lifecycle ignores the drift options; one that took a
        ``challenger_of`` upload as a model of its own is a :class:`RiverAPIError`.
        """
        body = bytes(model) if isinstance(model, (bytes, bytearray, memoryview)) else pickle_model(model)
        return self._upload(flavor, model_name, _upload_options(challenger_of, drift_detector, drift_policy),
                            data=body, headers={"Content-Type": "application/octet-stream"})

    def upload_spec(self, spec: list | dict, flavor: str, model_name: str | None = None, *,
                    challenger_of: str | None = None, drift_detector: str | None = None,
                    drift_policy: str | None = None) -> str:
        """Upload a model described in JSON, e.g.
        ``[{"class": "preprocessing.StandardScaler"}, {"class": "linear_model.LogisticRegression",
        "params": {"l2": 0.1}}]``: the server builds it from public river classes, no pickle involved.
        The options are :meth:`upload_model`'s."""
        return self._upload(flavor, model_name, _upload_options(challenger_of, drift_detector, drift_policy),
                            json=spec)

    def _upload(self, flavor: str, model_name: str | None, options: dict[str, str] | None = None,
                **body: Any) -> str:
        self.check_flavor(flavor)
        path = f"/model/{_segment(flavor, 'The flavor')}/"
        if model_name:
            path += f"{_segment(model_name, 'The model name')}/"
        answer = self._json("POST", path, params=options or None, **body)
        if not isinstance(answer, dict) or not isinstance(answer.get("name"), str):
            raise RiverAPIError(f"The upload was accepted but the answer names no model: {answer!r}.")
        champion = (options or {}).get("challenger_of")
        if champion is not None and answer.get("challenger_of") != champion:
            raise RiverAPIError(f"The server has no challengers: it took the upload as a model of its own, "
                                f"{answer['name']!r}, not as a challenger of {champion!r}.")
        if not self.quiet:
            if champion is not None:
                logger.info("Created challenger %s of %s", answer["name"], champion)
            else:
                logger.info("Created model %s", answer["name"])
        return answer["name"]

    def learn(self, model_name: str, x: dict | None, y: Any = None, identifier: str | None = None,
              idempotency_key: str | None = None) -> dict:
        """Learn from features ``x`` and ground truth ``y`` (``identifier``: label a past prediction).

        ``idempotency_key`` (1 to 200 visible ASCII characters, e.g. a uuid4: one per example)
        goes in the ``Idempotency-Key`` header. The server then learns the example once, however
        often it is sent (a repeat answers the first learn's ``sequence`` with ``"duplicate": true``),
        so the learn is retried like a GET after a timeout or a 502/503/504. Only a server that
        knows keys (django-river-ml 1.0 or newer) honours them: an older one learns every repeat.
        """
        body: dict[str, Any] = {"model": model_name, "ground_truth": y}
        if x is not None or identifier is None:
            body["features"] = x
        if identifier is not None:
            body["identifier"] = identifier
        return self._post("/learn/", body, idempotency_key)

    def predict(self, model_name: str, x: dict, identifier: str | None = None) -> dict:
        """Predict for features ``x``: ``{model, prediction, identifier}``."""
        body: dict[str, Any] = {"model": model_name, "features": x}
        if identifier is not None:
            body["identifier"] = identifier
        return self._json("POST", "/predict/", json=body)

    def learn_many(self, model_name: str, examples: Iterable[dict | tuple], *, batch_size: int = BATCH_SIZE,
                   progress: bool = False) -> dict:
        """Learn from many examples, ``batch_size`` rows per request (``POST /learn/`` with
        ``{"model", "examples": [...]}``); returns ``{"model", "learned", "sequence"}`` (the rows
        learned, the last learn's sequence number).

        ``examples`` is any iterable, read a chunk at a time (a generator is never read whole), of
        ``{"features": {...}, "ground_truth": ..., "identifier": ..., "idempotency_key": ...}`` dicts
        (``identifier`` and ``idempotency_key`` optional) or ``(features, ground_truth)`` pairs.
        ``progress=True`` shows a progress bar on stderr (tqdm). A chunk whose every row has an
        ``idempotency_key`` is retried like a GET: the server learns each row once, however the
        rows were cut into chunks before.

        The server learns a chunk whole or not at all, in order. A refused chunk raises the error
        of its kind (:class:`BadRequest` for a bad row) with ``row``, the index of the refused row
        in ``examples`` (``None`` when the server named none), and ``learned``, how many rows were
        learned before it: the earlier chunks. Learns without keys are never retried once sent (see
        :class:`Client`). A server without batch routes gets one request per row instead (logged
        once, at WARNING); then ``learned`` counts every row before the refused one.
        """
        _check_batch_size(batch_size)
        learned, sequence, offset = 0, None, 0
        with self._progress(progress, examples, f"learn {model_name}") as bar:
            for chunk in _chunks(examples, batch_size):
                rows = [_learn_row(example, offset + i) for i, example in enumerate(chunk)]
                answers = self._batch("learn", {"model": model_name}, rows, offset, learned, self._learn_each)
                last = answers if isinstance(answers, dict) else answers[-1]  # the batch's answer, or the last row's
                learned += len(rows)
                if isinstance(last, dict) and last.get("sequence") is not None:
                    sequence = last["sequence"]
                offset += len(rows)
                bar.update(len(rows))
        return {"model": model_name, "learned": learned, "sequence": sequence}

    def predict_many(self, model_name: str, features_iterable: Iterable[dict], *, batch_size: int = BATCH_SIZE,
                     identifiers: Iterable[str | None] | None = None) -> list:
        """Predict for many feature dicts, ``batch_size`` rows per request (``POST /predict/`` with
        ``{"model", "examples": [...]}``); returns the list of predictions (the values, as
        ``predict(...)["prediction"]``), in the order of ``features_iterable``.

        ``features_iterable`` is read a chunk at a time. ``identifiers``, when given, goes with
        it row by row (the same length; ``None`` for a row gives it none): the server stores
        those predictions under them for a later :meth:`label`. A refused chunk raises the error
        of its kind with ``row`` (the index of the refused row, or ``None``). Like :meth:`predict`,
        it is retried only when no connection could be made. A server without batch routes gets
        one request per row instead (logged once, at WARNING).
        """
        _check_batch_size(batch_size)
        predictions: list = []
        for chunk in _chunks(_with_identifiers(features_iterable, identifiers), batch_size):
            body = [{"features": x} if identifier is None else {"features": x, "identifier": identifier}
                    for x, identifier in chunk]
            answers = self._batch("predict", {"model": model_name}, body, len(predictions), 0, self._predict_each)
            if isinstance(answers, dict):  # one batch: {"model", "predictions": [{"prediction", "identifier"?}]}
                answers = answers.get("predictions")
                if not isinstance(answers, list) or len(answers) != len(body):
                    count = len(answers) if isinstance(answers, list) else "no"
                    raise RiverAPIError(f"The server answered {count} predictions for {len(body)} rows.")
            predictions.extend(answer.get("prediction") if isinstance(answer, dict) else None for answer in answers)
        return predictions

    def _batch(self, route: str, body: dict, rows: list[dict], offset: int, done: int,
               each: Callable[[dict, list[dict], int, int], list]) -> dict | list:
        """Send one chunk to ``/<route>/`` as a batch, or row by row (``each``) to a server
        without batch routes. Returns the batch's answer (a dict) or the answers row by row."""
        if route not in self.unbatched_routes:
            try:
                keyed = route == "learn" and all("idempotency_key" in row for row in rows)
                return self._post(f"/{route}/", {**body, "examples": rows}, keyed=keyed)
            except RiverAPIError as error:
                if offset or not _lacks_batches(error):
                    unsendable = _unsendable_row(rows) if error.status_code is None else None
                    raise _batch_error(error, offset, len(rows), done, route, unsendable) from error
                self.unbatched_routes.add(route)
                logger.warning("%s answered %s to a batch (%s): it has no batch %s route, sending one request "
                               "per row.", self.apiroot, error.status_code, _one_line(error.message), route)
        return each(body, rows, offset, done)

    def _learn_each(self, body: dict, rows: list[dict], offset: int, done: int) -> list:
        answers = []
        for index, row in enumerate(rows):
            try:
                answers.append(self.learn(body["model"], row.get("features"), row.get("ground_truth"),
                                          row.get("identifier"), row.get("idempotency_key")))
            except RiverAPIError as error:
                raise _batch_error(error, offset + index, 1, done + index, "learn") from error
        return answers

    def _predict_each(self, body: dict, rows: list[dict], offset: int, done: int) -> list:
        answers = []
        for index, row in enumerate(rows):
            try:
                answers.append(self.predict(body["model"], row["features"], row.get("identifier")))
            except RiverAPIError as error:
                raise _batch_error(error, offset + index, 1, 0, "predict") from error
        return answers

    @staticmethod
    def _progress(show: bool, rows: Any, description: str) -> Any:
        if not show:
            return _NoProgress()
        from tqdm import tqdm

        total = len(rows) if hasattr(rows, "__len__") else None
        return tqdm(total=total, desc=description, unit="row", dynamic_ncols=True)

    def label(self, label: Any, identifier: str, model_name: str, idempotency_key: str | None = None) -> dict:
        """Give the true label of the prediction ``identifier`` named; the model learns from it.

        A label is learned once anyway (a repeat finds the identifier consumed: NotFound); with
        an ``idempotency_key`` it is retried like :meth:`learn`, and a repeat answers the first
        label's ``sequence`` with ``"duplicate": true`` when that one was learned.
        """
        return self._post("/label/", {"model": model_name, "identifier": identifier, "label": label},
                          idempotency_key)

    def _post(self, path: str, body: dict, idempotency_key: str | None = None, keyed: bool = False) -> Any:
        """POST a learn or a label. With idempotency keys (the header's, or every example's: ``keyed``) it is
        retried like a GET, since the server learns what a key names once; without, it is never sent twice."""
        headers = {IDEMPOTENCY_HEADER: idempotency_key} if idempotency_key is not None else None
        retry = keyed or idempotency_key is not None
        for attempt in itertools.count(1):
            try:
                return self._json("POST", path, json=body, headers=headers)
            except ServerUnavailable:
                if not retry or attempt > self.retries:
                    raise
                if not self.quiet:
                    logger.info("Retrying POST %s (idempotency keys make it safe)", path)
                time.sleep(self.backoff_factor * 2 ** (attempt - 1))

    def metrics(self, model_name: str) -> dict:
        """The model's metrics: ``{metric name: value}``."""
        # ?model= for today's servers, the JSON body for servers that only read that (as 0.0.21 sent it).
        return self._json("GET", "/metrics/", params={"model": model_name}, json={"model": model_name})

    def stats(self, model_name: str) -> dict:
        """Call counts, durations (ns) and rates of learn, predict and label, over every server worker.

        Each operation has ``n_calls``, ``mean_duration``, ``ewm_duration`` and, from servers that keep
        them, ``p50_duration``, ``p95_duration``, ``p99_duration`` (from a latency histogram) and
        ``rate_per_second`` (over the last minute); each duration also as ``<key>_human`` ("1.50 ms").
        """
        return self._json("GET", "/stats/", params={"model": model_name}, json={"model": model_name})

    def models(self) -> dict:
        """``{"models": [names]}``."""
        return self._json("GET", "/models/")

    def get_model_json(self, model_name: str) -> dict:
        """The model's parameters, keyed by step class name."""
        return self._json("GET", f"/model/{_segment(model_name, 'The model name')}/")

    def download_model(self, model_name: str, dest: str | os.PathLike | None = None, *,
                       version: int | None = None) -> str | os.PathLike:
        """Save the pickled model to ``dest`` (default ``<model_name>.pkl``); returns ``dest``.

        With ``version``, the model as it was at that version (see :meth:`versions`), by default to
        ``<model_name>-v<version>.pkl``; :class:`NotFound` for a version the model does not have.
        The file appears whole or not at all.
        """
        params = None
        if version is not None:
            params = {"version": _version(version)}
        dest = dest or (f"{model_name}.pkl" if version is None else f"{model_name}-v{version}.pkl")
        target = Path(dest)
        response = self._request("GET", f"/model/download/{_segment(model_name, 'The model name')}/",
                                 params=params, stream=True)
        with response:
            handle, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
            try:
                with os.fdopen(handle, "wb") as out:
                    for chunk in response.iter_content(chunk_size=65536):
                        out.write(chunk)
                os.replace(partial, target)
            except BaseException as error:
                os.unlink(partial)
                if isinstance(error, requests.RequestException):
                    raise ServerUnavailable(f"The download of {model_name} broke off: {_reason(error)}") from error
                raise
        return dest

    def delete_model(self, model_name: str) -> dict:
        """Delete the model with its metrics, stats and pending identifiers."""
        return self._json("DELETE", "/model/", data={"model": model_name})

    # -- the lifecycle: versions, rollback, challengers (django-river-ml's docs/lifecycle.md) ---

    def versions(self, model_name: str) -> dict:
        """The model's versions, oldest first: ``{"model", "versions": [{"version", "sequence",
        "created", "kind", "metrics", "from_version"?, "challenger"?}, ...]}``.

        A version is the model as it was at a position of its learn log (``sequence``), with its
        metrics then; ``created`` is Unix time. ``kind`` says why it was written: ``upload``,
        ``snapshot`` (routine), ``manual`` (:meth:`take_version`), ``rollback`` (with ``from_version``),
        ``promote`` (with ``challenger``), ``before-promote`` (the champion a promotion replaced) or
        ``drift`` (after a drift policy acted). The server keeps the versions its retention settings
        say; older ones go.
        """
        return self._json("GET", f"/model/{_segment(model_name, 'The model name')}/versions/")

    def take_version(self, model_name: str) -> dict:
        """Keep the model as it is now (every acknowledged learn included) as a version; returns its
        record: ``{"model", "version", "sequence", "created", "kind": "manual", "metrics"}``."""
        return self._json("POST", f"/model/{_segment(model_name, 'The model name')}/versions/")

    def rollback(self, model_name: str, version: int) -> dict:
        """Go on from ``version``: the model serves and learns from the state it had then, metrics
        included. Nothing is deleted: the rollback is a new version (``kind: "rollback"``) that
        learns after it build on, and the model's challengers go on learning. Returns that version's
        record with ``from_version``; :class:`NotFound` for a version the model does not have (or no
        longer keeps).
        """
        return self._json("POST", f"/model/{_segment(model_name, 'The model name')}/rollback/",
                          json={"version": _version(version)})

    def challengers(self, model_name: str) -> dict:
        """The model's metrics beside its challengers', scored on the same examples:
        ``{"model", "sequence", "metrics", "challengers": [{"name", "metrics", "learned", "error"}, ...],
        "drift": {"detector", "policy", "detections", "last_at"}}``.

        ``learned`` counts the examples a challenger learned since it joined; ``error`` says why it
        stopped learning (it raised), else ``None``. ``drift`` is the model's drift detection:
        ``detections`` found since the upload, the last at log position ``last_at``.
        """
        return self._json("GET", f"/model/{_segment(model_name, 'The model name')}/challengers/")

    def add_challenger(self, champion: str, model: Any, flavor: str, name: str | None = None) -> str:
        """Upload ``model`` (an object or pickled ``bytes``) as a challenger of ``champion``; returns its
        name (generated by the server when ``name`` is not given).

        The challenger learns every example the champion learns from now on (learns and labels),
        after it, and is scored on them; it never serves predictions until :meth:`promote`. It is of
        the champion's flavor (else :class:`BadRequest`); a challenger of that name is replaced.
        ``upload_model(model, flavor, name, challenger_of=champion)`` does the same, and
        ``upload_spec(..., challenger_of=champion)`` for a JSON spec.
        """
        return self.upload_model(model, flavor, model_name=name, challenger_of=champion)

    def withdraw_challenger(self, champion: str, name: str) -> dict:
        """Stop challenger ``name`` of ``champion`` (it is forgotten); :class:`NotFound` for a model
        without that challenger. Returns ``{"message", "model"}``."""
        return self._json("DELETE", f"/model/{_segment(champion, 'The model name')}/challengers/"
                                    f"{_segment(name, 'The challenger name')}/")

    def promote(self, champion: str, challenger: str) -> dict:
        """Let ``challenger`` serve under ``champion``'s name with what it has learned (its metrics
        too); it leaves the challengers. The champion as it was stays a version (``kind:
        "before-promote"``) to :meth:`rollback` to. Returns the version written after the promotion
        (``kind: "promote"``, with ``challenger``); :class:`NotFound` for a model without that
        challenger."""
        return self._json("POST", f"/model/{_segment(champion, 'The model name')}/promote/",
                          json={"challenger": challenger})

    # -- streams ------------------------------------------------------------------------

    def stream(self, url: str, *, last_event_id: str | None = None, reconnect: bool = True,
               retry_delay: float = 3.0, max_reconnects: int | None = None,
               read_timeout: float | None = None, skip: Iterable[str] = ()) -> EventStream:
        """The server-sent events at ``url`` (relative to apiroot), as :class:`~riverapi.streams.Event`
        objects; reconnects with ``Last-Event-ID`` when dropped (see :class:`~riverapi.streams.EventStream`).
        ``read_timeout=None`` waits for the next event as long as it takes."""
        connect_timeout = self.timeout[0] if isinstance(self.timeout, tuple) else self.timeout

        def open_stream(headers: dict[str, str]) -> requests.Response:
            return self._request("GET", url, headers=headers, stream=True, timeout=(connect_timeout, read_timeout))

        return EventStream(open_stream, last_event_id=last_event_id, reconnect=reconnect, retry_delay=retry_delay,
                           max_reconnects=max_reconnects, skip=skip)

    def stream_events(self, model: str | list[str] | None = None, **options: Any) -> EventStream:
        """Events as they happen (``learn``, ``predict``, ``label``, ``upload``, ``delete``), JSON data parsed.

        ``model``: one name or a list of them; by default every model you may read. The server's
        own ``stream-open`` and ``keep-alive`` events are skipped; ``stream-reset`` (what you missed
        is no longer kept) and ``stream-error`` (the server ends the stream) come through.
        """
        return self.stream(_stream_url("/stream/events/", model), skip=HOUSEKEEPING_EVENTS, **options)

    def stream_metrics(self, model: str | list[str] | None = None, **options: Any) -> EventStream:
        """``metrics`` events (``{model, flavor, sequence, time, metrics, stats}``) after a model changes."""
        return self.stream(_stream_url("/stream/metrics/", model), skip=HOUSEKEEPING_EVENTS, **options)


def _upload_options(challenger_of: str | None, drift_detector: str | None, drift_policy: str | None
                    ) -> dict[str, str]:
    """An upload's query: the options that were given (a server without them ignores the query)."""
    options = {"challenger_of": challenger_of, "drift_detector": drift_detector, "drift_policy": drift_policy}
    if drift_detector == "":  # as DjangoClient takes it: no detector
        options["drift_detector"] = "none"
    return {key: value for key, value in options.items() if value is not None}


def _version(version: int) -> int:
    """A version number as the routes take it: a whole number (the server says which exist)."""
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"A version is a whole number, not {version!r}.")
    return version


def _chunks(rows: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """``rows`` in lists of ``size``, read as they are needed (a generator is never read whole)."""
    iterator = iter(rows)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _with_identifiers(features: Iterable[dict], identifiers: Iterable[str | None] | None
                      ) -> Iterator[tuple[dict, str | None]]:
    """``(features, identifier)`` pairs; the two iterables must be as long as each other."""
    if identifiers is None:
        yield from ((x, None) for x in features)
        return
    missing = object()
    for x, identifier in itertools.zip_longest(features, identifiers, fillvalue=missing):
        if x is missing or identifier is missing:
            raise ValueError("identifiers must have one entry (or None) for each row of features_iterable.")
        yield x, identifier


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, not {batch_size!r}.")


def _learn_row(example: Any, index: int) -> dict[str, Any]:
    """One row of a learn batch: a ``{"features", "ground_truth", "identifier"?, "idempotency_key"?}`` dict or a
    ``(features, ground_truth)`` pair."""
    if isinstance(example, dict):
        unknown = set(example) - {"features", "ground_truth", "identifier", "idempotency_key"}
        if unknown:
            raise ValueError(f"Example {index} has unknown keys {sorted(unknown)}: give features, ground_truth, "
                             "identifier and idempotency_key.")
        return {key: value for key, value in example.items()
                if key not in ("identifier", "idempotency_key") or value is not None}
    if isinstance(example, (tuple, list)) and len(example) == 2:
        return {"features": example[0], "ground_truth": example[1]}
    raise ValueError(f"Example {index} is neither a dict of features, ground_truth (and identifier) nor a "
                     f"(features, ground_truth) pair: {example!r:.100}.")


def _body_of(error: RiverAPIError) -> dict:
    """The JSON object an error answer carried, else ``{}``."""
    try:
        body = error.response.json() if error.response is not None else None
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _lacks_batches(error: RiverAPIError) -> bool:
    """Whether the refusal of a batch says the server has no batch route (a server older than
    them): 404/405 for the route (not for the model), or a 400 asking for ``features`` for the
    ``examples`` sent, naming no row."""
    if "row" in _body_of(error):
        return False
    if error.status_code in (404, 405):
        return not re.match(r"no model\b", error.message, re.IGNORECASE)
    return error.status_code == 400 and re.search(r"\bfeatures\b", error.message) is not None


def _unsendable_row(rows: list[dict]) -> int | None:
    """The first row that cannot be JSON (NaN, infinity, objects), if any."""
    for index, row in enumerate(rows):
        try:
            json.dumps(row, allow_nan=False)
        except (TypeError, ValueError):
            return index
    return None


def _batch_error(error: RiverAPIError, offset: int, size: int, done: int, what: str,
                 row: int | None = None) -> RiverAPIError:
    """The error of a refused chunk (rows ``offset`` to ``offset + size - 1`` of the input), telling
    which row of the whole input it was and how much was ``done`` (learned) before it.

    It is of the same type, and has ``row`` (the index in the input, ``None`` when the server named
    none), ``learned`` (rows learned by the call before it) and ``reason`` (the server's message).
    """
    if row is None:
        row = _body_of(error).get("row")
    if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row < size:
        row = 0 if size == 1 and isinstance(error, BadRequest) else None
    reason = error.message
    refused = isinstance(error, BadRequest) and size > 1
    if row is not None:
        reason = re.sub(rf"^(Row|Example) {row}: ", "", reason, flags=re.IGNORECASE)
        message = f"Row {offset + row}: {reason}"
    elif refused:
        message = f"Rows {offset} to {offset + size - 1}: {reason}"
    else:  # about the call, not the rows (an unknown model, credentials, the server)
        message = reason
    if error.status_code == 413:
        message += " (send fewer rows at once: a lower batch_size)"
    if what == "learn":
        if isinstance(error, ServerUnavailable) and error.status_code is None and (done or size > 1):
            # Sent, and no answer: the server may have learned the batch, or not.
            sent = f"rows {offset} to {offset + size - 1}" if size > 1 else f"row {offset}"
            message += f" ({done} rows learned before it; {sent} may or may not have been learned)"
        elif done or row is not None or refused:
            message += f" ({done} rows learned before it)"
    new = type(error)(message, status_code=error.status_code, response=error.response)
    new.row = None if row is None else offset + row
    new.learned = done
    new.reason = reason
    return new


def _stream_url(path: str, model: str | list[str] | None) -> str:
    """The stream route, narrowed to some models with ``?model=`` (repeated)."""
    if model is None:
        return path
    names = [model] if isinstance(model, str) else list(model)
    return f"{path}?{urlencode([('model', name) for name in names])}"
