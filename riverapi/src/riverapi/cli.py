"""The ``riverapi`` command: drive a River API server from the shell.

    riverapi info
    riverapi upload model.pkl --flavor regression --name prices
    riverapi learn prices data.csv --target price          # 1000 rows per request (--batch-size)
    riverapi predict prices --features '{"rooms": 3, "area": 70}'
    riverapi metrics prices
    riverapi upload other.pkl --flavor regression --challenger-of prices --name bigger
    riverapi challengers prices                             # its metrics beside its challengers'
    riverapi promote prices bigger                          # the challenger serves as prices
    riverapi versions prices
    riverapi rollback prices 3                              # go on from version 3

Answers are printed as JSON on stdout. Errors are one line on stderr; the exit status is 1 for an
error the server answered (or no answer), 2 for bad arguments or input files, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from typing import Any, NoReturn

from riverapi import defaults
from riverapi.client import BATCH_SIZE, Client
from riverapi.exceptions import BadRequest, RiverAPIError
from riverapi.records import FORMATS, TARGET_TYPES, InputError, Record, detect_format, read_records
from riverapi.version import __version__

__all__ = ["main", "build_parser"]

PROG = "riverapi"
# The command has no user or token options (a token in argv is visible to every process): it reads both
# from the environment only.
CREDENTIALS_HINT = (f"export {defaults.USER_ENV}=<user> {defaults.TOKEN_ENV}=<API token> "
                    "(the server's `manage.py river_token <user>` prints it)")
# A binary target read from CSV is text; the server cannot make a label of 'true'.
BOOLEAN_WORDS = {"true", "false", "yes", "no", "t", "f", "y", "n"}


class UsageError(Exception):
    """Bad arguments or input: exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _add_connection_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """The options every command takes, before or after the command's name."""
    default = (lambda value: value) if top else (lambda value: argparse.SUPPRESS)
    group = parser.add_argument_group("server")
    group.add_argument("--url", default=default(None),
                       help=f"the server's base URL (default: ${defaults.URL_ENV} or {defaults.baseurl})")
    group.add_argument("--prefix", default=default(defaults.prefix),
                       help=f"the API's URL prefix (default: {defaults.prefix})")
    group.add_argument("--timeout", type=float, default=default(defaults.timeout), metavar="SECONDS",
                       help="timeout of each call in seconds (default: 30)")
    group.add_argument("--retries", type=int, default=default(defaults.retries), metavar="N",
                       help="retries of GET/DELETE calls on connection errors and 502/503/504 (default: 3)")
    group.add_argument("-v", "--verbose", action="store_true", default=default(False),
                       help="log every call on stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Drive a River API server (django-river-ml) from the shell.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _add_connection_options(parser, top=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        _add_connection_options(sub, top=False)
        return sub

    command("info", "show the server's service info")
    command("models", "list the models")

    sub = command("upload", "upload a pickled model file (its bytes are sent as they are)")
    sub.add_argument("file", metavar="FILE", help="the pickled model (pickle or dill)")
    sub.add_argument("--flavor", required=True,
                     help="the model's flavor: regression, binary, multiclass, cluster, anomaly or custom")
    sub.add_argument("--name", help="the model's name (default: the server makes one up)")
    sub.add_argument("--challenger-of", metavar="MODEL",
                     help="upload it as a challenger of MODEL (of its flavor): it learns every example MODEL "
                          "learns and serves only once promoted; --name names the challenger")
    sub.add_argument("--drift-detector", metavar="NAME",
                     help="the river.drift detector fed with the model's errors: ADWIN, PageHinkley, KSWIN, or "
                          "for classifiers DDM, EDDM, FHDDM, HDDMA, HDDMW; none for none (default: the server's)")
    sub.add_argument("--drift-policy", metavar="POLICY",
                     help="what a drift does besides its event: none, reset (a fresh copy learns on) or promote "
                          "(the best challenger serves) (default: the server's)")

    sub = command("learn", "learn from every example in a CSV or JSON-lines file")
    sub.add_argument("model", metavar="MODEL")
    sub.add_argument("file", metavar="FILE", help="a .csv (with a header row) or .jsonl file")
    sub.add_argument("--target", metavar="COLUMN",
                     help="the column (or key) holding the ground truth; rows where it is empty are skipped. "
                          "Without it every column is a feature (cluster and anomaly models)")
    sub.add_argument("--target-type", choices=TARGET_TYPES, default="auto",
                     help="how to read the target (default: auto, numbers become floats)")
    _add_file_options(sub)
    sub.add_argument("--skip-errors", action="store_true",
                     help="go on past examples the server refuses (400) and count them")

    sub = command("predict", "predict for one example (--features) or every example in a file (--file)")
    sub.add_argument("model", metavar="MODEL")
    source = sub.add_mutually_exclusive_group(required=True)
    source.add_argument("--features", metavar="JSON", help='the features as a JSON object, e.g. \'{"x": 1.5}\'')
    source.add_argument("--file", help="a .csv or .jsonl file; one JSON answer per line is printed")
    _add_file_options(sub)

    sub = command("label", "give the true label of a past prediction")
    sub.add_argument("model", metavar="MODEL")
    sub.add_argument("identifier", metavar="IDENTIFIER", help="the identifier predict answered")
    sub.add_argument("label", metavar="LABEL", help="the label: JSON (3.5, true, \"cat\") or plain text")

    command("metrics", "show a model's metrics").add_argument("model", metavar="MODEL")
    command("stats", "show a model's call counts, durations and rates").add_argument("model", metavar="MODEL")
    command("show", "show a model's parameters as JSON").add_argument("model", metavar="MODEL")

    sub = command("download", "save a model as a pickle file")
    sub.add_argument("model", metavar="MODEL")
    sub.add_argument("-o", "--output", metavar="PATH",
                     help="where to save it (default: MODEL.pkl, or MODEL-vVERSION.pkl with --version)")
    sub.add_argument("--version", type=_positive_int, metavar="VERSION",
                     help="the model as it was at this version (see `riverapi versions MODEL`)")

    command("delete", "delete a model").add_argument("model", metavar="MODEL")

    command("versions", "list a model's versions, oldest first").add_argument("model", metavar="MODEL")
    command("version", "keep a model as it is now as a version").add_argument("model", metavar="MODEL")
    sub = command("rollback", "let a model go on from one of its versions (a new version; nothing is deleted)")
    sub.add_argument("model", metavar="MODEL")
    sub.add_argument("version", metavar="VERSION", type=_positive_int, help="the version to go on from")
    command("challengers", "show a model's metrics beside its challengers' metrics, and its drift detection"
            ).add_argument("model", metavar="MODEL")
    sub = command("promote", "let a challenger serve in its model's place (the model as it was stays a version)")
    sub.add_argument("model", metavar="MODEL")
    sub.add_argument("challenger", metavar="CHALLENGER")
    sub = command("withdraw", "stop a challenger of a model")
    sub.add_argument("model", metavar="MODEL")
    sub.add_argument("challenger", metavar="CHALLENGER")

    sub = command("stream", "print server-sent events as JSON lines until interrupted")
    sub.add_argument("kind", nargs="?", choices=("events", "metrics"), default="events")
    sub.add_argument("--model", action="append", metavar="MODEL",
                     help="follow this model (repeat for several; default: every model you may read)")
    sub.add_argument("--count", type=int, metavar="N", help="stop after N events")
    sub.add_argument("--last-event-id", metavar="ID", help="resume after this event")
    sub.add_argument("--max-reconnects", type=int, metavar="N",
                     help="give up after N failed reconnections in a row (default: never)")
    return parser


def _add_file_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=FORMATS, help="the file's format (default: from its extension)")
    parser.add_argument("--batch-size", type=_positive_int, default=BATCH_SIZE, metavar="N",
                        help=f"rows sent per request (default: {BATCH_SIZE}); a server without batch routes "
                             "gets one request per row")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False, default=str), flush=True)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _describe(error: RiverAPIError) -> str:
    if error.status_code is None:
        return _one_line(error.message)
    return f"{_one_line(error.message)} (HTTP {error.status_code} {type(error).__name__})"


