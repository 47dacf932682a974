# make demo: set-up, then the whole story on the sample data, in demo/ (its own world and config).
# make test: set-up, then the tests.
# make serve: the API under gunicorn on 127.0.0.1:$(PORT), one worker per core.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 8000

.PHONY: setup demo test bench clean-outputs serve cron-install cron-uninstall

setup: $(STAMP)
	@# pdftotext, pdftoppm and pdfimages: the report tests read the PDF back as a person would.
	@command -v pdftotext >/dev/null || (apt-get update && apt-get install -y --no-install-recommends poppler-utils)
	@# chromium, headless: the status page's tests look at it in a real browser; make demo screenshots it.
	@command -v chromium >/dev/null || (apt-get update && apt-get install -y --no-install-recommends chromium)
	@# mount and chattr: the hardening tests fill a real tmpfs and make folders immutable (tests/test_hardening_disk.py).
	@command -v mount >/dev/null || (apt-get update && apt-get install -y --no-install-recommends mount)
	@command -v chattr >/dev/null || (apt-get update && apt-get install -y --no-install-recommends e2fsprogs)
	@# cron: the schedule tests start a real cron daemon (tests/test_cron.py).
	@command -v cron >/dev/null || (apt-get update && apt-get install -y --no-install-recommends cron)
	@# prometheus and promtool: the alerting rules are checked and a real Prometheus scrapes the API (tests/test_prometheus.py).
	@command -v prometheus >/dev/null || (apt-get update && apt-get install -y --no-install-recommends prometheus)
	@# postgresql: the history tests run on a real PostgreSQL too, started by the tests in a temporary folder (tests/pgserver.py).
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || (apt-get update && apt-get install -y --no-install-recommends postgresql)
	@# nginx and ip (iproute2): deploy/nginx.conf runs on a real nginx in front of two gunicorns (tests/test_nginx.py) and of API hosts in network namespaces (tests/test_netns.py).
	@test -x /usr/sbin/nginx || (apt-get update && apt-get install -y --no-install-recommends nginx)
	@command -v ip >/dev/null || test -x /usr/sbin/ip || (apt-get update && apt-get install -y --no-install-recommends iproute2)

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	touch $(STAMP)

# Deletes the real system's outputs (ingested data, history, models, deployed versions, logs): only by hand.
clean-outputs:
	rm -rf ingesteddata models quarantine logs
	find production_deployment -mindepth 1 ! -name .gitkeep -exec rm -rf {} +

# The demo runs in demo/, a world of its own (scripts/demo.sh): the folders above are never touched.
demo: setup
	scripts/demo.sh

# One pytest worker per core (pytest-xdist), each file whole on one worker: its module's fixtures are
# built once, and tests of one file never race each other. JOBS=0 runs them all in this process.
JOBS ?= auto
test: setup
	$(PY) -m pytest -q -n $(JOBS) --dist loadfile

bench: setup
	for f in bench/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

# cronjob.txt with its placeholders filled (absolute paths, logging to logs/cron.log), in or out of
# your crontab; install checks that a cron daemon is running (scripts/cron.sh).
cron-install:
	@scripts/cron.sh install $(CURDIR) $(CURDIR)/$(PY)

cron-uninstall:
	@scripts/cron.sh uninstall $(CURDIR) $(CURDIR)/$(PY)

serve: setup
	PORT=$(PORT) $(VENV)/bin/gunicorn -c gunicorn.conf.py
