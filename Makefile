# Two commands to know: `make demo` and `make test`. Everything installs into $(VENV).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
WORKERS ?= 4
PUBLISHED_CLIENT := $(VENV)/published-riverapi
# Replaying a model's log must give the same model in every process (see docs/architecture.md).
export PYTHONHASHSEED ?= 0
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

demo: install
	cd example_project && ../$(PY) manage.py migrate --verbosity 0 && ../$(PY) manage.py demo --port $(PORT)

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

# Benchmarks print ratios against a baseline measured in the same run; they assert nothing.
bench: install
	@for script in bench/*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) example_project/river_ml_data example_project/db.sqlite3