def _progress(args: argparse.Namespace, total: int | None, description: str):
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (pipes, CI logs).
    return tqdm(total=total, desc=description, unit="row", file=sys.stderr,
                disable=True if args.no_progress else None, dynamic_ncols=True)


def _check_file(path: str, fmt: str, target: str | None = None, target_type: str = "auto") -> int:
    """Read the whole file once before sending anything: a bad line is reported before any
    example is learned. Returns the number of examples (the progress bar's total)."""
    return sum(1 for _ in read_records(path, fmt, target=target, target_type=target_type))


def _batches(records: Iterator[Record], size: int, keep=lambda record: True
             ) -> Iterator[tuple[list[Record], int]]:
    """The records to send, ``size`` at a time, each list with the number of records read for it
    (those ``keep`` left out too)."""
    batch: list[Record] = []
    read = 0
    for record in records:
        read += 1
        if keep(record):
            batch.append(record)
            if len(batch) == size:
                yield batch, read
                batch, read = [], 0
    if batch or read:
        yield batch, read


def _reason(error: RiverAPIError) -> str:
    """The server's reason for refusing a batch (without the row the command names as a line)."""
    reason = getattr(error, "reason", error.message)
    return reason + (" (try a lower --batch-size)" if error.status_code == 413 else "")


def _lines(records: list[Record]) -> str:
    first, last = records[0].line, records[-1].line
    return f"line {first}" if first == last else f"lines {first} to {last}"


