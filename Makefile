# make demo: set-up, then the whole story on the sample data.
# make test: set-up, then the tests.
# make serve: the API under gunicorn on 127.0.0.1:$(PORT), one worker per core.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 8000

.PHONY: setup demo test bench clean-outputs serve

setup: $(STAMP)
	@# pdftotext, pdftoppm and pdfimages: the report tests read the PDF back as a person would.
	@command -v pdftotext >/dev/null || (apt-get update && apt-get install -y poppler-utils)
	@# chromium, headless: the status page's tests look at it in a real browser; make demo screenshots it.
	@command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	touch $(STAMP)

clean-outputs:
	rm -rf ingesteddata models quarantine logs
	find production_deployment -mindepth 1 ! -name .gitkeep -exec rm -rf {} +

demo: setup clean-outputs
	$(PY) ingestion.py --input-folder practicedata
	$(PY) training.py
	$(PY) scoring.py
	$(PY) deployment.py
	$(PY) deployment.py --list
	$(PY) reporting.py
	$(PY) diagnostics.py

test: setup
	$(PY) -m pytest -q

bench: setup
	for f in bench/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

serve: setup
	PORT=$(PORT) $(VENV)/bin/gunicorn -c gunicorn.conf.py
