#!/usr/bin/env bash
# The whole story on the sample data (called by `make demo`, after `make setup`): the first model from
# practicedata/, the API, sourcedata/ as new data, one cycle (drift, a challenger judged on held-out rows,
# promoted or kept, report, API returns), another cycle (nothing new), the API stopped.
#
# It runs in a world of its own: demo/ (ignored by git), with its own config.json, copies of practicedata/,
# sourcedata/ and testdata/, every output inside it and its own API port (8001). The checkout's own folders
# (ingesteddata/, models/, production_deployment/, ...) are never read or written. A previous demo's demo/
# (marked by demo/.made-by-demo) is replaced; any other demo/ is refused, in one line, exit 2.
#
#   scripts/demo.sh           the world, then the story
#   scripts/demo.sh --world   only the world: demo/ made afresh, nothing run
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO=demo
MARK="$DEMO/.made-by-demo"

make_world() {
    if [ -e "$DEMO" ] || [ -L "$DEMO" ]; then
        if [ ! -f "$MARK" ] || [ -L "$DEMO" ]; then
            echo "error: $PWD/$DEMO exists and is not a previous demo's (no $MARK): the demo runs in a folder of its own; move that one away first" >&2
            exit 2
        fi
        rm -rf "$DEMO"
    fi
    mkdir "$DEMO"
    : > "$MARK"
    cp -R practicedata sourcedata testdata "$DEMO"/
    # Paths are anchored to this file: every output lands in demo/. The copies are complete files,
    # so no settling wait (ingest_settle_seconds) is needed before ingesting them.
    cat > "$DEMO/config.json" <<'JSON'
{
  "input_folder_path": "sourcedata",
  "output_folder_path": "ingesteddata",
  "test_data_path": "testdata",
  "output_model_path": "models",
  "prod_deployment_path": "production_deployment",
  "quarantine_folder_path": "quarantine",
  "log_folder_path": "logs",
  "ingest_settle_seconds": 0,
  "model": {"C": 1.0, "max_iter": 1000, "random_state": 0},
  "drift_test": "sequential",
  "promotion_gate": true,
  "api_url": "http://127.0.0.1:8001"
}
JSON
    echo "the demo's world: $PWD/$DEMO (its config: $DEMO/config.json; every output lands inside it)"
}

make_world
if [ "${1:-}" = "--world" ]; then
    exit 0
fi

PY=.venv/bin/python
CONFIG="$PWD/$DEMO/config.json"
API_PID="$PWD/$DEMO/logs/gunicorn.pid"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
config() { "$PY" -c "import settings; print(getattr(settings.load_config('$CONFIG'), '$1'))"; }
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
"$PY" ingestion.py --config "$CONFIG" --input-folder "$DEMO/practicedata"
"$PY" training.py --config "$CONFIG"
"$PY" scoring.py --config "$CONFIG"
"$PY" deployment.py --config "$CONFIG"
"$PY" reporting.py --config "$CONFIG"
"$PY" diagnostics.py --config "$CONFIG" > "$(config output_model_path)/diagnostics.json"
echo "diagnostics: $(config output_model_path)/diagnostics.json"

step "2. The API, under gunicorn, at $API_URL"
mkdir -p "$DEMO/logs"
PORT=$("$PY" -c "from urllib.parse import urlsplit; print(urlsplit('$API_URL').port or 80)")
DRAS_CONFIG="$CONFIG" PORT=$PORT .venv/bin/gunicorn -c gunicorn.conf.py --daemon --pid "$API_PID" \
    --error-logfile "$PWD/$DEMO/logs/gunicorn.log"
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
    echo "API answering at $API_URL (gunicorn pid $(cat "$API_PID"); its log: $DEMO/logs/gunicorn.log)"
else
    echo "the API did not answer at $API_URL: see $DEMO/logs/gunicorn.log (the cycle will call the app in-process)"
fi

step "3. New data: sourcedata/ (a later delivery; the relation between activity and leaving has shifted)"
ls -l "$DEMO/sourcedata/"

step "4. One monitoring cycle: new data found, drift checked (sequential test), a challenger trained and judged on held-out rows"
"$PY" fullprocess.py --config "$CONFIG" --verbose
echo "(the lines 'promotion:' and 'what to do:' above say what was decided, why, and what a person does next;"
echo " a kept challenger is served only by hand: $PY deployment.py --config $DEMO/config.json --promote)"

step "5. Another cycle: nothing new, done in milliseconds"
"$PY" fullprocess.py --config "$CONFIG" --verbose

step "6. Deployed versions (* serving)"
"$PY" deployment.py --config "$CONFIG" --list

# --- online monitoring (monitoring.py): shifted traffic, and the system noticing ---
step "6b. Online monitoring: a burst of shifted traffic (clients unlike the training data); does the system notice?"
if [ -f "$API_PID" ]; then
    # Ordinary traffic first (the test data, as the README's three curl examples send it): /health stays ok.
    # Then 200 five-row predictions of covariate-shifted rows (activity x3): /health degraded. Each wait is
    # for the window to close: a window is judged once, when it has closed. The serving model was trained on
    # ~110 rows: enough to see this gross shift, far too few to see a moderate one (README, Online monitoring).
    # The ordinary traffic may show "watch" (never degraded): it is the same 40 test rows sent four times (with the
    # cycle's apicalls), which the test counts as 160 independent rows.
    "$PY" scripts/traffic_burst.py --config "$CONFIG" --ordinary --burst 200 \
        || echo "(the traffic could not be sent: see $DEMO/logs/gunicorn.log)"
    "$PY" reporting.py --config "$CONFIG" | head -1
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

step "Where to look (all in $DEMO/, the demo's own world; the checkout's folders are untouched)"
cat <<TABLE
  $DEMO/ingesteddata/finaldata.csv, ingestedfiles.txt   the merged training data and its files
  $DEMO/ingesteddata/history.sqlite                      history: files, scores, deployments, cycles
  $DEMO/logs/cycles.jsonl                                one JSON line per monitoring cycle
  $DEMO/production_deployment/                           versions/, current -> the serving version
  $DEMO/models/apireturns.txt                            the API answers written by the cycle
  $DEMO/models/report.pdf, reports/                      the PDF report of each deployed version (drift results inside)
  $DEMO/production_deployment/modelcard.md               the serving model's card, with the cycle's drift decision
  $DEMO/models/                                          the latest trained model and its score
  $DEMO/models/status-wide.png, status-narrow.png        the status page (make serve shows the real system's)
TABLE