class _LearnRun:
    """``riverapi learn``: the file's rows sent in batches, the counts for the summary."""

    def __init__(self, client: Client, args: argparse.Namespace, bar: Any):
        self.client, self.args, self.bar = client, args, bar
        self.learned = self.failed = 0

    def send(self, records: list[Record]) -> None:
        """Learn ``records`` (one batch). A refused row: the rows before it are learned, then it
        stops with the row's line, or (``--skip-errors``) counts it and goes on after it."""
        while records:
            try:
                self.client.learn_many(self.args.model, [(r.features, r.target) for r in records],
                                       batch_size=len(records))
            except BadRequest as error:
                done = getattr(error, "learned", 0)  # rows of this batch learned one by one
                self.learned += done
                row = getattr(error, "row", None)
                if row is None:
                    raise type(error)(f"{self.args.file}, {_lines(records[done:])}: {_reason(error)} "
                                      f"({self.learned} examples learned before them)",
                                      status_code=error.status_code, response=error.response) from error
                self.send(records[done:row])  # refused with the chunk, though the server took them
                record = records[row]
                where = f"{self.args.file}, line {record.line}"
                message = _reason(error) + _target_hint(self.args, record.target)
                if not self.args.skip_errors:
                    raise type(error)(f"{where}: {message} ({self.learned} examples learned before it, none after it)",
                                      status_code=error.status_code, response=error.response) from error
                self.failed += 1
                self.bar.write(f"{PROG}: {where}: {_one_line(message)}", file=sys.stderr)
                records = records[row + 1:]
            else:
                self.learned += len(records)
                return


def _learn(client: Client, args: argparse.Namespace) -> int:
    fmt = detect_format(args.file, args.format)
    total = _check_file(args.file, fmt, args.target, args.target_type)
    skipped = 0
    started = time.monotonic()
    with _progress(args, total, f"learn {args.model}") as bar:
        run = _LearnRun(client, args, bar)
        records = read_records(args.file, fmt, target=args.target, target_type=args.target_type)
        has_target = (lambda record: record.target is not None) if args.target is not None else (lambda record: True)
        for batch, read in _batches(records, args.batch_size, has_target):
            skipped += read - len(batch)
            run.send(batch)
            bar.update(read)
    seconds = time.monotonic() - started
    print(f"model: {args.model}")
    print(f"learned: {run.learned}")
    if args.target is not None:
        print(f"skipped: {skipped} (no {args.target})")
    print(f"failed: {run.failed}")
    print(f"seconds: {seconds:.2f}")
    if run.learned:
        print(f"metrics: {json.dumps(client.metrics(args.model))}", flush=True)
    return 1 if run.failed and not run.learned else 0


def _target_hint(args: argparse.Namespace, target: Any) -> str:
    """What to try when the server refused a target the file gave as a word such as 'true'."""
    if args.target_type == "auto" and isinstance(target, str) and target.strip().lower() in BOOLEAN_WORDS:
        return f" (the target {target!r} was sent as text: for a binary model pass --target-type bool)"
    return ""


def _predict(client: Client, args: argparse.Namespace) -> int:
    if args.features is not None:
        try:
            features = json.loads(args.features)
        except ValueError as error:
            raise UsageError(f"--features is not JSON: {error}") from None
        if not isinstance(features, dict):
            raise UsageError("--features must be a JSON object of feature names to values")
        _print_json(client.predict(args.model, features))
        return 0
    fmt = detect_format(args.file, args.format)
    total = _check_file(args.file, fmt)
    with _progress(args, total, f"predict {args.model}") as bar:
        for batch, _ in _batches(read_records(args.file, fmt), args.batch_size):
            _predict_batch(client, args, batch, bar)
    return 0


