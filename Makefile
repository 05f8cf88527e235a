# Two commands to know: `make demo` and `make test`. Everything installs into $(VENV).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
# One server worker process per core: each applies what it serves, and batches are applied once per host.
WORKERS ?= $(shell $(PYTHON) -c 'import os; print(os.cpu_count() or 2)')
PUBLISHED_CLIENT := $(VENV)/published-riverapi
# Replaying a model's log must give the same model in every process (see docs/architecture.md).
export PYTHONHASHSEED ?= 0
# glibc gives each thread that allocates a malloc arena of its own; a worker's threads (the event loop, the
# view thread, the stream publisher, the stats writer) then keep freed replicas' memory in several arenas.
# Two arenas kept a worker's memory flat over 1,000 models, where the default let it creep up (docs/architecture.md).
export MALLOC_ARENA_MAX ?= 2
# The example site's SECRET_KEY (it signs the API's JWTs) is $DJANGO_SECRET_KEY, else a random key
# made on first run in its data directory (example_project/river_ml_data/secret_key, mode 0600) and
# reused by every worker and restart. Never a key from the repository: `migrate` refuses one (E003).

.PHONY: demo serve test bench install clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml riverapi/pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet -e ".[test,demo]"
	$(PY) -m pip install --quiet -e "./riverapi[dill]"
	$(PY) -m pip install --quiet --no-deps --target $(PUBLISHED_CLIENT) riverapi==0.0.21
	touch $@

install: $(VENV)/.installed

# The server as `make serve` runs it (without its access log), and the feeder (manage.py demo, through the
# riverapi client; DEMO_ARGS="--limit 100 --rate 50" are its options). The server runs in a session of its
# own, so Ctrl-C reaches only the feeder, which prints the final metrics; when the feeder ends, on Ctrl-C
# too, the trap stops the server. The routes that change models need the demo user's token (printed).
demo: install
	cd example_project && ../$(PY) manage.py migrate --verbosity 0
	@$(PY) -c "import socket, sys; sys.exit(socket.socket().connect_ex(('127.0.0.1', $(PORT))) == 0 and \
		'Something already listens on 127.0.0.1:$(PORT): stop it, or choose another port: make demo PORT=8001')"
	@cd example_project || exit 1; \
	export DJANGO_RIVER_ML_AUTHENTICATED_VIEWS="$${DJANGO_RIVER_ML_AUTHENTICATED_VIEWS-$$(../$(PY) -c \
		'from example_project.management.commands.demo import DEMO_PROTECTED_ROUTES as r; print(",".join(r))')}"; \
	../$(PY) -c 'import os, sys; os.setsid(); os.execv(sys.argv[1], sys.argv[1:])' \
		../$(VENV)/bin/gunicorn example_project.asgi:application -k django_river_ml.worker.UvicornWorker \
		--forwarded-allow-ips= --workers $(WORKERS) --bind 127.0.0.1:$(PORT) --graceful-timeout 5 \
		--log-level warning & server=$$!; \
	trap 'echo "Stopping the server ..."; kill $$server 2>/dev/null; wait $$server' EXIT; trap 'exit 130' INT TERM; \
	../$(PY) manage.py demo --port $(PORT) --server-pid $$server $(DEMO_ARGS)

# ASGI: gunicorn with uvicorn workers, so the event streams (/api/stream/...) hold connections, not workers.
# --forwarded-allow-ips= : else uvicorn takes the client's address from X-Forwarded-For when the peer is
# 127.0.0.1; the app reads that header itself, only as far as NUM_PROXIES says (docs/authentication.md).
serve: install
	cd example_project && ../$(PY) manage.py migrate --verbosity 0 && \
		../$(VENV)/bin/gunicorn example_project.asgi:application -k django_river_ml.worker.UvicornWorker \
		--forwarded-allow-ips= --workers $(WORKERS) --bind 127.0.0.1:$(PORT) --access-logfile -

# One pytest worker per core (pytest-xdist); PYTEST_WORKERS=0 runs in this process.
PYTEST_WORKERS ?= auto

test: install
	$(PY) -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

# Benchmarks (bench/): ratios against floors measured in the same run, servers started as `make serve`
# (WORKERS); they assert nothing. Writes bench-results/results.json and .md. BENCH_QUICK=1: a short run.
bench: install
	BENCH_WORKERS=$${BENCH_WORKERS:-$(WORKERS)} $(PY) -m bench

clean:
	rm -rf $(VENV) example_project/river_ml_data example_project/db.sqlite3
