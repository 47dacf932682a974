#!/usr/bin/env bash
# The whole story on the sample data (called by `make demo`, after `make setup clean-outputs`):
# the first model from practicedata/, the API, sourcedata/ as new data, one cycle (drift, a challenger
# judged on held-out rows, promoted or kept, report, API returns), another cycle (nothing new), the API stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
API_PID=logs/gunicorn.pid
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
config() { "$PY" -c "import settings; print(getattr(settings.load_config(), '$1'))"; }
API_URL=$(config api_url)

stop_api() {
    if [ -f "$API_PID" ]; then
        kill "$(cat "$API_PID")" 2>/dev/null || true
        for _ in $(seq 50); do [ -f "$API_PID" ] || break; sleep 0.1; done
        rm -f "$API_PID"
        echo "API stopped"
    fi
}
trap stop_api EXIT

step "1. The first model, from practicedata/ (ingest, train, score, deploy, report, diagnostics)"
"$PY" ingestion.py --input-folder practicedata
"$PY" training.py
"$PY" scoring.py
"$PY" deployment.py
"$PY" reporting.py
"$PY" diagnostics.py > "$(config output_model_path)/diagnostics.json"
echo "diagnostics: $(config output_model_path)/diagnostics.json"

step "2. The API, under gunicorn, at $API_URL"
mkdir -p logs
PORT=$("$PY" -c "from urllib.parse import urlsplit; print(urlsplit('$API_URL').port or 80)")
PORT=$PORT .venv/bin/gunicorn -c gunicorn.conf.py --daemon --pid "$API_PID" --error-logfile logs/gunicorn.log
if "$PY" - "$API_URL/health" <<'WAIT'
import sys, time, urllib.request, urllib.error
for _ in range(150):
    try:
        urllib.request.urlopen(sys.argv[1], timeout=1).read()
        sys.exit(0)
    except (urllib.error.URLError, OSError):
        time.sleep(0.1)
sys.exit(1)
WAIT
then
    echo "API answering at $API_URL (gunicorn pid $(cat "$API_PID"); its log: logs/gunicorn.log)"
else
    echo "the API did not answer at $API_URL: see logs/gunicorn.log (the cycle will call the app in-process)"
fi

step "3. New data: sourcedata/ (a later delivery; the relation between activity and leaving has shifted)"
ls -l sourcedata/

step "4. One monitoring cycle: new data found, drift checked (sequential test), a challenger trained and judged on held-out rows"
"$PY" fullprocess.py --verbose
echo "(the lines 'promotion:' and 'what to do:' above say what was decided, why, and what a person does next;"
echo " a kept challenger is served only by hand: $PY deployment.py --promote)"

step "5. Another cycle: nothing new, done in milliseconds"
"$PY" fullprocess.py --verbose

step "6. Deployed versions (* serving)"
"$PY" deployment.py --list

# --- online monitoring (monitoring.py): shifted traffic, and the system noticing ---
step "6b. Online monitoring: a burst of shifted traffic (clients unlike the training data); does the system notice?"
if [ -f "$API_PID" ]; then
    # Ordinary traffic first (the test data, as the README's three curl examples send it): /health stays ok.
    # Then 200 five-row predictions of covariate-shifted rows (activity x3): /health degraded. Each wait is
    # for the window to close: a window is judged once, when it has closed. The serving model was trained on
    # ~110 rows: enough to see this gross shift, far too few to see a moderate one (README, Online monitoring).
    # The ordinary traffic may show "watch" (never degraded): it is the same 40 test rows sent four times (with the
    # cycle's apicalls), which the test counts as 160 independent rows.
    "$PY" scripts/traffic_burst.py --ordinary --burst 200 || echo "(the traffic could not be sent: see logs/gunicorn.log)"
    "$PY" reporting.py | head -1
    echo "(the report's last section, \"Live traffic\", shows the crossing)"
else
    echo "(no API running: no live traffic to watch)"
fi
# --- end online monitoring ---

# --- status page (status.py; screenshots.py): the page's address and its screenshots ---
step "7. The status page at $API_URL/"
if [ -f "$API_PID" ]; then
    "$PY" screenshots.py --url "$API_URL/" --out "$(config output_model_path)" || echo "(no screenshots: see the line above)"
fi
# --- end status page ---

step "8. Stopping the API"
stop_api
trap - EXIT

step "Where to look"
cat <<TABLE
  ingesteddata/finaldata.csv, ingestedfiles.txt   the merged training data and its files
  ingesteddata/history.sqlite                      history: files, scores, deployments, cycles
  logs/cycles.jsonl                                one JSON line per monitoring cycle
  production_deployment/                           versions/, current -> the serving version
  apireturns.txt (path printed by step 4)          the API answers written by the cycle
  models/report.pdf, models/reports/               the PDF report of each deployed version (drift results inside)
  production_deployment/modelcard.md               the serving model's card, with the cycle's drift decision
  models/                                          the latest trained model and its score
  models/status-wide.png, status-narrow.png        the status page; live at $API_URL/ while the API runs (make serve)
TABLE