def _predict_batch(client: Client, args: argparse.Namespace, records: list[Record], bar: Any) -> None:
    """Print one answer per record, in order; a refused row: the rows before it are printed first."""
    try:
        predictions = client.predict_many(args.model, [r.features for r in records], batch_size=len(records))
    except BadRequest as error:
        row = getattr(error, "row", None)
        if row is None:
            where = _lines(records)
        else:
            _predict_batch(client, args, records[:row], bar)
            where = f"line {records[row].line}"
        raise type(error)(f"{args.file}, {where}: {_reason(error)}",
                          status_code=error.status_code, response=error.response) from error
    for prediction in predictions:
        print(json.dumps({"model": args.model, "prediction": prediction}, ensure_ascii=False, default=str))
    sys.stdout.flush()
    bar.update(len(records))


def _upload(client: Client, args: argparse.Namespace) -> int:
    try:
        with open(args.file, "rb") as handle:
            body = handle.read()
    except OSError as error:
        raise UsageError(f"cannot read {args.file}: {error.strerror or error}") from None
    print(client.upload_model(body, args.flavor, model_name=args.name, challenger_of=args.challenger_of,
                              drift_detector=args.drift_detector, drift_policy=args.drift_policy), flush=True)
    return 0


def _label(client: Client, args: argparse.Namespace) -> int:
    try:
        label = json.loads(args.label)
    except ValueError:
        label = args.label
    _print_json(client.label(label, args.identifier, args.model))
    return 0


def _stream(client: Client, args: argparse.Namespace) -> int:
    options = {"model": args.model, "last_event_id": args.last_event_id, "max_reconnects": args.max_reconnects}
    stream = client.stream_metrics(**options) if args.kind == "metrics" else client.stream_events(**options)
    with stream:
        for seen, event in enumerate(stream, start=1):
            print(json.dumps(event.to_dict(), ensure_ascii=False, default=str), flush=True)
            if args.count is not None and seen >= args.count:
                break
    return 0


def _run(client: Client, args: argparse.Namespace) -> int:
    command = args.command
    if command == "info":
        _print_json(client.info())
    elif command == "models":
        _print_json(client.models())
    elif command == "upload":
        return _upload(client, args)
    elif command == "learn":
        return _learn(client, args)
    elif command == "predict":
        return _predict(client, args)
    elif command == "label":
        return _label(client, args)
    elif command == "metrics":
        _print_json(client.metrics(args.model))
    elif command == "stats":
        _print_json(client.stats(args.model))
    elif command == "show":
        _print_json(client.get_model_json(args.model))
    elif command == "download":
        print(client.download_model(args.model, dest=args.output, version=args.version), flush=True)
    elif command == "delete":
        _print_json(client.delete_model(args.model))
    elif command == "versions":
        _print_json(client.versions(args.model))
    elif command == "version":
        _print_json(client.take_version(args.model))
    elif command == "rollback":
        _print_json(client.rollback(args.model, args.version))
    elif command == "challengers":
        _print_json(client.challengers(args.model))
    elif command == "promote":
        _print_json(client.promote(args.model, args.challenger))
    elif command == "withdraw":
        _print_json(client.withdraw_challenger(args.model, args.challenger))
    elif command == "stream":
        return _stream(client, args)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exited:  # --help and --version
            return exited.code if isinstance(exited.code, int) else 0
        if args.timeout is not None and args.timeout <= 0:
            raise UsageError("--timeout must be a positive number of seconds")
        if args.retries < 0:
            raise UsageError("--retries cannot be negative")
        if args.verbose:
            logging.basicConfig(level=logging.INFO, format=f"{PROG}: %(message)s", stream=sys.stderr)
        url = args.url or defaults.default_baseurl()
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"--url must start with http:// or https://, not {url!r}")
        with Client(url, quiet=not args.verbose, prefix=args.prefix, timeout=args.timeout,
                    retries=args.retries) as client:
            client.credentials_hint = CREDENTIALS_HINT
            return _run(client, args)
    except (UsageError, InputError, ValueError) as error:
        print(f"{PROG}: error: {_one_line(str(error))}", file=sys.stderr)
        return 2
    except RiverAPIError as error:
        print(f"{PROG}: error: {_describe(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (``riverapi stream | head``): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except OSError as error:
        print(f"{PROG}: error: {_one_line(str(error))}", file=sys.stderr)
        return 1
    except Exception as error:  # a bug: still one line, the traceback only with -v
        logging.getLogger("riverapi").info("Unexpected error", exc_info=True)
        print(f"{PROG}: error: unexpected {type(error).__name__}: {_one_line(str(error))} "
              "(-v shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
